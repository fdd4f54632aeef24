"""Low-bit training recipes as data: each recipe is a list of interceptor rules that `lb.quantized(...)` takes as
it is, built from the QDotConfig that places every quantizer of the three GEMMs of a linear layer.

    rules = lb.recipes.nvidia_nvfp4(n_blocks=12, last=2)     # a RecipeRules: a list of (regex, value) pairs
    with lb.quantized(rules, key=key) as report:             # the key feeds stochastic rounding and rotations
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
    rules.config, rules.high_precision, rules.source         # the QDotConfigs behind the rules, the citation
    report.quantized                                         # which layer ran which config (labels)

Rule order (first match wins): the layers kept in high precision (`keep` regexes: by default the output head,
tied or not, and the blocks chosen by `first` / `last` of `n_blocks`), then every other GEMM with the recipe's
config. Kept layers run `high_precision` ("bf16": all six operands rounded to bfloat16, as NVIDIA's recipe keeps
them; None: unquantized, in the model's compute dtype). Every recipe here quantizes the linear layers' GEMMs only:
attention score and value products, norms and embeddings stay in the compute dtype, as in the sources.

Recipes (`RECIPES`, `get_recipe(name)`): paper_mxint8, paper_mxfp8 (the INT-vs-FP paper's training setting),
mxfp8_rceil (the common MXFP8 recipe), nvidia_nvfp4 (arXiv 2509.25149 / TransformerEngine NVFP4BlockScaling),
quartet2_nvfp4 (Quartet II, arXiv 2601.22813: MS-EDEN unbiased backward). Each function's docstring says what it
places where and how it departs from its source.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, TypedDict, Unpack

from lowbit_jax.formats import get_format
from lowbit_jax.interceptor import block_rules
from lowbit_jax.qdot_config import QDotConfig, Rotation

# The output head, untied ('lm_head') or tied (the Embed's attend: 'embed_tokens' in Hugging Face decoders,
# 'embed' in lowbit_jax.models.llama), as a path component anywhere in the path.
HEAD = r"(?:.*/)?(?:lm_head|embed_tokens|embed)"
# TransformerEngine's fixed 16-entry sign vector of the wgrad random Hadamard transform, shared by every layer and
# step (transformer_engine/jax/quantize/hadamard.py, get_wgrad_sign_vector).
TE_WGRAD_SIGNS = (1, 1, 1, -1, 1, -1, -1, -1, -1, -1, -1, 1, -1, 1, -1, -1)
HIGH_PRECISION = ("bf16", None)
PAPER = "arXiv 2510.25602 section 5.3"


class RecipeRules(list):
    """Interceptor rules of a recipe (a list of (regex, value) pairs) with the configs behind them.

    name: the recipe; config: the QDotConfig of the quantized layers; high_precision: that of the kept layers
    (None: unquantized); kept: the keep regexes, in rule order; source: what the recipe reproduces.
    """

    def __init__(
        self,
        name: str,
        config: QDotConfig,
        kept: Sequence[str],
        high_precision: QDotConfig | None,
        source: str,
    ) -> None:
        super().__init__([(p, high_precision) for p in kept] + [(".*", config)])
        self.name, self.config, self.high_precision = name, config, high_precision
        self.kept, self.source = tuple(kept), source

    def __repr__(self) -> str:
        return f"RecipeRules({self.name}: {self.config.label}; kept {list(self.kept)} -> {_label(self.high_precision)})"


def _label(cfg: QDotConfig | None) -> str:
    return "unquantized" if cfg is None else cfg.label


def _high_precision(value: str | None) -> QDotConfig | None:
    if value not in HIGH_PRECISION:
        raise ValueError(f"high_precision must be 'bf16' (six bfloat16 operands) or None (unquantized), got {value!r}")
    return None if value is None else QDotConfig.train("bf16")


def _kept(keep: Sequence[str], n_blocks: int | None, first: int, last: int, block: str) -> list[str]:
    """The keep regexes: `keep` (checked) then one per block kept among the first / last of n_blocks."""
    if isinstance(keep, str):
        keep = (keep,)
    for pattern in keep:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"keep: invalid regex {pattern!r}: {err}") from err
    if (first or last) and n_blocks is None:
        raise ValueError("first= / last= keep transformer blocks in high precision: give n_blocks= (the model's depth)")
    blocks = (
        [] if n_blocks is None else [p for p, _ in block_rules(None, n_blocks, first=first, last=last, block=block)]
    )
    return list(keep) + blocks


class _Layers(TypedDict, total=False):
    """Which layers a recipe keeps in high precision, and what they run (every recipe's keyword arguments)."""

    keep: Sequence[str]  # regexes of kept layers (default: the output head, HEAD)
    n_blocks: int | None  # the model's number of transformer blocks (needed by first / last)
    first: int  # keep the first `first` blocks
    last: int  # keep the last `last` blocks
    block: str  # a block's path component, with {i} for its index (default 'layers_{i}')
    high_precision: str | None  # what kept layers run: "bf16" or None (unquantized)


def _recipe(name: str, config: QDotConfig, source: str, layers: _Layers, high_precision: str | None = None):
    """RecipeRules of `config`, keeping the layers `layers` names (high_precision: the recipe's default)."""
    unknown = set(layers) - set(_Layers.__annotations__)
    if unknown:
        raise TypeError(
            f"{name}() got unexpected keyword argument(s) {sorted(unknown)}; takes {list(_Layers.__annotations__)}"
        )
    kept = _kept(
        layers.get("keep", (HEAD,)),
        layers.get("n_blocks"),
        layers.get("first", 0),
        layers.get("last", 0),
        layers.get("block", "layers_{i}"),
    )
    return RecipeRules(name, config, kept, _high_precision(layers.get("high_precision", high_precision)), source)


_LAYER_DOC = """
    keep: regexes of layers kept in high precision (default: the output head); n_blocks, first, last: also keep the
    first `first` and last `last` of the model's n_blocks transformer blocks (a block is the path component
    block.format(i=i), 'layers_{i}' in lowbit_jax's Llama and Hugging Face decoders); high_precision: what kept
    layers run ("bf16" or None, unquantized)."""


def paper_mxint8(
    **layers: Unpack[_Layers],
) -> RecipeRules:
    """The INT-vs-FP paper's low-bit training (arXiv 2510.25602, section 5.3): all six GEMM operands MXINT8, block
    32, UE8M0 scale rounded up (Eq. 9), symmetric INT8 [-127, 127], round to nearest even, no rotation, no
    stochastic rounding; the output head unquantized (the paper does not say which layers it excluded).
    """
    cfg = QDotConfig.train("mxint8")
    return _recipe("paper_mxint8", cfg, PAPER, layers)


def paper_mxfp8(
    **layers: Unpack[_Layers],
) -> RecipeRules:
    """The INT-vs-FP paper's MXFP8 training (arXiv 2510.25602, section 5.3): all six GEMM operands MXFP8 E4M3,
    block 32, UE8M0 scale rounded up (Eq. 9), round to nearest even; the output head unquantized."""
    cfg = QDotConfig.train("mxfp8")
    return _recipe("paper_mxfp8", cfg, PAPER, layers)


def mxfp8_rceil(
    grads: str = "e4m3",
    **layers: Unpack[_Layers],
) -> RecipeRules:
    """The common MXFP8 training recipe (TransformerEngine MXFP8BlockScaling, torchao's RCEIL mode, cuDNN's
    "round up" scale): MXFP8 operands in blocks of 32 along each GEMM's contracting axis, each quantized from the
    high-precision tensor (TE's row-wise and column-wise copies), UE8M0 scale 2^ceil(log2(amax / 448)) (RCEIL,
    this library's "ceil" rule), round to nearest even. grads: "e4m3" (TE's default) or "e5m2" (TE's HYBRID
    format: both dY operands in E5M2). With grads="e4m3" the quantizers equal paper_mxfp8's: the paper's Eq. 9 is
    RCEIL. Not reproduced: TE's saturating code for an Inf block (0xFE; here such a block is NaN, the contract).
    """
    if grads not in ("e4m3", "e5m2"):
        raise ValueError(f"mxfp8_rceil: grads must be 'e4m3' or 'e5m2', got {grads!r}")
    dy = get_format("mxfp8_e5m2" if grads == "e5m2" else "mxfp8_e4m3")
    cfg = QDotConfig.train("mxfp8_e4m3", dy_dx=dy, dy_dw=dy)
    source = "TransformerEngine MXFP8BlockScaling (RCEIL scale)"
    return _recipe("mxfp8_rceil", cfg, source, layers)


def nvidia_nvfp4(
    *,
    numerics: str = "exact",
    **layers: Unpack[_Layers],
) -> RecipeRules:
    """NVIDIA's NVFP4 pretraining recipe (arXiv 2509.25149; TransformerEngine NVFP4BlockScaling, docs nvfp4.rst).

    Placement: weights in NVFP4 with one E4M3 scale per 16x16 tile (w_fwd and w_dx: nvfp4_2d, so the dX GEMM's
    weight is the forward one transposed, bit for bit); activations and gradients in 1x16 NVFP4; a 16-point random
    Hadamard transform on both inputs of the weight-gradient GEMM only (x_dw, dy_dw), with TE's one fixed sign
    vector (TE_WGRAD_SIGNS) for every layer; stochastic rounding on the two gradient operands only (dy_dx, dy_dw).
    Selected layers stay in BF16 (high_precision="bf16"): the paper keeps a small share of the linear layers, mostly
    the last blocks, in BF16; choose them with n_blocks / first / last or regexes in `keep`.
    numerics: "exact" (this library's correctly rounded NVFP4) or a peer variant of lb.get_format("nvfp4",
    numerics=...). Not reproduced: TE computes the transform and the operands in BF16 (here float32 on the
    model's tensors) and uses 8 random bits per stochastic rounding in its software path (give sr_bits through
    a QDotConfig if wanted).
    """
    extra: dict[str, Any] = {} if numerics == "exact" else {"numerics": numerics}
    act, weight = get_format("nvfp4", **extra), get_format("nvfp4_2d", **extra)
    cfg = QDotConfig(
        x_fwd=act,
        w_fwd=weight,
        dy_dx=act,
        w_dx=weight,
        x_dw=act,
        dy_dw=act,
        rot_dw=Rotation(16, signs=TE_WGRAD_SIGNS),
        stochastic_grads=True,
    )
    source = "arXiv 2509.25149; TransformerEngine NVFP4BlockScaling"
    return _recipe("nvidia_nvfp4", cfg, source, layers, high_precision="bf16")


def quartet2_nvfp4(
    rotation: int = 32,
    **layers: Unpack[_Layers],
) -> RecipeRules:
    """Quartet II (arXiv 2601.22813; IST-DASLab/Quartet-II, schemes/quartet_2.py): the forward GEMM in 1x16
    NVFP4 with round to nearest, both backward GEMMs with the unbiased MS-EDEN estimator (lowbit_jax.eden) on
    all four operands, each backward GEMM rotated along its contracting axis by a random Hadamard of size
    `rotation` (32 in the source) with signs drawn afresh from the step's key (the source re-draws them every
    backward pass), and the backward GEMMs re-quantize the forward GEMM's Q(X) and Q(W) rather than the
    high-precision tensors, as the source does (QDotConfig.backward_inputs="forward"). Departs from the source: the
    tensor amax is the current one (the source can delay it by a step), and the source's own RNG is not reproduced.
    """
    fmt = get_format("nvfp4")
    backward = ("dy_dx", "w_dx", "x_dw", "dy_dw")
    rot = Rotation(rotation)
    cfg = QDotConfig.train(fmt, rot_dx=rot, rot_dw=rot, eden=backward, backward_inputs="forward")
    source = "arXiv 2601.22813 (Quartet II, MS-EDEN)"
    return _recipe("quartet2_nvfp4", cfg, source, layers)


RECIPES: dict[str, Callable[..., RecipeRules]] = {
    f.__name__: f for f in (paper_mxint8, paper_mxfp8, mxfp8_rceil, nvidia_nvfp4, quartet2_nvfp4)
}
for _f in RECIPES.values():
    if _f.__doc__ is not None:
        _f.__doc__ += _LAYER_DOC


def list_recipes() -> list[str]:
    """The recipe names."""
    return list(RECIPES)


def get_recipe(name: str, **kwargs: Any) -> RecipeRules:
    """The rules of recipe `name` (RECIPES), built with `kwargs`; ValueError naming the valid recipes."""
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r}; recipes: {', '.join(RECIPES)}")
    return RECIPES[name](**kwargs)


__all__ = [
    "HEAD",
    "RECIPES",
    "TE_WGRAD_SIGNS",
    "RecipeRules",
    "get_recipe",
    "list_recipes",
    "mxfp8_rceil",
    "nvidia_nvfp4",
    "paper_mxfp8",
    "paper_mxint8",
    "quartet2_nvfp4",
]
