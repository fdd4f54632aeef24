"""The one registry of quantizer implementations, shared by quantize/fake_quant, qdot_general and the kernels.

  "xla"    the core (lowbit_jax.codec) compiled by XLA: every format, every layout
  "pallas" the Pallas kernels (lowbit_jax.kernels; interpreted off GPUs, so it runs anywhere, slowly)
  "auto"   Pallas on a GPU, XLA elsewhere
Both give the same bits for every format the kernels cover; the kernels raise NotImplementedError naming
what they do not cover.
"""

from __future__ import annotations

import jax

IMPLS = ("xla", "pallas", "auto")


def check_impl(impl: str) -> str:
    """`impl` if it is a registered name, else ValueError listing them."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def resolve_impl(impl: str) -> str:
    """'xla' or 'pallas' for an impl name ('auto': Pallas on a GPU, XLA elsewhere)."""
    if check_impl(impl) == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return impl
