"""Formats as data: paper Table 1 goldens, element constants against gfloat / ml_dtypes, names, overrides."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import ml_dtypes
import pytest
from gfloat.formats import (
    format_info_ocp_e2m1,
    format_info_ocp_e2m3,
    format_info_ocp_e3m2,
    format_info_ocp_e4m3,
    format_info_ocp_e5m2,
)

import lowbit_jax as lb
from lowbit_jax.formats import FPElem, IntElem, fp, int_

# Paper Table 1 (§2.4): format -> (element, block, max, min, dynamic range, scale-1, scale-2).
# "Min" is the smallest non-zero magnitude; MXFP8's dynamic range is 1.75 x 2^17 = 229376 = 448 / 2^-9.
TABLE1 = {
    "mxfp8": ("e4m3", 32, 448.0, 2.0**-9, 1.75 * 2**17, "ue8m0"),
    "mxint8": ("int8", 32, 127.0, 1.0, 127.0, "ue8m0"),
    "mxfp6": ("e2m3", 32, 7.5, 0.125, 60.0, "ue8m0"),
    "mxint6": ("int6", 32, 31.0, 1.0, 31.0, "ue8m0"),
    "mxfp4": ("e2m1", 32, 6.0, 0.5, 12.0, "ue8m0"),
    "mxint4": ("int4", 32, 7.0, 1.0, 7.0, "ue8m0"),
    "nvfp4": ("e2m1", 16, 6.0, 0.5, 12.0, "e4m3"),
    "nvint4": ("int4", 16, 7.0, 1.0, 7.0, "e4m3"),
}


@pytest.mark.parametrize("name", list(TABLE1))
def test_paper_table1(name):
    elem_name, block, fmax, fmin, dyn, scale = TABLE1[name]
    fmt = lb.get_format(name)
    assert fmt.elem.name == elem_name and fmt.block_size == block and fmt.scale == scale
    assert fmt.qmax == fmax and fmt.elem.min_subnormal == fmin and fmt.elem.dynamic_range == dyn
    assert fmt.scale_rounding == "ceil" and fmt.scale_dtype == "float32"  # the paper's Eq. 9, FP32 arithmetic


GFLOAT = [
    (fp(4, 3), format_info_ocp_e4m3),
    (fp(5, 2), format_info_ocp_e5m2),
    (fp(2, 3), format_info_ocp_e2m3),
    (fp(3, 2), format_info_ocp_e3m2),
    (fp(2, 1), format_info_ocp_e2m1),
]


@pytest.mark.parametrize(("elem", "fi"), GFLOAT, ids=[e.name for e, _ in GFLOAT])
def test_fp_constants_match_gfloat(elem, fi):
    """max, emax, smallest subnormal and smallest normal as gfloat 0.5.2 defines the OCP elements."""
    assert (elem.max, elem.emax, elem.min_subnormal, elem.min_normal) == (
        fi.max,
        fi.emax,
        fi.smallest_subnormal,
        fi.smallest_normal,
    )
    assert elem.bits == fi.k and elem.man_bits == fi.precision - 1 and elem.bias == fi.bias


ML = [
    (fp(4, 3), ml_dtypes.float8_e4m3fn),
    (fp(5, 2), ml_dtypes.float8_e5m2),
    (fp(2, 3), ml_dtypes.float6_e2m3fn),
    (fp(3, 2), ml_dtypes.float6_e3m2fn),
    (fp(2, 1), ml_dtypes.float4_e2m1fn),
    (fp(3, 4), ml_dtypes.float8_e3m4),
    (fp(4, 3, "ieee"), ml_dtypes.float8_e4m3),
]


@pytest.mark.parametrize(("elem", "dtype"), ML, ids=[f"{e.name}_{e.special}" for e, _ in ML])
def test_fp_constants_match_ml_dtypes(elem, dtype):
    info = ml_dtypes.finfo(dtype)
    assert elem.max == float(info.max)
    assert elem.min_normal == float(info.smallest_normal)
    assert elem.min_subnormal == float(info.smallest_subnormal)


def test_default_special_conventions():
    """OCP / ml_dtypes: E4M3 'fn', other 8-bit formats IEEE-like, narrower formats have no specials."""
    assert fp(4, 3).special == "fn" and fp(5, 2).special == "ieee" and fp(3, 4).special == "ieee"
    assert fp(2, 3).special == fp(3, 2).special == fp(2, 1).special == "none"
    assert fp(1, 6).special == "none"  # 8 bits, but one exponent bit cannot reserve a top binade
    assert all(fp(e, m).max > 0 for e in range(1, 8) for m in range(0, 8 - e))


@pytest.mark.parametrize("bits", range(2, 9))
def test_int_element_ranges(bits):
    """Symmetric [-(2^(b-1)-1), 2^(b-1)-1] by default (paper §3.2, App. B.2 Eq. 18); asymmetric adds -2^(b-1)."""
    sym, asym = int_(bits), int_(bits, "asymmetric")
    assert (sym.min, sym.max) == (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1)
    assert (asym.min, asym.max) == (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    assert sym.emax == bits - 2  # OCP: MXINT8 = int8 x 2^-6 has element emax 0, i.e. floor(log2 127) = 6 here


def test_storage_dtypes_of_elements():
    assert fp(4, 3).storage_dtype == jnp.float8_e4m3fn and fp(5, 2).storage_dtype == jnp.float8_e5m2
    assert fp(2, 1).storage_dtype == jnp.float4_e2m1fn
    assert fp(2, 3).storage_dtype == fp(3, 2).storage_dtype == fp(3, 4).storage_dtype == jnp.uint8
    assert int_(8).storage_dtype == int_(6).storage_dtype == jnp.int8
    assert int_(4).storage_dtype == int_(3).storage_dtype == jnp.int4 and int_(2).storage_dtype == jnp.int2


NAMES = {
    "mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e2m3", "mxfp6_e3m2", "mxfp4", "mxint8", "mxint6", "mxint4",
    "nvfp4", "nvint4", "fp8_channel", "int8_channel", "bf16", "fp32",
    "nvfp4_2d", "mxfp8_2d", "nf4", "sf4",
    "nvfp6", "if4_int", "if6_int", "nvfp4_to6", "nvfp4_to4",  # adaptive candidates
    "if4", "if6", "mxif4", "mxif6", "mxif8", "nvfp4_4over6",  # adaptive formats
}  # fmt: skip


def test_list_formats_and_aliases():
    """The named formats (docs/formats.md, section "The named formats"); mxfp8 = mxfp8_e4m3, mxfp6 = mxfp6_e2m3."""
    assert set(lb.list_formats()) == NAMES
    assert lb.get_format("mxfp8") == lb.get_format("mxfp8_e4m3")
    assert lb.get_format("mxfp6") == lb.get_format("mxfp6_e2m3")
    assert lb.get_format("mxfp4_e2m1") == lb.get_format("mxfp4")
    assert lb.get_format("mxfp6_e3m2").elem == fp(3, 2) and lb.get_format("mxfp8_e5m2").elem == fp(5, 2)
    ch = lb.get_format("fp8_channel")
    assert ch.block_size == lb.PER_CHANNEL and ch.scale == "fp32" and ch.elem == fp(4, 3)
    assert lb.get_format("int8_channel").elem == int_(8)
    assert lb.get_format("bf16").is_identity and lb.get_format("fp32").is_identity


def test_overrides():
    fmt = lb.get_format("mxint8", block_size=64, scale_rounding="floor", int_range="asymmetric")
    assert fmt.block_size == 64 and fmt.scale_rounding == "floor" and fmt.elem == int_(8, "asymmetric")
    assert fmt.name == "mxint8" and "block_size=64" in fmt.label and "int_range=asymmetric" in fmt.label
    assert lb.get_format("mxint8", scale_dtype="bfloat16").scale_dtype == "bfloat16"
    assert lb.get_format("mxfp4", block_size=-1).block_size == lb.PER_CHANNEL
    assert lb.get_format("mxfp4", block_size="tensor").block_size == lb.PER_TENSOR
    assert lb.get_format("nvfp4", block_size=32).scale == "e4m3"
    assert lb.get_format("mxfp4").label == "mxfp4"
    assert lb.get_format(lb.get_format("mxfp4"), block_size=16).block_size == 16


def test_formats_are_frozen_hashable_values():
    fmt = lb.get_format("mxfp4")
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.block_size = 16
    with pytest.raises(dataclasses.FrozenInstanceError):
        fmt.elem.man_bits = 2
    assert hash(fmt) == hash(lb.get_format("mxfp4")) and fmt == lb.get_format("mxfp4")
    assert fmt != lb.get_format("nvfp4") and len({fmt, lb.get_format("mxfp4", block_size=32)}) == 1
    assert isinstance(fmt.elem, FPElem) and isinstance(lb.get_format("nvint4").elem, IntElem)
