"""Pallas quantize kernels == the pure-jnp reference == the core, bit for bit (NaN-aware).

One suite over a backend fixture: "interpret" (CPU: interpret mode on tiny grids, 2-4 steps, as each interpreted
step costs milliseconds) and "triton" (`-m gpu`, scripts/gpu_check.sh: the compiled kernels on a realistic grid
against the XLA-compiled reference on the GPU). GPU-only checks against the CPU reference close the file.
This module imports only jax, numpy and pytest, so it runs with `--noconftest` on a bare GPU machine.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax import kernels
from lowbit_jax.kernels import pallas_quantize as pq
from lowbit_jax.kernels import reference, substitute

ADAPTIVE_CANDIDATES = {
    c.name for f in lb.list_formats() if lb.get_format(f).is_adaptive for c in lb.get_format(f).candidates
}
# Block formats; the adaptive ones and their candidates run in test_pallas_formats.py (three adaptive formats
# whose candidates cover every new grid and scale), which keeps this file's compilations in the suite's budget.
FORMATS = [
    f
    for f in lb.list_formats()
    if not (lb.get_format(f).is_identity or lb.get_format(f).is_adaptive)
    and (f not in ADAPTIVE_CANDIDATES or f == "nvfp4" or f.startswith("mx"))
]
TINY = pq.Tiles(blocks=8, rows=4, cols=32)  # (6, 100): 24 blocks of 32 -> 3 steps; 2 x 4 tiles per channel
ON_GPU = jax.default_backend() == "gpu"
gpu = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a GPU")]


def as_bits(a) -> tuple[np.ndarray, np.ndarray]:
    """(raw bit pattern as unsigned ints, NaN mask) of any array, float8/float4/e8m0 included."""
    a = np.asarray(a)
    raw = a.view({1: np.uint8, 2: np.uint16, 4: np.uint32}[a.dtype.itemsize]) if a.dtype != bool else a
    isnan = np.isnan(a.astype(np.float32)) if jnp.issubdtype(a.dtype, jnp.floating) else np.zeros(a.shape, bool)
    return raw, isnan


def assert_same(actual, expected, what: str = "") -> None:
    """Same dtype, shape and bits; NaNs match NaNs whatever their payload."""
    if expected is None:
        assert actual is None, what
        return
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (what, actual, expected)
    (ra, na), (re, ne) = as_bits(actual), as_bits(expected)
    bad = (na != ne) | (~na & (ra != re))
    if bad.any():
        idx = np.argwhere(bad)[:6]
        a, e = np.asarray(actual, np.float32), np.asarray(expected, np.float32)
        rows = [f"{tuple(i)}: {a[tuple(i)]!r} vs {e[tuple(i)]!r}" for i in idx]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} differ\n" + "\n".join(rows))


def assert_all_same(actual: tuple, expected: tuple, what: str = "") -> None:
    for i, (a, e) in enumerate(zip(actual, expected)):
        assert_same(a, e, f"{what}[{i}]")


@functools.cache
def _jit_ref(kind: str):
    fn = reference.fake_quant_ref if kind == "fake" else reference.quantize_ref
    return jax.jit(fn, static_argnames="fmt")


def ref(kind, x, fmt, **kw):
    return _jit_ref(kind)(x, fmt=fmt, **kw)


def hard_input(shape=(6, 100), dtype=jnp.float32, seed=0) -> jax.Array:
    """Normal data over a wide dynamic range plus a NaN block, an Inf block, a zero block and ties (numpy-built)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * np.exp2(rng.integers(-12, 12, (shape[0], 1))).astype(np.float32)
    x[0, 3], x[1, 40], x[2, :32] = np.nan, np.inf, 0.0
    x[3, :8] = [0.25, 0.75, 1.25, -2.5, 3.5, 5.0, -6.0, 7.0]
    return jnp.asarray(x).astype(dtype)


