"""Where does fine-grained INT beat FP? QSNR theory, crossovers, and Monte-Carlo checks with the real quantizers.

    python -m experiments.crossover                         # the paper's four pairs, about 20 s on an idle 2-core CPU
    python -m experiments.crossover --pairs mxint8/mxfp8_e5m2,mxint6/mxfp6_e3m2 --kappa-max 20
    python -m experiments.crossover --block-size 64 --distributions gaussian,laplace --seed 3
    python -m experiments.crossover --pairs mxint4/mxfp4 --scale e4m3 --block-size 32   # MX blocks, E4M3 scales
    python -m experiments.crossover --preset tiny           # seconds; what the test suite runs

For each INT/FP pair it computes the theoretical crossover crest factor kappa* (analysis.theory, variants "paper"
and "reference": the paper's Eq. 13/40/43 as printed, and the authors' script model) by root finding, and
measures QSNR against block crest factor on synthetic tensors (uniform, Gaussian, Laplace, Student-t, Gaussian
with outliers; every block's scale dithered by 2^U so the UE8M0 rounding factor is spread as the theory
assumes), binned by crest factor; the empirical kappa* is where the binned INT-minus-FP QSNR first turns
negative. A block's own crest factor never exceeds sqrt(block size), so a pair whose kappa* is out of reach at
its own block size is measured on larger blocks (reported; UE8M0 theory does not depend on the block size). It
also measures the Gaussian QSNR of every format, the Gaussian mean block crest factor (blocks 32 and 16) and the
paper's Algorithm 1 probe (x / (x / 127) landing on 128).

For each per-block adaptive format (--adaptive: IF4 and IF6 of arXiv 2603.28765, MXIF4/6/8, NVFP4 Four Over Six of
arXiv 2512.02010) it draws the theory of a block that takes the candidate with the higher theoretical QSNR: the
upper envelope of the candidates' curves, and the threshold kappa* below which candidate 1 (the INT grid; the
amax -> 4 mapping for Four Over Six) wins. The envelope goes into the panel of a pair whose two curves are the
candidates' (IF4 over NVINT4/NVFP4: the stretched INT4 grid has NVINT4's step and scale; MXIF4/6/8 over their MX
pairs), else into a panel of its own (IF6; Four Over Six, beside NVFP4's Eq. 43 curve). Theory only: the
selector, which compares each block's real errors, does at least as well as the envelope.

Output (--out, default results/crossover/):
  crossover.json  stable keys:
    theory               {variant: {pair: {"kappa": float, "qsnr_db": float}}}  variant in "paper", "reference"
    empirical            {pair: {"kappa": float | null, "block_size": int}}  (null: no crossing in reach)
    gaussian_qsnr_db     {format_name: float}   canonical names as in lowbit_jax.list_formats()
    gaussian_block_crest {"32": float, "16": float}
    bf16_probe           {"bfloat16": float, "float16": float, "float32": float}   fractions, not percent
    adaptive             {variant: {format_name: {"kappa": float, "qsnr_db": float, "below": str, "above": str}}}
                         theory threshold; candidate "below" wins for kappa < kappa*, "above" beyond
                         (kappa null: the candidates' curves do not meet in 1..kappa_max)
    config, machine
  curves.csv      pair, variant, kappa, int_db, fp_db, adaptive_db, choice   (theory, kappa grid)
                  pair rows: adaptive_db and choice empty. Adaptive rows: pair is the format name upper-cased
                  (e.g. "IF4"), int_db / fp_db are candidates 1 / 0 (for NVFP4_4OVER6: amax -> 4 / amax -> 6),
                  adaptive_db their upper envelope, choice the predicted candidate index.
  montecarlo.csv  pair, block_size, kappa, blocks, int_db, fp_db (binned measurement)
  crossover.png   one panel per pair: theory lines (a curve running off the axes ends in an arrow head, its legend
                  entry says where), measured points, kappa* lines with their values in the legend, the crest
                  factors above sqrt(block size) that no block can have shaded; adaptive envelopes as wide green
                  bands, in their pair's panel or one of their own
Pair names are upper-case "INT/FP" as given, e.g. "MXINT8/MXFP8". Pairs and --formats take format specs
(docs/formats.md; comma lists split outside parentheses), e.g. --pairs "int(6):block_size=16/fp(3,2):block_size=16".
"""

from __future__ import annotations

import dataclasses
import math
import time

