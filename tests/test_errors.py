"""Bad input raises a clear error, never a silently wrong array (docs/formats.md, section "Edge cases")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax.formats import Format, fp, int_

X = jnp.ones((2, 32), jnp.float32)


def test_unknown_format_name_lists_valid_names():
    with pytest.raises(ValueError, match="unknown format 'mxfp9'") as err:
        lb.get_format("mxfp9")
    for name in lb.list_formats() + ["mxfp8", "mxfp6"]:
        assert name in str(err.value)
    assert "did you mean" in str(err.value)
    with pytest.raises(ValueError, match="valid names"):
        lb.quantize(X, "int3")


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "row", None])
def test_bad_block_size(bad):
    with pytest.raises(ValueError, match="block_size"):
        lb.get_format("mxfp8", block_size=bad)


@pytest.mark.parametrize(("e", "m"), [(4, 4), (5, 3), (7, 1), (0, 3), (2, -1)])
def test_bad_fp_element(e, m):
    with pytest.raises(ValueError, match=r"e \+ m \+ 1 <= 8|e >= 1|m >= 0"):
        fp(e, m)


def test_bad_special_convention():
    with pytest.raises(ValueError, match="special"):
        fp(4, 3, "fnuz")
    with pytest.raises(ValueError, match="exponent bits"):
        fp(1, 6, "ieee")
    with pytest.raises(ValueError, match="mantissa bit"):
        fp(5, 0, "fn")


@pytest.mark.parametrize("bits", [1, 9, 0, 4.0])
def test_bad_int_element(bits):
    with pytest.raises(ValueError, match="INT"):
        int_(bits)


def test_bad_choices():
    with pytest.raises(ValueError, match="scale_rounding"):
        lb.get_format("mxfp8", scale_rounding="nearest")
    with pytest.raises(ValueError, match="int_range"):
        lb.get_format("mxint8", int_range="unsigned")
    with pytest.raises(ValueError, match="int_range applies to INT"):
        lb.get_format("mxfp8", int_range="asymmetric")
    with pytest.raises(ValueError, match="scale_dtype"):
        lb.get_format("mxfp8", scale_dtype="float16")
    with pytest.raises(ValueError, match="scale must be"):
        lb.get_format("mxfp8", scale="e5m2")
    with pytest.raises(ValueError, match="E4M3 block scale"):
        lb.get_format("nvfp4", block_size="tensor")
    with pytest.raises(ValueError, match="identity"):
        lb.get_format("bf16", block_size=32)
    with pytest.raises(ValueError, match="identity formats"):
        Format("x", None, scale="ue8m0")


@pytest.mark.parametrize("override", ["blocksize", "rounding", "dtype", "elem"])
def test_unknown_override(override):
    with pytest.raises(ValueError, match="unknown override") as err:
        lb.get_format("mxfp8", **{override: 1})
    assert "block_size" in str(err.value)  # the message lists the allowed overrides


@pytest.mark.parametrize("dtype", [jnp.int32, jnp.int8, jnp.uint8, jnp.bool_, jnp.complex64])
def test_non_real_float_input(dtype):
    x = jnp.zeros((2, 32), dtype)
    for fn in (lb.quantize, lb.fake_quant):
        with pytest.raises(TypeError, match="floating-point"):
            fn(x, "mxfp8")
    with pytest.raises(TypeError, match="floating-point"):
        lb.quantize(np.arange(32), "mxint8")


@pytest.mark.parametrize("axis", [2, -3, 10, 1.0])
def test_out_of_range_axis(axis):
    for fn in (lb.quantize, lb.fake_quant):
        with pytest.raises(ValueError, match="axis"):
            fn(X, "mxfp4", axis=axis)


def test_scalar_input_and_bad_format_type():
    with pytest.raises(ValueError, match="scalar"):
        lb.quantize(jnp.float32(1.0), "mxfp4")
    with pytest.raises(TypeError, match="Format"):
        lb.quantize(X, 3)


def test_errors_also_under_jit():
    """Validation happens at trace time, so jit raises the same errors."""
    with pytest.raises(TypeError, match="floating-point"):
        jax.jit(lambda v: lb.fake_quant(v, "mxfp8"))(jnp.zeros((2, 32), jnp.int32))
    with pytest.raises(ValueError, match="axis"):
        jax.jit(lambda v: lb.fake_quant(v, "mxfp8", axis=5))(X)