def normal(shape, seed=0, scale=1.0) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape).astype(np.float32) * np.float32(scale))


# ------------------------------------------------------------------------------------------------ backends
GPU_SHAPE = (256, 4128)  # 4128 = 129 blocks of 32: partial tiles and padding on a realistic grid


@dataclasses.dataclass(frozen=True)
class Backend:
    """A kernel backend with the grid it is tested on: tiny tiles and shapes when interpreted, real ones on a GPU."""

    name: str
    tiles: pq.Tiles

    def shape(self, cpu_shape=(6, 100)) -> tuple[int, int]:
        return cpu_shape if self.name == "interpret" else GPU_SHAPE

    def kw(self, **tile_fields) -> dict:
        """Keyword arguments for fake_quant_pallas / quantize_pallas: backend and tiles (fields replaced)."""
        return {"backend": self.name, "tiles": dataclasses.replace(self.tiles, **tile_fields)}


@pytest.fixture(
    params=[Backend("interpret", TINY), pytest.param(Backend("triton", pq.Tiles()), marks=gpu)], ids=lambda b: b.name
)
def backend(request) -> Backend:
    return request.param


BF16_FORMATS = ["mxfp8_e4m3", "mxfp6_e3m2", "mxfp4", "mxint8", "nvfp4", "int8_channel"]


@pytest.mark.parametrize(
    "name,dtype", [(f, jnp.float32) for f in FORMATS] + [(f, jnp.bfloat16) for f in BF16_FORMATS], ids=str
)
def test_fake_quant_kernel_matches_reference(name, dtype, backend):
    x, fmt = hard_input(backend.shape(), dtype), lb.get_format(name)
    assert_same(pq.fake_quant_pallas(x, fmt, **backend.kw()), ref("fake", x, fmt), f"{backend.name} {name}")


@pytest.mark.parametrize("name", FORMATS)
def test_quantize_kernel_matches_reference(name, backend):
    x, fmt = hard_input(backend.shape()), lb.get_format(name)
    assert_all_same(pq.quantize_pallas(x, fmt, **backend.kw()), ref("quant", x, fmt), f"{backend.name} {name}")


@pytest.mark.parametrize("name", FORMATS)
def test_reference_is_the_core(name):
    x, fmt, key = hard_input(), lb.get_format(name), jax.random.key(3)
    bits = kernels.sr_bits(key, x.shape, fmt, reference.axes_2d(fmt))  # (1,), or (0, 1) for 2-D tiles

    @jax.jit
    def core(v, k):
        q = lb.quantize(v, fmt, key=k)
        return lb.fake_quant(v, fmt), (q.codes, q.scales, q.tensor_scale)

    @jax.jit
    def refs(v, b):
        return reference.fake_quant_ref(v, fmt), reference.quantize_ref(v, fmt, rbits=b)

    (c_rne, c_q), (r_rne, r_q) = core(x, key), refs(x, bits)
    assert_same(r_rne, c_rne, "fake_quant rne")
    assert_all_same(r_q, c_q, "quantize sr")


@pytest.mark.parametrize("name", ["mxfp4", "mxint8", "mxfp6_e3m2", "nvfp4", "int8_channel"])
def test_stochastic_rounding_uses_the_given_bits(name, backend):
    x, fmt = hard_input(backend.shape(), jnp.bfloat16), lb.get_format(name)
    bits = kernels.sr_bits(jax.random.key(11), x.shape, fmt, 1)
    kw = backend.kw()
    assert_same(pq.fake_quant_pallas(x, fmt, rbits=bits, **kw), ref("fake", x, fmt, rbits=bits), "fake")
    assert_all_same(pq.quantize_pallas(x, fmt, rbits=bits, **kw), ref("quant", x, fmt, rbits=bits), "quant")


