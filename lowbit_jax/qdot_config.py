"""QDotConfig: the formats of the six GEMM operands of a linear layer, rounding, rotation and accumulation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp

from lowbit_jax import blocks, hadamard
from lowbit_jax.formats import Format, get_format
from lowbit_jax.impls import check_impl

OPERANDS = ("x_fwd", "w_fwd", "dy_dx", "w_dx", "x_dw", "dy_dw")


def _as_format(value: object, field: str) -> Format | None:
    if value is None or isinstance(value, Format):
        return value
    if isinstance(value, str):
        return get_format(value)
    raise TypeError(f"QDotConfig.{field} must be a Format, a format name or None, got {type(value).__name__}")


def is_tiled(fmt: Format | None) -> bool:
    """Whether `fmt` quantizes 2-D tiles (block_size (r, c)) rather than blocks along one axis."""
    return fmt is not None and blocks.block_ndim(fmt.block_size) == 2


@dataclass(frozen=True)
class QDotConfig:
    """Formats of the six GEMM operands (None = unquantized), SR for dY, Hadamard rotation, accumulation dtype.

    rotation: Hadamard size h applied along the contracting axis of both operands of the forward GEMM (and of
    the two backward GEMMs if rotate_grads) before quantization; signs from the key, or from
    jax.random.key(rotation_seed) when no key is given. stochastic_grads needs a key once differentiated; it
    rounds block-format dY operands stochastically (identity formats such as bf16 round to nearest).
    """

    x_fwd: Format | str | None = None
    w_fwd: Format | str | None = None
    dy_dx: Format | str | None = None
    w_dx: Format | str | None = None
    x_dw: Format | str | None = None
    dy_dw: Format | str | None = None
    stochastic_grads: bool = False
    rotation: int | None = None
    rotate_grads: bool = False
    accum_dtype: str = "float32"
    rotation_seed: int = 0
    impl: str = "xla"  # quantizer implementation: "xla", "pallas" (interpreted on CPU) or "auto" (Pallas on GPU)

    def __post_init__(self) -> None:
        for name in OPERANDS:
            object.__setattr__(self, name, _as_format(getattr(self, name), name))
        if self.rotation is not None:
            hadamard.check_size(self.rotation)
            rotated = OPERANDS if self.rotate_grads else OPERANDS[:2]
            tiled = [n for n in rotated if is_tiled(getattr(self, n))]
            if tiled:
                fmt = getattr(self, tiled[0])
                raise ValueError(
                    f"QDotConfig: Hadamard rotation (rotation={self.rotation}) does not combine with the 2-D tile "
                    f"format {fmt.label} of {', '.join(tiled)}: a tile has no single axis to rotate along"
                )
        if not isinstance(self.stochastic_grads, bool):
            raise TypeError(f"QDotConfig.stochastic_grads must be True or False, got {self.stochastic_grads!r}")
        dt = jnp.dtype(self.accum_dtype)
        if not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(f"accum_dtype must be a floating dtype, got {self.accum_dtype!r}")
        object.__setattr__(self, "accum_dtype", dt.name)
        check_impl(self.impl)

    @classmethod
    def train(cls, fmt: Format | str, **kwargs: Any) -> QDotConfig:
        """All six operands in `fmt` (the paper's training setting)."""
        operands: dict[str, Any] = dict.fromkeys(OPERANDS, fmt)
        return cls(**operands, **kwargs)

    @classmethod
    def direct_cast(cls, fmt: Format | str, **kwargs: Any) -> QDotConfig:
        """Forward X and W in `fmt`, backward unquantized (the paper's direct-cast inference setting)."""
        return cls(x_fwd=fmt, w_fwd=fmt, **kwargs)

    def formats(self) -> dict[str, Format | None]:
        return {name: getattr(self, name) for name in OPERANDS}

    @property
    def label(self) -> str:
        """Short description, e.g. 'train(mxint8)', 'direct_cast(nvfp4)+rot16'."""
        f = [None if v is None else v.label for v in self.formats().values()]
        if len(set(f)) == 1 and f[0] is not None:
            base = f"train({f[0]})"
        elif f[0] is not None and f[0] == f[1] and f[2:] == [None] * 4:
            base = f"direct_cast({f[0]})"
        else:
            base = ",".join(f"{n}={v}" for n, v in zip(OPERANDS, f, strict=True) if v is not None) or "none"
        extra = "+sr" * self.stochastic_grads + (f"+rot{self.rotation}" if self.rotation else "")
        extra += "+rotgrads" * (bool(self.rotation) and self.rotate_grads)
        return base + extra + ("" if self.accum_dtype == "float32" else f"+acc_{self.accum_dtype}")