import jax
import jax.numpy as jnp
import numpy as np

import lowbit_jax as lb
from analysis import montecarlo, plotting, synthetic, theory
from analysis.crest import crest_factor
from analysis.grad_bias import overflow_probe
from analysis.qsnr import qsnr_db
from experiments import common
from experiments.common import PAPER_PAIRS, parse_pair

PAPER_FORMATS = ("mxint8", "mxfp8", "mxint6", "mxfp6", "mxint4", "mxfp4", "nvint4", "nvfp4")
PAPER_FIG3 = {"MXINT8/MXFP8": 7.55, "MXINT6/MXFP6": 1.96, "MXINT4/MXFP4": 2.04, "NVINT4/NVFP4": 2.39}  # printed
VARIANTS = ("paper", "reference")
ADAPTIVE = ("if4", "if6", "mxif4", "mxif6", "mxif8", "nvfp4_4over6")


@dataclasses.dataclass(frozen=True)
class Config:
    pairs: tuple[str, ...] = PAPER_PAIRS  # INT/FP format pairs, e.g. mxint8/mxfp8 (any case, format specs)
    formats: tuple[str, ...] = PAPER_FORMATS  # formats whose Gaussian QSNR is measured
    adaptive: tuple[str, ...] = ADAPTIVE  # two-candidate adaptive formats whose theory is drawn ('' for none)
    block_size: int = 0  # block size of every pair's formats, any size >= 1 (0 = each format's own)
    scale: str = ""  # block scale type of every pair: ue8m0, e4m3 or fp32 ('' = each format's own)
    mc_block_size: int = 0  # measurement block (0 = the pair's, doubled until sqrt(g) >= 1.5 kappa*, UE8M0 only)
    distributions: tuple[str, ...] = synthetic.DISTRIBUTIONS  # synthetic data of the measurement
    mc_rows: int = 512  # rows of 4096 per distribution and pair (more for blocks above 64)
    gaussian_shape: tuple[int, ...] = (2048, 4096)  # shape of the Gaussian QSNR tensor
    probe_shape: tuple[int, ...] = (4096, 4096)  # shape of the Algorithm 1 probe tensor
    kappa_max: float = 12.0  # largest crest factor of the theory curves
    bin_width: float = 0.1  # crest-factor bin of the measurement
    min_blocks: int = 200  # bins with fewer blocks are not used for the empirical crossover
    seed: int = 0  # random seed of the synthetic data

    def __post_init__(self):
        object.__setattr__(self, "scale", self.scale.strip().lower())
        for flag, size, zero in (
            ("--block-size", self.block_size, "each format's own"),
            ("--mc-block-size", self.mc_block_size, "the pair's, enlarged for kappa*"),
        ):
            if size < 0:
                raise ValueError(f"{flag} {size}: give a block size >= 1 (or 0 = {zero})")
        for p in self.pairs:
            parse_pair(p, self.block_size, self.scale)
        for f in self.formats:
            lb.get_format(f)
        for a in self.adaptive:
            fmt = lb.get_format(a)
            if not fmt.is_adaptive or len(fmt.candidates) != 2:
                raise ValueError(f"--adaptive takes adaptive formats of two candidates (e.g. if4), got {a!r}")
        for d in self.distributions:
            if d not in synthetic.DISTRIBUTIONS:
                raise ValueError(f"unknown distribution {d!r}; choose from {list(synthetic.DISTRIBUTIONS)}")
        if self.mc_rows <= 0 or self.min_blocks < 1:
            raise ValueError("--mc-rows and --min-blocks must be positive")
        if not 1.0 < self.kappa_max <= 100 or not 0 < self.bin_width < 1:
            raise ValueError("--kappa-max must be in (1, 100] and --bin-width in (0, 1)")
        if len(self.gaussian_shape) != 2 or len(self.probe_shape) != 2:
            raise ValueError("--gaussian-shape and --probe-shape take two sizes, e.g. 2048,4096")


PRESETS = {
    "tiny": Config(mc_rows=16, gaussian_shape=(64, 1024), probe_shape=(256, 256), min_blocks=20, bin_width=0.25),
}


def mc_block_size(int_fmt: lb.Format, kappa_star: float, requested: int) -> int:
    """Block size for the measurement: the requested one, or the format's, enlarged so kappa* is within reach."""
    if requested:
        return requested
    g = int_fmt.block_size if isinstance(int_fmt.block_size, int) else 4096
    if int_fmt.scale != "ue8m0" or not math.isfinite(kappa_star):
        return g
    while math.sqrt(g) < 1.5 * kappa_star and g < 4096:
        g *= 2
    return g