@pytest.mark.parametrize("name,h", [("mxfp4", 32), ("nvfp4", 16), ("nvint4", 32), ("fp8_channel", 16)])
def test_rotation_fused_or_not_matches_reference(name, h, backend):
    x, fmt = hard_input(backend.shape((6, 96)), jnp.bfloat16), lb.get_format(name)
    signs = kernels.rotation_signs(h, jax.random.key(5))
    bits = kernels.sr_bits(jax.random.key(6), x.shape, fmt, 1)
    kw = backend.kw()
    assert_same(pq.fake_quant_pallas(x, fmt, rotation=signs, **kw), ref("fake", x, fmt, rotation=signs))
    got = pq.quantize_pallas(x, fmt, rbits=bits, rotation=signs, **kw)
    assert_all_same(got, ref("quant", x, fmt, rbits=bits, rotation=signs))


@pytest.mark.parametrize("whole_row_max", [0, 128], ids=["tiled-rows", "whole-rows"])
@pytest.mark.parametrize("name", ["fp8_channel", "int8_channel"])
def test_per_channel_paths_match_reference(name, whole_row_max, backend):
    """Both per-channel paths: amax reduced outside + (rows, cols) tiles, and one whole (padded) row per tile
    (on a GPU, rows of 4128 exceed 128: both settings take the tiled path there, with its real tiles)."""
    x = hard_input(backend.shape((5, 80)), jnp.bfloat16)  # 80: rotations of 16 divide it, no tile does
    fmt = lb.get_format(name)
    tiles = backend.kw(whole_row_max=whole_row_max)
    bits = kernels.sr_bits(jax.random.key(6), x.shape, fmt, 1)
    signs = kernels.rotation_signs(16, jax.random.key(5))
    for kw in ({}, {"rbits": bits, "rotation": signs}):
        assert_same(pq.fake_quant_pallas(x, fmt, **tiles, **kw), ref("fake", x, fmt, **kw), f"fake {kw}")
        assert_all_same(pq.quantize_pallas(x, fmt, **tiles, **kw), ref("quant", x, fmt, **kw), f"quant {kw}")


def test_rotation_is_the_hadamard_matrix():
    x, key = normal((4, 64)), jax.random.key(9)

    @jax.jit
    def rotations(v):
        out = []
        for h in (16, 32):
            rot = reference.rotate_rows(v, kernels.rotation_signs(h, key))
            out += [rot, lb.hadamard.rotate(v, h, key), kernels._unrotate_2d(rot, kernels.rotation_signs(h, key))]
        return out

    for got, want, back in zip(*[iter(rotations(x))] * 3):
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
        np.testing.assert_allclose(back, x, rtol=0, atol=2e-6)


@pytest.mark.parametrize(
    "shape,name,tiles",
    [
        ((1, 32), "mxfp8", TINY),
        ((3, 7), "mxint4", TINY),  # shorter than one block
        ((17, 64), "nvfp4", pq.Tiles(blocks=16)),  # 68 block rows: a partial last tile
        ((5, 70), "int8_channel", pq.Tiles(rows=4, cols=32)),  # partial row and column tiles
        ((2, 300), "mxfp6_e2m3", pq.Tiles(blocks=8)),
    ],
)
def test_shapes_and_partial_tiles(shape, name, tiles):
    x = np.array(normal(shape, 2, 3.0))
    x[0, -1] = np.nan
    x = jnp.asarray(x)
    fmt = lb.get_format(name)
    assert_same(pq.fake_quant_pallas(x, fmt, tiles=tiles), ref("fake", x, fmt))
    assert_all_same(pq.quantize_pallas(x, fmt, tiles=tiles), ref("quant", x, fmt))


