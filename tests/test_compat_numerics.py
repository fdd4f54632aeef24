"""Peer-compatible NVFP4 numerics (`numerics="torchao"` / `"te"`) against the peers' own arithmetic.

Oracles:
- torchao 0.18 itself (torch CPU): `NVFP4Tensor.to_nvfp4(x, per_tensor_scale=per_tensor_amax_to_scale(amax))`
  and its `dequantize`; the packed FP4 bytes, the E4M3 scale bytes, the tensor scale and the dequantized values
  must be identical bit for bit. A numpy transcription of the same arithmetic (`torchao_ref`, checked against
  torchao on FP4) extends the check to INT4 elements, which torchao lacks.
- TransformerEngine-JAX, transcribed here in numpy float32 from `transformer_engine/jax/quantize/quantizer.py`
  (`NVFP4Quantizer._quantize_func`) and `dequantizer.py` (`NVFP4Dequantizer._dequantize_func`), line by line
  (`te_ref`); its `reduce_precision(., 4, 3)` of the float8 block scale is taken as the E4M3 cast it follows,
  which TE's GPU tests compare with its C++ kernel bit for bit (docs/formats.md; not run here).

Where the variants differ from the exact default by design (one test shows each difference exists):
- Reciprocal multiplies: both peers scale x by a rounded reciprocal (torchao x * fl(fl(1/g)/s), TE
  x * fl(1/fl(s * fl(1/T)))), so an element whose exact quotient x / (s g) is an E2M1 midpoint (1.25, 2.5, 5)
  can land an ulp above it and round up, where the exact contract rounds the tie to even.
- torchao's block-scale clamp at 2^-6 (E4M3's smallest normal): a block whose amax / 6 / g falls below it gets
  the scale 2^-6 (coarser codes), where the exact contract uses E4M3's subnormal scales or 0.
- TE's scales come from the tensor amax it stores: T = fl(6 * 448 / amax) to quantize, fl(amax / (6 * 448)) to
  dequantize; a block scale of 0 encodes x * float32 max clipped to +-6 (the exact contract stores 0 codes;
  both dequantize to 0).
- By the library's contract, not the peers': an all-zero tensor gives zeros (torchao: NaN), a block holding
  NaN / Inf dequantizes to NaN and leaves the other blocks as if it were zero (torchao: the whole tensor NaN).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import codec
from lowbit_jax.kernels import pallas_quantize as pq
from tests.conftest import assert_same_bits, dq, fq, nv_elem_round, nv_reference, qz

F32 = np.float32
F32_MAX = np.finfo(F32).max
SCALE_MAX = F32(448)
VARIANTS = ("nvfp4:numerics=torchao", "nvfp4:numerics=te", "nvint4:numerics=torchao", "nvint4:numerics=te")


# --------------------------------------------------------------------------------------------- inputs
def dataset(kind: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """float32 data whose last axis is a multiple of 16 (numpy-built): normal at a random power-of-two scale,
    lognormal magnitudes with random signs, normal with all-zero blocks, or "tiny" blocks (each 16-block scaled by
    2^U[-22, 0], so amax_b / 6 / g spans E4M3's normal and subnormal range, the 2^-6 clamp and underflow)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape)
    if kind == "normal":
        x = x * 2.0 ** int(rng.integers(-30, 30))
    elif kind == "lognormal":
        x = np.exp(3 * rng.standard_normal(shape)) * np.sign(x)
    elif kind == "zero_blocks":
        blocks = x.reshape(-1, 16)
        blocks[rng.random(blocks.shape[0]) < 0.3] = 0.0
    elif kind == "tiny":
        nb = shape[-1] // 16
        mag = 2.0 ** rng.uniform(-22, 0, shape[:-1] + (nb,))
        x = x * np.repeat(mag, 16, axis=-1)
    else:
        raise AssertionError(kind)
    return x.astype(F32)


CASES = [
    ("normal", (64, 256), 0),
    ("lognormal", (32, 128), 1),
    ("zero_blocks", (3, 8, 48), 2),
    ("tiny", (16, 512), 3),
    ("tiny", (2, 4, 64), 4),
    ("normal", (1, 16), 5),
]
IDS = [f"{k}-{'x'.join(map(str, s))}" for k, s, _ in CASES]


# --------------------------------------------------------------------------------------------- torchao oracle
def require_torchao():
    pytest.importorskip("torch", reason="the torchao oracle needs torch")
    torchao = pytest.importorskip("torchao", reason="the oracle needs `pip install torchao==0.18.0`")
    if not torchao.__version__.startswith("0.18"):
        pytest.skip(f"the oracle is torchao 0.18, found {torchao.__version__}")


def torchao_run(x: np.ndarray, two_level: bool = True, out_dtype: str = "float32"):
    """torchao 0.18 on x (float32 or bfloat16 values): (dequantized as float32, packed FP4 bytes, E4M3 scale
    bytes, tensor scale or None)."""
    import torch
    from torchao.prototype.mx_formats.nvfp4_tensor import NVFP4Tensor, per_tensor_amax_to_scale

    t = torch.from_numpy(np.array(x, F32))
    if out_dtype == "bfloat16":
        t = t.to(torch.bfloat16)
    g = per_tensor_amax_to_scale(torch.max(torch.abs(t))) if two_level else None
    q = NVFP4Tensor.to_nvfp4(t, per_tensor_scale=g)
    y = q.dequantize(t.dtype).to(torch.float32).numpy()
    return y, q.qdata.view(torch.uint8).numpy(), q.scale.view(torch.uint8).numpy(), None if g is None else g.numpy()


def torchao_ref(x: np.ndarray, kind: str = "fp", two_level: bool = True) -> np.ndarray:
    """numpy float32 transcription of torchao 0.18's nvfp4_quantize + NVFP4Tensor.dequantize along the last axis
    (blocks of 16), with Qmax 6 (FP4) or 7 (INT4) in place of F4_E2M1_MAX."""
    qmax = F32(6 if kind == "fp" else 7)
    xb = x.reshape(*x.shape[:-1], -1, 16)
    block_scale = np.abs(xb).max(axis=-1, keepdims=True) / qmax
    if two_level:
        g = np.abs(x).max() / (SCALE_MAX * qmax)  # per_tensor_amax_to_scale
        s = np.clip(block_scale / g, F32(2.0**-6), SCALE_MAX).astype(ml_dtypes.float8_e4m3fn).astype(F32)
        reciprocal = (F32(1) / g) / s
    else:
        s = np.clip(block_scale, F32(2.0**-6), SCALE_MAX).astype(ml_dtypes.float8_e4m3fn).astype(F32)
        reciprocal = F32(1) / s
    codes = nv_elem_round((xb * reciprocal).astype(F32), kind, float(qmax))
    return (codes * (g * s if two_level else s)).astype(F32).reshape(x.shape)


# --------------------------------------------------------------------------------------------- TE oracle
def te_ref(x: np.ndarray, kind: str = "fp", tile: tuple[int, int] = (1, 16)):
    """numpy float32 transcription of TE-JAX's NVFP4 quantize + dequantize of a 2-D x in (rows, cols) tiles:
    (dequantized, element codes as float32, block scales as float32, stored amax)."""
    data_max = F32(6 if kind == "fp" else 7)
    r, c = tile
    xb = x.reshape(x.shape[0] // r, r, x.shape[1] // c, c)
    # _quantize_func, level 1: current tensor scaling
    global_amax = np.max(np.abs(xb)).astype(F32)
    with np.errstate(divide="ignore"):
        tensor_scale = data_max * SCALE_MAX / global_amax
    tensor_scale = np.minimum(tensor_scale, F32_MAX)
    tensor_scale = np.where(tensor_scale == F32(0), F32(1), tensor_scale).astype(F32)
    tensor_scale_inv = F32(1) / tensor_scale
    # level 2: block scaling
    block_amax = np.max(np.abs(xb), axis=(1, 3), keepdims=True).astype(F32)
    block_scale_inv = block_amax / data_max
    block_scale_inv = block_scale_inv * tensor_scale
    block_scale_inv = np.minimum(block_scale_inv, F32_MAX)
    block_scale_inv = np.clip(block_scale_inv, -SCALE_MAX, SCALE_MAX)
    block_scale_inv = block_scale_inv.astype(ml_dtypes.float8_e4m3fn)  # + reduce_precision(4, 3): the same cast
    with np.errstate(divide="ignore"):
        block_scale = np.minimum(F32(1) / (block_scale_inv.astype(F32) * tensor_scale_inv), F32_MAX)
    scaled_x = xb.astype(F32) * block_scale
    codes = nv_elem_round(scaled_x.astype(F32), kind, float(data_max))  # clip to +-max, cast to the element
    # NVFP4Dequantizer._dequantize_func
    dq_tensor_scale_inv = global_amax / (data_max * SCALE_MAX)
    scale_inv = block_scale_inv.astype(F32) * dq_tensor_scale_inv
    y = (codes * scale_inv).astype(F32).reshape(x.shape)
    return y, codes.reshape(x.shape), block_scale_inv.astype(F32)[:, 0, :, 0], global_amax


# --------------------------------------------------------------------------------------------- torchao
@pytest.mark.parametrize("kind, shape, seed", CASES, ids=IDS)
def test_torchao_variant_equals_torchao(kind, shape, seed):
    """nvfp4:numerics=torchao == torchao 0.18 bit for bit: dequantized values, packed FP4 bytes, E4M3 scale
    bytes, tensor scale."""
    require_torchao()
    x = dataset(kind, shape, seed)
    want, packed, scale_bytes, g = torchao_run(x)
    fmt = "nvfp4:numerics=torchao"
    assert_same_bits(fq(x, fmt), want, "fake_quant")
    q = qz(x, fmt)
    np.testing.assert_array_equal(np.asarray(lb.pack_fp4(q.codes)), packed, err_msg="packed FP4 bytes")
    np.testing.assert_array_equal(np.asarray(q.scales).view(np.uint8), scale_bytes, err_msg="E4M3 scale bytes")
    assert_same_bits(q.tensor_scale, g, "tensor scale")


def test_torchao_variant_single_level_and_bfloat16():
    """tensor_scale=none (torchao's per_tensor_scale=None) and bfloat16 input (dequantized to bfloat16) equal
    torchao 0.18 bit for bit."""
    require_torchao()
    x = dataset("tiny", (16, 256), 10)
    want, packed, scale_bytes, _ = torchao_run(x, two_level=False)
    fmt = "nvfp4:tensor_scale=none:numerics=torchao"
    assert_same_bits(fq(x, fmt), want, "single level")
    q = qz(x, fmt)
    assert q.tensor_scale is None
    np.testing.assert_array_equal(np.asarray(q.scales).view(np.uint8), scale_bytes, err_msg="single-level scales")
    np.testing.assert_array_equal(np.asarray(lb.pack_fp4(q.codes)), packed, err_msg="single-level codes")
    xb = jnp.asarray(dataset("lognormal", (8, 128), 11)).astype(jnp.bfloat16)
    want_b, *_ = torchao_run(np.asarray(xb.astype(jnp.float32)), out_dtype="bfloat16")
    got_b = fq(xb, "nvfp4:numerics=torchao")
    assert got_b.dtype == jnp.bfloat16
    assert_same_bits(got_b.astype(F32), want_b, "bfloat16")


def test_torchao_transcription_equals_torchao():
    """The numpy transcription used for INT4 reproduces torchao itself on FP4 (two-level and single-level)."""
    require_torchao()
    for kind, shape, seed in CASES[:4]:
        x = dataset(kind, shape, seed).reshape(-1, shape[-1])
        assert_same_bits(torchao_ref(x), torchao_run(x)[0], f"{kind} two-level")
        assert_same_bits(torchao_ref(x, two_level=False), torchao_run(x, two_level=False)[0], f"{kind} one level")


@pytest.mark.parametrize("kind, shape, seed", CASES[:4], ids=IDS[:4])
def test_nvint4_torchao_variant_equals_transcription(kind, shape, seed):
    """nvint4:numerics=torchao == torchao's arithmetic with Qmax 7 and INT4 rounding (numpy transcription)."""
    x = dataset(kind, shape, seed)
    assert_same_bits(fq(x, "nvint4:numerics=torchao"), torchao_ref(x, "int"), "nvint4 torchao")


# --------------------------------------------------------------------------------------------- TE
@pytest.mark.parametrize("kind, shape, seed", CASES, ids=IDS)
@pytest.mark.parametrize("elem", ["fp", "int"])
def test_te_variant_equals_transcription(kind, shape, seed, elem):
    """nvfp4 / nvint4 with numerics=te == the TE-JAX transcription: values, codes, block scales, stored amax."""
    x = dataset(kind, shape, seed)
    x2 = x.reshape(-1, shape[-1])
    want, codes, scales, amax = te_ref(x2, elem)
    fmt = f"nv{elem}4:numerics=te"
    assert_same_bits(fq(x, fmt).reshape(x2.shape), want, "fake_quant")
    q = qz(x, fmt)
    assert_same_bits(np.asarray(q.codes).astype(F32).reshape(x2.shape), codes, "codes")
    assert_same_bits(np.asarray(q.scales).astype(F32).reshape(scales.shape), scales, "block scales")
    assert_same_bits(q.tensor_scale, amax, "stored tensor amax")


def test_te_variant_on_16x16_tiles():
    """nvfp4_2d:numerics=te (TE's NVFP4_2D_SCALING: one scale per 16x16 tile) == the transcription on tiles."""
    for kind, seed in (("normal", 20), ("tiny", 21)):
        x = dataset(kind, (64, 96), seed)
        want, _, scales, _ = te_ref(x, "fp", (16, 16))
        assert_same_bits(fq(x, "nvfp4_2d:numerics=te", axis=(-2, -1)), want, f"{kind} 2-D")
        q = qz(x, "nvfp4_2d:numerics=te", axis=(-2, -1))
        assert_same_bits(np.asarray(q.scales).astype(F32), scales, f"{kind} 2-D scales")


# --------------------------------------------------------------------------------------------- both
@pytest.mark.parametrize("spec", VARIANTS)
def test_round_trip_and_finite(spec):
    """dequantize(quantize(x)) == fake_quant(x) bit for bit (jitted and eager), and finite inputs stay finite."""
    x = dataset("tiny", (8, 64), 30)
    x[0, :16] = 0.0
    y = fq(x, spec)
    assert_same_bits(dq(qz(x, spec)), y, "jitted")
    assert_same_bits(np.asarray(lb.dequantize(lb.quantize(x, spec))), np.asarray(lb.fake_quant(x, spec)), "eager")
    assert np.isfinite(y).all()
    key = jax.random.key(0)  # stochastic rounding of the peer-scaled values (the library's draws)
    y_sr = fq(x, spec, key=key)
    assert_same_bits(dq(qz(x, spec, key=key)), y_sr, "stochastic")
    assert np.isfinite(y_sr).all() and (y_sr != y).any()


def test_zero_tensor_and_non_finite_blocks():
    """By the library's contract: an all-zero tensor gives zeros (torchao 0.18 itself gives NaN, checked when
    installed); a NaN or Inf block dequantizes to NaN and the rest equals the oracle on x with that block zeroed."""
    zeros = np.zeros((2, 32), F32)
    for spec in VARIANTS:
        assert_same_bits(fq(zeros, spec), zeros, f"{spec} zeros")
    x = dataset("normal", (4, 64), 31)
    x[1, 3], x[2, 20] = np.nan, np.inf
    bad = np.zeros(x.shape, bool)
    bad[1, :16] = bad[2, 16:32] = True
    cleaned = np.where(bad, F32(0), x)
    for spec, oracle in (("nvfp4:numerics=torchao", torchao_ref), ("nvfp4:numerics=te", lambda v: te_ref(v)[0])):
        y = fq(x, spec)
        assert np.isnan(y[bad]).all(), spec
        assert_same_bits(y[~bad], oracle(cleaned)[~bad], f"{spec} finite blocks")
    try:
        require_torchao()
    except pytest.skip.Exception:
        return
    assert np.isnan(torchao_run(zeros)[0]).all()  # torchao: g = 0, so 0 / 0


# --------------------------------------------------------------------------------------------- by design
def _reciprocal_tie_input() -> tuple[np.ndarray, np.ndarray]:
    """A tensor whose first block has amax 2688 (so g = 1 and T = 1 exactly) and whose other blocks each hold
    6 s (scale s) and m s, an E2M1 midpoint m in {1.25, 2.5, 5} times an E4M3 value s for which fl(m s *
    fl(1 / s)) lies above m (numpy float32 search); returns (x, mask of the m s elements)."""
    s_all = np.arange(1, 127, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(F32)
    rows = []
    for m in (F32(1.25), F32(2.5), F32(5.0)):
        moved = s_all[(m * s_all) * (F32(1) / s_all) > m]
        rows += [(F32(6) * s, m * s) for s in moved[:4]]
    x = np.zeros((1, 16 * (len(rows) + 1)), F32)
    x[0, 0] = 2688.0
    mask = np.zeros(x.shape, bool)
    for i, (top, tie) in enumerate(rows, start=1):
        x[0, 16 * i], x[0, 16 * i + 1], mask[0, 16 * i + 1] = top, tie, True
    return x, mask


def test_variants_differ_from_exact_by_design():
    """The variants are not the exact rule under another name: (1) E2M1 midpoints scaled by a reciprocal
    multiply round up in both peers and to even in the exact contract; (2) a block below torchao's 2^-6 clamp;
    (3) TE's block scales from T = fl(2688 / amax) near E4M3 midpoints."""
    x, mask = _reciprocal_tie_input()
    exact, scales_exact, _ = nv_reference(x, "fp")
    assert_same_bits(fq(x, "nvfp4"), exact, "exact default")
    q_exact = np.abs(exact[mask] / np.repeat(scales_exact, 16, axis=-1)[mask])
    assert np.isin(q_exact, [1.0, 2.0, 4.0]).all()  # the midpoints rounded to even
    for spec, want in (("nvfp4:numerics=torchao", torchao_ref(x)), ("nvfp4:numerics=te", te_ref(x)[0])):
        got = fq(x, spec)
        assert_same_bits(got, want, spec)
        assert (got[mask] > exact[mask]).all(), f"{spec}: every midpoint rounds up"
        assert_same_bits(got[~mask], exact[~mask], f"{spec} elsewhere")
    # (2) amax 2688 with a block [0.03, 0.02]: amax_b / 6 / g = 0.005 < 2^-6
    x = np.zeros((1, 32), F32)
    x[0, 0], x[0, 16], x[0, 17] = 2688.0, 0.03, 0.02
    exact = nv_reference(x, "fp")[0]
    got = fq(x, "nvfp4:numerics=torchao")
    assert_same_bits(got, torchao_ref(x), "torchao clamp")
    assert_same_bits(fq(x, "nvfp4:numerics=te"), exact, "TE has no clamp")
    assert (got[0, 16:18] != exact[0, 16:18]).all()
    assert np.asarray(qz(x, "nvfp4:numerics=torchao").scales)[0, 1].astype(F32) == 2.0**-6
    # (3) TE's block scale fl(fl(amax_b / 6) * fl(2688 / amax)) against the exact fl(fl(amax_b / 6) / g): block
    # amaxes within an ulp of E4M3 midpoints (times 6 g) round to different E4M3 neighbours in some blocks
    amax_t = F32(3.7)
    grid = np.unique(np.arange(127, dtype=np.uint8).view(ml_dtypes.float8_e4m3fn).astype(np.float64))
    near = (((grid[:-1] + grid[1:]) / 2) * 6 * float(amax_t / F32(2688))).astype(F32)
    near = np.concatenate([near, np.nextafter(near, F32(0)), np.nextafter(near, F32(np.inf))])
    x = np.zeros((1, 16 * (near.size + 1)), F32)
    x[0, 0], x[0, 16::16] = amax_t, near
    q = qz(x, "nvfp4:numerics=te")
    te_scales = np.asarray(q.scales).astype(F32)
    assert_same_bits(te_scales, te_ref(x)[2], "TE block scales")
    exact_scales = nv_reference(x, "fp")[1]
    assert_same_bits(np.asarray(qz(x, "nvfp4").scales).astype(F32), exact_scales, "exact block scales")
    assert (te_scales != exact_scales).any() and (te_scales == exact_scales).mean() > 0.5


# --------------------------------------------------------------------------------------------- API
def test_spec_grammar_and_label():
    """numerics= in get_format and in the spec grammar (case-insensitive); labels show the variant; "exact" is
    the named format itself."""
    for name in ("nvfp4", "nvint4", "nvfp4_2d"):
        for numerics in ("torchao", "te"):
            fmt = lb.get_format(name, numerics=numerics)
            assert (
                fmt
                == lb.get_format(f"{name}:numerics={numerics}")
                == lb.get_format(f"{name.upper()}:NUMERICS=" + numerics.upper())
            )
            assert fmt.label == f"{name}[numerics={numerics}]"
            assert fmt.scale_rule.numerics == numerics and fmt.scale_rule.peer is not None
        assert lb.get_format(name, numerics="exact") == lb.get_format(name)
        assert lb.get_format(name, numerics="exact").label == name
    assert (
        lb.get_format("nvfp4:tensor_scale=none:numerics=torchao").label == "nvfp4[tensor_scale=none, numerics=torchao]"
    )
    assert lb.get_format("nvfp4").numerics == "exact" and lb.get_format("nvfp4").scale_rule.peer is None


@pytest.mark.parametrize(
    "spec, match",
    [
        ("mxfp4:numerics=torchao", "UE8M0"),
        ("mxint8:numerics=te", "UE8M0"),
        ("nvfp4:numerics=ieee", "numerics must be one of"),
        ("nvfp4:scale=ue5m3:numerics=torchao", "E4M3 block scale"),
        ("nvfp4:tensor_scale=ue8m0:numerics=te", "tensor_scale=fp32"),
        ("nvfp4:tensor_scale=none:numerics=te", "tensor_scale=fp32"),
        ("nvfp4_to6:numerics=torchao", "bound"),
        ("if4:numerics=te", "adaptive"),
        ("int(4):int_range=zero_point:block_size=16:scale=e4m3:numerics=te", "zero point"),
    ],
)
def test_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        lb.get_format(spec)


def test_error_on_identity_and_keyword():
    with pytest.raises(ValueError, match="identity"):
        lb.get_format("bf16", numerics="torchao")
    with pytest.raises(ValueError, match="UE8M0"):
        lb.get_format("mxfp8", numerics="te")


# --------------------------------------------------------------------------------------------- kernels
@functools.cache
def _kernel_vs_core(spec: str):
    fmt = lb.get_format(spec)
    tiles = pq.Tiles(blocks=8, rows=4, cols=64)

    @jax.jit
    def run(x):
        core = (codec.fake_quant_array(x, fmt, (1,)), codec.quantize_array(x, fmt, (1,)))
        kern = [
            (pq.fake_quant_pallas(x, fmt, tiles=tiles, backend=be), pq.quantize_pallas(x, fmt, tiles=tiles, backend=be))
            for be in ("interpret", "interpret_portable")
        ]
        return core, kern

    return run


@pytest.mark.parametrize("spec", ["nvfp4:numerics=torchao", "nvfp4:numerics=te"])
def test_pallas_kernels_run_the_variants(spec):
    """The Pallas quantize kernels (both interpreted backends) run the same codec functions: fake-quant values,
    codes, scales and tensor scale equal the core's bit for bit on data with zero and tiny blocks."""
    x = dataset("tiny", (8, 80), 40)
    x[1, :16] = 0.0
    (fake, q), kern = _kernel_vs_core(spec)(jnp.asarray(x))
    for fake_k, (codes, scales, tensor, _) in kern:
        assert_same_bits(fake_k, fake, f"{spec} fake")
        assert_same_bits(np.asarray(codes).astype(F32), np.asarray(q.codes).astype(F32), f"{spec} codes")
        assert_same_bits(np.asarray(scales).astype(F32), np.asarray(q.scales).astype(F32), f"{spec} scales")
        assert_same_bits(tensor, q.tensor_scale, f"{spec} tensor")