def theory_for_pair(int_fmt, fp_fmt, kappa: np.ndarray, kappa_max: float) -> tuple[dict, dict]:
    """({variant: {"kappa", "qsnr_db"}}, {variant: (int curve, fp curve)})."""
    points, curves = {}, {}
    for v in VARIANTS:
        try:
            c = theory.crossover(int_fmt, fp_fmt, variant=v, kappa_range=(1.0, kappa_max))
            points[v] = {"kappa": c.kappa, "qsnr_db": c.qsnr_db}
        except ValueError:
            points[v] = {"kappa": float("nan"), "qsnr_db": float("nan")}
        curves[v] = (theory.qsnr_curve(int_fmt, kappa, v), theory.qsnr_curve(fp_fmt, kappa, v))
    return points, curves


def theory_for_adaptive(name: str, kappa: np.ndarray, kappa_max: float) -> dict:
    """Theory of one adaptive format: per variant its threshold, candidate curves, envelope and predicted choice."""
    fmt = lb.get_format(name)
    labels = theory.candidate_labels(fmt)
    points, curves, envelope, choice = {}, {}, {}, {}
    for v in VARIANTS:
        try:
            c = theory.adaptive_threshold(fmt, v, kappa_range=(1.0, kappa_max))
            below, above = (labels[1], labels[0]) if c.int_wins_below else (labels[0], labels[1])
            points[v] = {"kappa": c.kappa, "qsnr_db": c.qsnr_db, "below": below, "above": above}
        except ValueError:
            points[v] = {"kappa": float("nan"), "qsnr_db": float("nan"), "below": None, "above": None}
        cand = theory.candidate_curves(fmt, kappa, v)
        curves[v] = (cand[labels[1]], cand[labels[0]])
        envelope[v] = theory.adaptive_qsnr_curve(fmt, kappa, v)
        choice[v] = theory.predict_choice(fmt, kappa, v)
    return {"fmt": fmt, "labels": labels, "theory": points, "curves": curves, "envelope": envelope, "choice": choice}


def host_pair(adaptive: dict, results: list[dict]) -> dict | None:
    """The first pair whose (INT, FP) theory curves equal the adaptive format's candidates 1 and 0 in every variant."""
    for r in results:
        if all(
            np.array_equal(a, b, equal_nan=True)
            for v in VARIANTS
            for a, b in zip(adaptive["curves"][v], r["curves"][v], strict=True)
        ):
            return r
    return None