@pytest.mark.parametrize("name", ["mxfp4", "nvfp4", "fp8_channel"])
def test_nan_block_on_a_wide_array(name):
    """XLA:CPU's max reduction skips NaNs on wide arrays; the whole block must still come out NaN."""
    x, fmt = hard_input((4, 4128)), lb.get_format(name)
    want = ref("fake", x, fmt)
    block = 4128 if name == "fp8_channel" else fmt.block_size
    assert np.isnan(np.asarray(want[0, :block])).all() and not np.isnan(np.asarray(want[3, :block])).any()
    assert_same(pq.fake_quant_pallas(x, fmt, tiles=pq.Tiles(blocks=128, rows=2, cols=2048)), want)


@pytest.mark.parametrize("name", ["mxfp8_e5m2", "mxfp4", "mxint4", "nvfp4", "fp8_channel"])
def test_triton_rules_and_byte_outputs_on_cpu(name):
    """The GPU code path (primitive substitution, byte outputs converted outside) run in interpret mode."""
    x, fmt = hard_input(), lb.get_format(name)
    bits = kernels.sr_bits(jax.random.key(4), x.shape, fmt, 1) if name == "mxint4" else None
    kw = dict(tiles=TINY, backend="interpret_portable", rbits=bits)
    assert_same(pq.fake_quant_pallas(x, fmt, **kw), ref("fake", x, fmt, rbits=bits))
    assert_all_same(pq.quantize_pallas(x, fmt, byte_outputs=True, **kw), ref("quant", x, fmt, rbits=bits))


def test_substitution_rules_match_xla():
    v = jnp.array([0.5, 1.5, 2.5, -0.5, -3.5, 2.0**23 + 1, 1e30, jnp.inf, -jnp.inf, jnp.nan, -0.0, 0.49999997])
    rne = substitute.rne_exact(v, rounding_method=jax.lax.RoundingMethod.TO_NEAREST_EVEN)
    assert_same(jax.jit(lambda a: substitute.rne_exact(a, rounding_method=1))(v), jnp.round(v))
    assert_same(rne, jnp.round(v))
    w = jnp.roll(v, 3)
    for rule, op in [(substitute.max_rule, jnp.maximum), (substitute.min_rule, jnp.minimum)]:
        assert_same(rule(v, w), op(v, w))
    m = v.reshape(3, 4)
    assert_same(substitute.reduce_max_rule(m, axes=(1,)), jnp.max(m, axis=1))
    fn = substitute.substituted(
        lambda a: (jnp.round(jnp.clip(a, -3.0, 3.0)),), substitute.PORTABLE_RULES, plain_division=False
    )
    assert_same(fn(v)[0], jnp.round(jnp.clip(v, -3.0, 3.0)))


@pytest.mark.parametrize("name,axis", [("mxfp4", 0), ("nvint4", 1), ("fp8_channel", 0)])
def test_dispatch_any_axis_equals_core(name, axis):
    x = normal((40, 3, 36), 8, 4.0)
    fmt, key = lb.get_format(name), jax.random.key(12)
    tiles = pq.Tiles(blocks=32, rows=64, cols=64)
    got = lb.fake_quant(x, fmt, axis, key=key, impl="pallas")
    q = kernels.quantize(x, fmt, axis, impl="pallas", tiles=tiles)

    @jax.jit
    def core(v):
        qc = lb.quantize(v, fmt, axis)
        return lb.fake_quant(v, fmt, axis, key=key), qc, lb.dequantize(qc)

    want, qc, deq = core(x)
    assert_same(got, want, "fake_quant")
    assert (q.axis, q.shape, q.dtype, q.fmt) == (qc.axis, qc.shape, qc.dtype, qc.fmt)
    assert_all_same((q.codes, q.scales, q.tensor_scale), (qc.codes, qc.scales, qc.tensor_scale), "quantize")
    assert_same(jax.jit(lb.dequantize)(q), deq, "dequantize")


