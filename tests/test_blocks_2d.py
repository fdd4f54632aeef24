"""2-D block formats (tiles): tile quantization against independent oracles, transpose symmetry, QArray round trips,
the Pallas kernels, clear errors, and tiles through qdot_general (forward and backward copies of each tensor agree).

Oracles: conftest's gfloat 0.5.2 MX oracle (`mx_reference`, float64) and its numpy float32 NV oracle
(`nv_reference`), applied to tiles laid out as rows of r * c elements (zero-padded to whole tiles, cropped).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import lowbit_jax as lb
from tests.conftest import assert_same_bits, mx_reference, mx_scale_exponent, nv_reference
from tests.test_qdot import vjp_at

HI = lax.Precision.HIGHEST
DN_2D = (((1,), (0,)), ((), ()))
NV_8X16 = "nvfp4:block_size=8x16"  # a non-square NV tile (8 rows x 16 columns)


# ------------------------------------------------------------------------------------------------ numpy oracles
def to_tile_rows(x: np.ndarray, r: int, c: int) -> np.ndarray:
    """A 2-D array zero-padded to whole r x c tiles -> (tiles, r * c), tiles in row-major tile order."""
    nr, nc = -(-x.shape[0] // r), -(-x.shape[1] // c)
    xp = np.pad(x, [(0, nr * r - x.shape[0]), (0, nc * c - x.shape[1])])
    return xp.reshape(nr, r, nc, c).transpose(0, 2, 1, 3).reshape(nr * nc, r * c)


def from_tile_rows(rows: np.ndarray, shape: tuple[int, int], r: int, c: int) -> np.ndarray:
    """Inverse of to_tile_rows, cropped to `shape`."""
    nr, nc = -(-shape[0] // r), -(-shape[1] // c)
    return rows.reshape(nr, nc, r, c).transpose(0, 2, 1, 3).reshape(nr * r, nc * c)[: shape[0], : shape[1]]


def mx_tile_reference(x: np.ndarray, name: str, r: int, c: int) -> tuple[np.ndarray, np.ndarray]:
    """(fake-quantized x, power-of-two scales X per tile (n_row_tiles, n_col_tiles)) of an MX format (ceil rule),
    r x c tiles over x's two axes, float64 with gfloat elements."""
    rows = to_tile_rows(np.asarray(x, np.float64), r, c)
    y = from_tile_rows(mx_reference(rows, name, "ceil", block=r * c), x.shape, r, c)
    finite = np.isfinite(rows).all(axis=1)
    amax = np.abs(np.where(np.isfinite(rows), rows, 0.0)).max(axis=1)
    scale = np.where(finite, 2.0 ** mx_scale_exponent(amax, name, "ceil"), np.nan)
    return y, scale.reshape(-(-x.shape[0] // r), -(-x.shape[1] // c))


def nv_tile_reference(x: np.ndarray, r: int, c: int) -> tuple[np.ndarray, np.ndarray, np.float32]:
    """(fake-quantized x, E4M3 tile scales (n_row_tiles, n_col_tiles), tensor scale g) of NVFP4 with r x c tiles."""
    y_rows, s, g = nv_reference(to_tile_rows(np.asarray(x, np.float32), r, c), "fp", block=r * c)
    return from_tile_rows(y_rows, x.shape, r, c), s.reshape(-(-x.shape[0] // r), -(-x.shape[1] // c)), g


def tiled_data(shape, r: int, c: int, seed: int, lo: int, hi: int) -> np.ndarray:
    """float32 Gaussian / Student-t entries, each r x c tile with its own power-of-two magnitude in [2^lo, 2^hi)."""
    rng = np.random.default_rng(seed)
    vals = np.where(rng.random(shape) < 0.5, rng.standard_normal(shape), rng.standard_t(2, size=shape))
    nr, nc = -(-shape[0] // r), -(-shape[1] // c)
    mag = 2.0 ** rng.integers(lo, hi, size=(nr, nc)).repeat(r, 0).repeat(c, 1)[: shape[0], : shape[1]]
    return (vals * mag).astype(np.float32)


def e8m0_values(scales) -> np.ndarray:
    return np.asarray(scales).astype(np.float32)


def with_special_tiles(x: np.ndarray, r: int, c: int) -> np.ndarray:
    """x with an all-zero tile (row 0, column 1) and an Inf in the last tile (which becomes all NaN)."""
    x = x.copy()
    x[:r, c : 2 * c] = 0.0
    x[-1, -1] = np.inf
    return x


# Shared test arrays (not multiples of their tiles); tests reuse them so that jitted quantizers compile once.
MXINT_8X16 = "mxint8:block_size=8x16"
X_MXFP8 = with_special_tiles(tiled_data((70, 45), 32, 32, seed=1, lo=-20, hi=20), 32, 32)
X_MXINT = with_special_tiles(tiled_data((21, 35), 8, 16, seed=2, lo=-20, hi=20), 8, 16)
X_NV = tiled_data((40, 72), 16, 16, seed=3, lo=-6, hi=6)  # wide enough for subnormal E4M3 tile scales
X_NV_8X16 = tiled_data((37, 50), 8, 16, seed=4, lo=-6, hi=6)
X_NV[:16, :16] = X_NV_8X16[:8, :16] = 0.0


# ------------------------------------------------------------------------------------------------ tile oracles
@pytest.mark.parametrize("spec,gname,x", [("mxfp8_2d", "mxfp8_e4m3", X_MXFP8), (MXINT_8X16, "mxint8", X_MXINT)])
def test_mx_tiles_match_gfloat_oracle(spec, gname, x):
    fmt = lb.get_format(spec)
    r, c = fmt.block_size
    y_ref, s_ref = mx_tile_reference(x, gname, r, c)
    assert_same_bits(lb.fake_quant(x, fmt), y_ref.astype(np.float32), f"{spec} fake_quant")
    q = lb.quantize(x, fmt)
    assert q.axis == (0, 1) and q.scales.shape == s_ref.shape
    assert_same_bits(e8m0_values(q.scales), s_ref.astype(np.float32), f"{spec} scales")
    assert_same_bits(lb.dequantize(q), y_ref.astype(np.float32), f"{spec} dequantize")
    # axis=(1, 0): the tile's r rows run along axis 1, i.e. the tile quantization of x.T, transposed back
    y_t = mx_tile_reference(np.ascontiguousarray(x.T), gname, r, c)[0].T
    assert_same_bits(lb.fake_quant(x, fmt, axis=(1, 0)), y_t.astype(np.float32), f"{spec} axis=(1, 0)")


@pytest.mark.parametrize("spec,x", [("nvfp4_2d", X_NV), (NV_8X16, X_NV_8X16)])
def test_nv_tiles_match_numpy_oracle(spec, x):
    fmt = lb.get_format(spec)
    y_ref, s_ref, g_ref = nv_tile_reference(x, *fmt.block_size)
    assert_same_bits(lb.fake_quant(x, fmt), y_ref, f"{spec} fake_quant")
    q = lb.quantize(x, fmt)
    assert q.scales.dtype == jnp.float8_e4m3fn and q.scales.shape == s_ref.shape
    assert_same_bits(np.asarray(q.scales).astype(np.float32), s_ref, f"{spec} tile scales")
    assert_same_bits(q.tensor_scale, g_ref, f"{spec} tensor scale")
    assert_same_bits(lb.dequantize(q), y_ref, f"{spec} dequantize")


def test_tiles_over_outer_axes_of_a_3d_array():
    """axis=(0, 2) on a 3-D array tiles every x[:, j, :] slice on its own (r along axis 0), axis=(2, 0) puts r
    along axis 2 (MX: per-tile scales only, so slices are independent); the QArray round trip is exact."""
    fmt = lb.get_format(MXINT_8X16)
    x = np.stack([tiled_data((21, 35), 8, 16, seed=s, lo=-8, hi=8) for s in range(3)], axis=1)
    want = np.stack([mx_tile_reference(x[:, j, :], "mxint8", 8, 16)[0] for j in range(3)], axis=1)
    assert_same_bits(lb.fake_quant(x, fmt, axis=(0, 2)), want.astype(np.float32), "axis=(0, 2)")
    want_t = np.stack([mx_tile_reference(x[:, j, :].T, "mxint8", 8, 16)[0].T for j in range(3)], axis=1)
    assert_same_bits(lb.fake_quant(x, fmt, axis=(-1, 0)), want_t.astype(np.float32), "axis=(-1, 0)")
    q = lb.quantize(x, fmt, axis=(0, 2))
    assert q.axis == (0, 2) and q.scales.shape == (3, 3, 3) and q.codes.shape == (24, 3, 48)
    assert_same_bits(lb.dequantize(q), want.astype(np.float32), "3-D round trip")


# ------------------------------------------------------------------------------------------------ symmetry, QArray
@pytest.mark.parametrize("name,x", [("nvfp4_2d", X_NV), ("mxfp8_2d", X_MXFP8)])
def test_square_tiles_commute_with_transpose(name, x):
    assert_same_bits(np.asarray(lb.fake_quant(x, name)).T, lb.fake_quant(np.ascontiguousarray(x.T), name), name)


def test_non_square_tiles_commute_with_transpose_when_the_tile_is_transposed():
    x, xt = X_NV_8X16, np.ascontiguousarray(X_NV_8X16.T)
    assert_same_bits(np.asarray(lb.fake_quant(x, NV_8X16, axis=(1, 0))).T, lb.fake_quant(xt, NV_8X16), NV_8X16)
    assert not np.array_equal(np.asarray(lb.fake_quant(x, NV_8X16)).T, np.asarray(lb.fake_quant(xt, NV_8X16)))


@pytest.mark.parametrize("axis", [(0, 1), (-2, -1), (1, 0)])
def test_qarray_round_trip_is_fake_quant(axis):
    """QArray.axis is the (normalised) pair; scales hold (tiles along axis[0], tiles along axis[1])."""
    fmt, x = lb.get_format(NV_8X16), X_NV_8X16
    q = lb.quantize(x, fmt, axis=axis)
    norm = tuple(a % 2 for a in axis)
    assert q.axis == norm
    tile = dict(zip(norm, fmt.block_size))  # r along axis[0], c along axis[1]
    assert q.scales.shape == (-(-37 // tile[0]), -(-50 // tile[1]))
    assert_same_bits(lb.dequantize(q), lb.fake_quant(x, fmt, axis=axis), f"round trip {axis}")


# ------------------------------------------------------------------------------------------------ Pallas
SLOW = pytest.mark.slow  # each interpreted Pallas compilation costs seconds (more with stochastic rounding)
NV_T = (NV_8X16, X_NV_8X16, (1, 0))  # a non-square tile over transposed axes
PALLAS_FAKE_QUANT = [
    ("nvfp4_2d", X_NV, (-2, -1), None),
    ("mxfp8_2d", X_MXFP8, (-2, -1), 8),
    (*NV_T, None),
    pytest.param("nvfp4_2d", X_NV, (-2, -1), 9, marks=SLOW),
    pytest.param(*NV_T, 10, marks=SLOW),
]
PALLAS_QUANTIZE = [
    ("nvfp4_2d", X_NV, (-2, -1), None),
    ("mxfp8_2d", X_MXFP8, (-2, -1), None),
    (*NV_T, None),
    pytest.param("mxfp8_2d", X_MXFP8, (-2, -1), 11, marks=SLOW),
    pytest.param(*NV_T, 12, marks=SLOW),
]


@pytest.mark.parametrize("name,x,axis,seed", PALLAS_FAKE_QUANT)
def test_pallas_fake_quant_of_tiles_equals_xla(name, x, axis, seed):
    """Interpreted Pallas kernels give the XLA path's bits for tiles (small arrays: one grid step); seed: SR key."""
    key = None if seed is None else jax.random.key(seed)
    y = lb.fake_quant(x, name, axis, key=key, impl="pallas")
    assert_same_bits(y, lb.fake_quant(x, name, axis, key=key), f"{name} fake_quant")
    if key is not None:  # the key is used
        assert not np.array_equal(np.asarray(y), np.asarray(lb.fake_quant(x, name, axis)), equal_nan=True)


@pytest.mark.parametrize("name,x,axis,seed", PALLAS_QUANTIZE)
def test_pallas_quantize_of_tiles_equals_xla(name, x, axis, seed):
    key = None if seed is None else jax.random.key(seed)
    qp, qx = lb.quantize(x, name, axis, key=key, impl="pallas"), lb.quantize(x, name, axis, key=key)
    assert qp.axis == qx.axis and qp.codes.dtype == qx.codes.dtype and qp.scales.shape == qx.scales.shape
    for a, b in [(qp.codes, qx.codes), (qp.scales, qx.scales)]:
        np.testing.assert_array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
    if qx.tensor_scale is not None:
        assert_same_bits(qp.tensor_scale, qx.tensor_scale, "tensor scale")


# ------------------------------------------------------------------------------------------------ errors
def test_clear_errors():
    x = np.ones((8, 8), np.float32)
    with pytest.raises(ValueError, match=r"\(-2, -1\)"):
        lb.fake_quant(x, "nvfp4_2d", axis=-1)
    with pytest.raises(ValueError, match="rank 1"):
        lb.quantize(np.ones(32, np.float32), "mxfp8_2d")
    with pytest.raises(ValueError, match="same axis twice"):
        lb.fake_quant(x, "nvfp4_2d", axis=(1, -1))
    with pytest.raises(ValueError, match="tile"):
        lb.QDotConfig.direct_cast("nvfp4_2d", rotation=16)
    with pytest.raises(ValueError, match="w_dx"):  # a rotated backward GEMM with a tiled operand
        lb.QDotConfig(x_fwd="mxfp4", w_fwd="mxfp4", w_dx="mxfp8_2d", rotation=16, rotate_grads=True)
    lb.QDotConfig(x_fwd="mxfp4", w_fwd="mxfp4", w_dx="mxfp8_2d", rotation=16)  # backward GEMMs are not rotated


# ------------------------------------------------------------------------------------------------ qdot_general
def eye(n, m=None):
    return jnp.asarray(np.eye(n, m, dtype=np.float32))


# The tile orientation of each tensor of Y = X (M, K) . W (K, N): r along X's M, W's N and dY's M.
ORIENT = {"x": (0, 1), "w": (1, 0), "dy": (0, 1)}


@pytest.mark.parametrize("tensor", ["x", "w", "dy"])
def test_each_tensor_has_one_tiling_in_both_its_gemms(tensor):
    """With one tensor quantized (non-square tile) and one-hot selector partners, the two GEMMs it enters
    return its two quantized copies exactly: they are one array, transposed, and lb.fake_quant's tiles."""
    fmt = lb.get_format(NV_8X16)
    t = jnp.asarray(tiled_data((40, 24) if tensor != "x" else (24, 40), 8, 16, seed=9, lo=-3, hi=3))
    names = {"x": ("x_fwd", "x_dw"), "w": ("w_fwd", "w_dx"), "dy": ("dy_dx", "dy_dw")}[tensor]
    cfg = lb.QDotConfig(**dict.fromkeys(names, fmt))
    fn = lambda a, b: lb.qdot_general(a, b, DN_2D, cfg)
    if tensor == "x":  # X (24, 40), W = I: Y = Q_fwd(X); dY = [I | 0]: dW[:, :24] = Q_dw(X)^T
        y, (_, dw) = vjp_at(fn, t, eye(40), eye(24, 40))
        first, second = y, dw[:, :24].T
    elif tensor == "w":  # X = I: Y = Q_fwd(W) (40, 24); dY = [I; 0]: dX[:24] = Q_dx(W)^T
        y, (dx, _) = vjp_at(fn, eye(40), t, eye(40, 24))
        first, second = y, dx[:24].T
    else:  # X = I, W = [I; 0]: dX[:, :24] = Q_dx(dY), dW = Q_dw(dY) (40, 24)
        _, (dx, dw) = vjp_at(fn, eye(40), eye(40, 24), t)
        first, second = dx[:, :24], dw
    want = np.asarray(lb.fake_quant(t, fmt, axis=ORIENT[tensor]))
    np.testing.assert_array_equal(np.asarray(first), want)
    np.testing.assert_array_equal(np.asarray(second), want)


def f64(v) -> np.ndarray:
    return np.asarray(v, np.float64)


def gemm_f64(spec: str, a, b, bias=None) -> tuple[np.ndarray, np.ndarray]:
    """(einsum(spec, a, b) [+ bias] in float64, the float32 error bound of computing it): k u sum|a_i b_i| for a
    k-term dot product plus one rounding of the result (and of the bias add), u = 2^-24."""
    a, b = f64(a), f64(b)
    want, mag = np.einsum(spec, a, b), np.einsum(spec, np.abs(a), np.abs(b))
    ins, out = spec.split("->")
    dims = dict(zip(ins.replace(",", ""), a.shape + b.shape))
    k = int(np.prod([n for letter, n in dims.items() if letter not in out]))
    bound = (k + 1) * 2.0**-24 * mag
    if bias is not None:
        want = want + f64(bias)
        bound = bound + 2.0**-24 * np.abs(want)
    return want, bound


def assert_gemm_close(actual, spec: str, a, b, bias=None, shape=None) -> None:
    """actual equals the float64 GEMM within float32 rounding (gemm_f64's bound), optionally reshaped."""
    want, bound = gemm_f64(spec, a, b, bias)
    shape = want.shape if shape is None else shape
    err = np.abs(f64(actual) - want.reshape(shape))
    assert (err <= bound.reshape(shape)).all(), f"max excess {np.max(err - bound.reshape(shape))}"


def test_general_dims_tile_the_merged_free_and_contracting_dims():
    """Batch dim 0; X (b, t, k1, k2) contracts (2, 3) with W (b, k2, k1, o1, o2) dims (2, 1); W's free dims
    (o1, o2) merge into its tile rows, the contracting dims merge in dimension_numbers order into columns."""
    fmt = lb.get_format(NV_8X16)
    rng = np.random.default_rng(11)
    x, w, dy = (
        jnp.asarray(rng.standard_normal(s).astype(np.float32)) for s in [(2, 6, 4, 8), (2, 8, 4, 3, 5), (2, 6, 3, 5)]
    )
    dn = (((2, 3), (2, 1)), ((0,), (0,)))
    y, (dx, dw) = vjp_at(lambda a, b: lb.qdot_general(a, b, dn, lb.QDotConfig.train(fmt)), x, w, dy)
    x_m = x.reshape(2, 6, 32)  # (b, tokens, K)
    w_m = jnp.transpose(w, (0, 3, 4, 2, 1)).reshape(2, 15, 32)  # (b, out features, K), K = (k1, k2) as in X
    dy_m = dy.reshape(2, 6, 15)
    qx, qw, qdy = (f64(lb.fake_quant(v, fmt, axis=(-2, -1))) for v in (x_m, w_m, dy_m))
    assert_gemm_close(y, "btk,bok->bto", qx, qw, shape=y.shape)
    assert_gemm_close(dx, "bto,bok->btk", qdy, qw, shape=x.shape)
    assert_gemm_close(jnp.transpose(dw, (0, 3, 4, 2, 1)), "btk,bto->bok", qx, qdy, shape=(2, 3, 5, 4, 8))


# ------------------------------------------------------------------------------------------------ interceptor
class TinyMLP(nn.Module):
    @nn.compact
    def __call__(self, x):
        h = nn.Dense(32, name="fc")(x)
        return nn.Dense(16, name="head")(nn.relu(h)), h


def test_interceptor_trains_through_2d_tiles():
    """lb.quantized with train:nvfp4_2d (QDotConfig.train("nvfp4_2d") in every Dense): each forward GEMM and the
    head's dW GEMM are dots of NVFP4-tiled operands (numpy oracle), and the gradients are finite."""
    rng = np.random.default_rng(12)
    arr = lambda *s: jnp.asarray(rng.standard_normal(s).astype(np.float32))
    x = arr(8, 24)
    params = {
        "params": {"fc": {"kernel": arr(24, 32), "bias": arr(32)}, "head": {"kernel": arr(32, 16), "bias": arr(16)}}
    }
    reports = []

    def loss(p):
        with lb.quantized([(".*", "train:nvfp4_2d")]) as report:
            y, h = TinyMLP().apply(p, x)
        reports.append(report)
        return jnp.sum(y**2), (y, h)

    (_, (y, h)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
    assert reports[0].quantized == {"fc": "train(nvfp4_2d)", "head": "train(nvfp4_2d)"}
    q = lambda v: f64(nv_tile_reference(np.asarray(v, np.float32), 16, 16)[0])  # square tiles: any orientation
    p = params["params"]
    assert_gemm_close(h, "tk,ko->to", q(x), q(p["fc"]["kernel"]), p["fc"]["bias"])
    a = np.maximum(np.asarray(h), np.float32(0))
    assert_gemm_close(y, "tk,ko->to", q(a), q(p["head"]["kernel"]), p["head"]["bias"])
    dy = 2 * np.asarray(y)  # d sum(y^2) / dy, exact in float32
    assert_gemm_close(grads["params"]["head"]["kernel"], "tk,to->ko", q(a), q(dy))
    leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
    assert len(leaves) == 4 and all(np.isfinite(g).all() and np.abs(g).sum() > 0 for g in leaves)