def mc_tensor(cfg: Config, key: jax.Array, block: int) -> jax.Array:
    """Synthetic rows from every distribution, block scales dithered; more rows for blocks above 64, whose
    high-crest bins are sparse. Rows hold whole blocks: 4096 elements rounded up to a multiple of the block."""
    width, rows = block * math.ceil(4096 / block), cfg.mc_rows * max(1, block // 64)
    keys = jax.random.split(key, len(cfg.distributions) + 1)
    x = jnp.concatenate([synthetic.sample(d, k, (rows, width)) for d, k in zip(cfg.distributions, keys)], 0)
    return synthetic.dither_block_scale(x, block, keys[-1])


def run_pair(cfg: Config, text: str, key: jax.Array, kappa: np.ndarray) -> dict:
    """Theory and measurement for one pair."""
    name, int_fmt, fp_fmt = parse_pair(text, cfg.block_size, cfg.scale)
    points, curves = theory_for_pair(int_fmt, fp_fmt, kappa, cfg.kappa_max)
    block = mc_block_size(int_fmt, points["reference"]["kappa"], cfg.mc_block_size)
    fmts = {"int": int_fmt.replace(block_size=block), "fp": fp_fmt.replace(block_size=block)}
    edges = np.arange(1.0, min(cfg.kappa_max, math.sqrt(block)) + cfg.bin_width, cfg.bin_width)
    binned = montecarlo.binned_qsnr(mc_tensor(cfg, key, block), fmts, edges)
    used = binned.counts >= cfg.min_blocks
    empirical = montecarlo.empirical_crossover(binned, "int", "fp", cfg.min_blocks)
    return {
        "name": name,
        "int": int_fmt,
        "fp": fp_fmt,
        "theory": points,
        "curves": curves,
        "block": block,
        "binned": binned,
        "used": used,
        "empirical": empirical,
    }


def gaussian_measurements(cfg: Config, key: jax.Array) -> tuple[dict, dict]:
    """QSNR of each format and the mean block crest factor (32, 16) on N(0, 1) of cfg.gaussian_shape."""
    x = jax.random.normal(key, cfg.gaussian_shape, jnp.float32)
    qsnr = {}
    for name in cfg.formats:
        fmt = lb.get_format(name)
        qsnr[fmt.label] = float(qsnr_db(x, jax.jit(lambda v, f=fmt: lb.fake_quant(v, f))(x)))
    crest = {str(b): float(crest_factor(x, b).mean) for b in (32, 16)}
    return qsnr, crest


def _envelope(a: dict) -> plotting.Envelope:
    return plotting.Envelope(label=a["fmt"].label.upper(), curves_db={"reference": a["envelope"]["reference"]})


def _panel(r: dict, kappa: np.ndarray, hosted: list[dict]) -> plotting.PairPanel:
    b, used = r["binned"], r["used"]
    stars = {v: r["theory"][v]["kappa"] for v in VARIANTS} | {"empirical": r["empirical"]}
    extra = f" = {', '.join(a['fmt'].label.upper() for a in hosted)} candidates" if hosted else ""
    return plotting.PairPanel(
        title=f"{r['name']}{extra}  (measured at block {r['block']})",
        int_label=r["int"].name,
        fp_label=r["fp"].name,
        kappa=kappa,
        theory_db=r["curves"],
        kappa_star=stars,
        mc_kappa=b.centers[used],
        mc_int_db=b.qsnr_db["int"][used],
        mc_fp_db=b.qsnr_db["fp"][used],
        envelopes=tuple(_envelope(a) for a in hosted),
        block_size=r["int"].block_size,
        mc_block_size=r["block"],
    )


def _adaptive_panel(a: dict, kappa: np.ndarray) -> plotting.PairPanel:
    """A panel of its own for an adaptive format no pair hosts: its candidates, envelope and threshold (theory)."""
    fmt, (l0, l1) = a["fmt"], a["labels"]
    reference = {}
    if theory.uses_top_binade(fmt):  # show what Eq. 43 alone says for candidate 0 (NVFP4's curve)
        curve = theory.qsnr_curve(fmt.candidates[0], kappa, "reference")
        reference[f"{l0} Eq. 43 without the top-binade term (reference)"] = curve
    return plotting.PairPanel(
        title=f"{fmt.label.upper()}: per block {l1} or {l0} (theory)",
        int_label=l1,
        fp_label=l0,
        kappa=kappa,
        theory_db=a["curves"],
        kappa_star={v: a["theory"][v]["kappa"] for v in VARIANTS},
        envelopes=(_envelope(a),),
        reference_db=reference,
        block_size=fmt.block_size,
    )


def _panels(results: list[dict], adaptive: list[dict], kappa: np.ndarray) -> list[plotting.PairPanel]:
    """The pair panels (each with the envelopes of the adaptive formats it hosts), then one per unhosted format."""
    hosts = [host_pair(a, results) for a in adaptive]
    panels = [_panel(r, kappa, [a for a, h in zip(adaptive, hosts) if h is r]) for r in results]
    return panels + [_adaptive_panel(a, kappa) for a, h in zip(adaptive, hosts) if h is None]


def _rows(results: list[dict], adaptive: list[dict], kappa: np.ndarray) -> tuple[list[dict], list[dict]]:
    curve_rows, mc_rows = [], []
    for r in results:
        for v, (i_db, f_db) in r["curves"].items():
            curve_rows += [
                {
                    "pair": r["name"],
                    "variant": v,
                    "kappa": float(k),
                    "int_db": float(a),
                    "fp_db": float(b),
                    "adaptive_db": "",
                    "choice": "",
                }
                for k, a, b in zip(kappa, i_db, f_db)
            ]
        b = r["binned"]
        mc_rows += [
            {
                "pair": r["name"],
                "block_size": r["block"],
                "kappa": float(c),
                "blocks": int(n),
                "int_db": float(a),
                "fp_db": float(f),
            }
            for c, n, a, f in zip(b.centers, b.counts, b.qsnr_db["int"], b.qsnr_db["fp"])
            if n > 0
        ]
    for a in adaptive:
        for v, (c1_db, c0_db) in a["curves"].items():
            curve_rows += [
                {
                    "pair": a["fmt"].label.upper(),
                    "variant": v,
                    "kappa": float(k),
                    "int_db": float(q1),
                    "fp_db": float(q0),
                    "adaptive_db": float(e),
                    "choice": int(c),
                }
                for k, q1, q0, e, c in zip(kappa, c1_db, c0_db, a["envelope"][v], a["choice"][v])
            ]
    return curve_rows, mc_rows


def print_summary(result: dict, results: list[dict], cfg: Config) -> None:
    printed = PAPER_FIG3 if not (cfg.block_size or cfg.scale) else {}  # the paper's values only for its formats
    rows = []
    for r in results:
        t = result["theory"]
        rows.append(
            (
                r["name"],
                printed.get(r["name"], "-"),
                t["paper"][r["name"]]["kappa"],
                t["reference"][r["name"]]["kappa"],
                t["reference"][r["name"]]["qsnr_db"],
                r["empirical"],
                r["block"],
            )
        )
    print("\nINT beats FP below the crossover crest factor kappa*:")
    print(
        common.format_table(
            ["pair", "paper Fig.3", "theory paper", "theory ref", "QSNR@k* dB", "measured", "block"], rows, ".4f"
        )
    )
    if result["adaptive"]["reference"]:
        arows = [
            (
                name,
                f"{t['below'] or '-'} / {t['above'] or '-'}",
                result["adaptive"]["paper"][name]["kappa"],
                t["kappa"],
                t["qsnr_db"],
            )
            for name, t in result["adaptive"]["reference"].items()
        ]
        print("\nPer-block adaptive formats (theory): the first candidate wins below kappa*, the second above:")
        print(
            common.format_table(["format", "below / above", "theory paper", "theory ref", "QSNR@k* dB"], arows, ".4f")
        )
    print("\nGaussian N(0,1) QSNR (dB):")
    print(common.format_table(["format", "QSNR"], list(result["gaussian_qsnr_db"].items()), ".2f"))
    crest = result["gaussian_block_crest"]
    probe = result["bf16_probe"]
    print(f"\nGaussian mean block crest factor: block 32 {crest['32']:.3f}, block 16 {crest['16']:.3f}")
    print("Algorithm 1 (x / (x/127) rounds to 128): " + ", ".join(f"{k} {100 * v:.3f}%" for k, v in probe.items()))


def main(argv=None) -> dict:
    cfg, out = common.parse_config(Config, argv, __doc__, PRESETS)
    t0 = time.perf_counter()
    key = jax.random.key(cfg.seed)
    k_mc, k_gauss, k_probe = jax.random.split(key, 3)
    kappa = np.linspace(1.0, cfg.kappa_max, 600)
    results = [
        run_pair(cfg, p, jax.random.fold_in(k_mc, i), kappa)
        for i, p in enumerate(common.progress(cfg.pairs, desc="pairs", unit="pair"))
    ]
    adaptive = [theory_for_adaptive(a, kappa, cfg.kappa_max) for a in cfg.adaptive]
    qsnr, crest = gaussian_measurements(cfg, k_gauss)
    result = {
        "theory": {v: {r["name"]: r["theory"][v] for r in results} for v in VARIANTS},
        "adaptive": {v: {a["fmt"].label: a["theory"][v] for a in adaptive} for v in VARIANTS},
        "empirical": {r["name"]: {"kappa": r["empirical"], "block_size": r["block"]} for r in results},
        "gaussian_qsnr_db": qsnr,
        "gaussian_block_crest": crest,
        "bf16_probe": overflow_probe(k_probe, cfg.probe_shape),
        "config": cfg,
        "machine": common.machine_description(),
    }
    folder = common.output_dir("crossover", out)
    common.write_json(folder / "crossover.json", result)
    curve_rows, mc_rows = _rows(results, adaptive, kappa)
    common.write_csv(folder / "curves.csv", curve_rows)
    common.write_csv(folder / "montecarlo.csv", mc_rows)
    plotting.save(plotting.crossover_figure(_panels(results, adaptive, kappa)), folder / "crossover.png")
    print_summary(result, results, cfg)
    print(
        f"\nwrote {folder}/crossover.json, curves.csv, montecarlo.csv, crossover.png ({time.perf_counter() - t0:.0f} s)"
    )
    return result


if __name__ == "__main__":
    main()