def test_dispatch_identity_auto_and_errors():
    x = jnp.arange(6.0).reshape(2, 3)
    assert kernels.resolve_impl("auto") == ("pallas" if ON_GPU else "xla")
    assert_same(lb.fake_quant(x, "bf16", impl="pallas"), lb.fake_quant(x, "bf16"))
    assert_same(kernels.fake_quant(x, "mxfp4", impl="auto"), lb.fake_quant(x, "mxfp4"))
    with pytest.raises(ValueError, match="impl must be one of"):
        lb.fake_quant(x, "mxfp4", impl="cuda")
    with pytest.raises(ValueError, match="rotation size"):
        kernels.fake_quant(x, "mxfp4", impl="pallas", rotation=jnp.ones(2))
    with pytest.raises(ValueError, match="backend must be one of"):
        pq.fake_quant_pallas(x, lb.get_format("mxfp4"), backend="cuda")


def test_gradients_pass_straight_through():
    x = normal((4, 32), 1)
    signs = kernels.rotation_signs(16, jax.random.key(2))
    cot = normal(x.shape, 3)

    @jax.jit
    def grads(v, c):
        g = jax.grad(lambda u: jnp.sum(kernels.fake_quant(u, "nvfp4", impl="pallas", tiles=TINY) * c))(v)
        _, vjp = jax.vjp(lambda u: kernels.fake_quant(u, "mxfp8", rotation=signs, impl="pallas", tiles=TINY), v)
        _, vjp_rot = jax.vjp(lambda u: reference.rotate_rows(u, signs), v)
        return g, vjp(c)[0], vjp_rot(c)[0]

    g, g_rot, want_rot = grads(x, cot)
    assert_same(g, cot)
    np.testing.assert_allclose(g_rot, want_rot, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------ GPU only
@pytest.mark.parametrize("name", FORMATS)
def test_gpu_xla_reference_matches_cpu(name):
    x, fmt = hard_input(GPU_SHAPE), lb.get_format(name)
    cpu = jax.devices("cpu")[0]
    on_cpu = jax.jit(lambda v: reference.fake_quant_ref(v, fmt), device=cpu)(jax.device_put(x, cpu))
    assert_same(jax.device_get(ref("fake", x, fmt)), jax.device_get(on_cpu), name)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", FORMATS)
def test_gpu_kernel_matches_cpu_reference(name, dtype):
    """The compiled kernel against the CPU's XLA reference (the oracle-tested one), independent of XLA:GPU."""
    x, fmt = hard_input(GPU_SHAPE, dtype), lb.get_format(name)
    cpu = jax.devices("cpu")[0]
    want = jax.jit(lambda v: reference.fake_quant_ref(v, fmt), device=cpu)(jax.device_put(x, cpu))
    assert_same(jax.device_get(pq.fake_quant_pallas(x, fmt, backend="triton")), jax.device_get(want), name)


def test_gpu_auto_dispatch_uses_pallas():
    x = hard_input(GPU_SHAPE)
    assert kernels.resolve_impl("auto") == "pallas"
    assert_same(lb.fake_quant(x, "nvfp4", impl="auto"), ref("fake", x, lb.get_format("nvfp4")))


for _name, _fn in list(globals().items()):
    if _name.startswith("test_gpu_"):
        globals()[_name] = functools.reduce(lambda f, mark: mark(f), gpu, _fn)


@pytest.mark.parametrize("name", ["fp8_channel", "int8_channel"])
def test_per_tensor_fp32_scale_is_the_cores(name):
    """Per-tensor FP32 scales from the kernel path equal the core's bit for bit (a broadcast amax once let XLA
    divide by a reciprocal: 1 ulp off in about half of random (3, 40) arrays)."""
    fmt = lb.get_format(name, block_size="tensor")
    xs = np.stack([np.random.default_rng(s).standard_normal((3, 40), dtype=np.float32) for s in range(12)])

    @jax.jit
    def both(x):
        return [(lb.quantize(v, fmt).scales, kernels.quantize(v, fmt, impl="pallas").scales) for v in x]

    for core, kern in both(xs):
        assert_same(kern, core, f"{name} per-tensor scale")
