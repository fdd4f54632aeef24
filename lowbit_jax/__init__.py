"""lowbit_jax: exact emulation and analysis of fine-grained low-bit formats (MX, NV, any FP(e,m) / INT(b))."""

from lowbit_jax import blocks, elements, hadamard, recipes, scaling
from lowbit_jax.capture import Captured
from lowbit_jax.formats import (
    PER_CHANNEL,
    PER_TENSOR,
    AdaptiveFormat,
    ElemType,
    Format,
    FPElem,
    IntElem,
    LUTElem,
    ScaledIntElem,
    adaptive,
    fp,
    get_format,
    int_,
    list_formats,
    lut,
    parse_spec,
    stretched_int,
)
from lowbit_jax.interceptor import Report, capture, quantize_nnx, quantized
from lowbit_jax.qarray import QArray, pack_fp4, unpack_fp4
from lowbit_jax.qconv import qconv_general_dilated
from lowbit_jax.qdot import QDotConfig, Rotation, qdot_general
from lowbit_jax.qeinsum import qeinsum
from lowbit_jax.quantize import block_choices, dequantize, fake_quant, fake_quant_delayed, quantize

__all__ = [
    "AdaptiveFormat",
    "ScaledIntElem",
    "adaptive",
    "block_choices",
    "stretched_int",
    "PER_CHANNEL",
    "PER_TENSOR",
    "ElemType",
    "FPElem",
    "Format",
    "IntElem",
    "LUTElem",
    "QArray",
    "pack_fp4",
    "unpack_fp4",
    "dequantize",
    "fake_quant",
    "fake_quant_delayed",
    "fp",
    "get_format",
    "int_",
    "list_formats",
    "lut",
    "parse_spec",
    "blocks",
    "elements",
    "scaling",
    "quantize",
    "hadamard",
    "QDotConfig",
    "Rotation",
    "recipes",
    "qdot_general",
    "qconv_general_dilated",
    "qeinsum",
    "Captured",
    "Report",
    "capture",
    "quantize_nnx",
    "quantized",
]
__version__ = "0.1.0"
