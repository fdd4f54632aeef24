"""Tensor capture: record the real GEMM operands X, W and dY of a model, unquantized, under jit and grad.

Design: values inside jit/grad are tracers, so the taps send them to the host with `jax.debug.callback`
(an effect: never dead-code eliminated, runs on every execution, works under jit, grad and sharding, where
it receives the global array). X and W are tapped in the forward pass; dY by an identity with a custom VJP
whose backward taps the cotangent. `Capture` collects the records; leaving the `capture` context waits for
pending callbacks (jax.effects_barrier) and closes the store, so a compiled function reused later records
nothing. Each record carries the dims its tensor is quantized along in each GEMM role:
  x:  {'fwd': contracting dims (in features), 'dw': free dims (tokens)}
  w:  {'fwd': contracting dims (in features), 'dx': free dims (out features)}
  dy: {'dx': W's free dims (out features), 'dw': X's free dims (tokens)}, dY in dot_general's output layout.
`Captured.matrix(role)` gives the (rows, K) matrix with those dims merged last: the layout qdot_general
quantizes in blocks along its last axis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np
from jax import lax

from lowbit_jax._types import ArrayLike, DimensionNumbers, DTypeLike, Precision
from lowbit_jax.gemm_dims import merged_matrix, operand_axes

ROLES = {"x": ("fwd", "dw"), "w": ("fwd", "dx"), "dy": ("dx", "dw")}


@dataclass(frozen=True, eq=False)
class Captured:
    """One captured GEMM operand: `name` in ('x', 'w', 'dy'), its value and its quantization dims per role."""

    path: str
    name: str
    value: np.ndarray
    axes: dict[str, tuple[int, ...]]
    call: int = 0

    def matrix(self, role: str) -> np.ndarray:
        """The value as (rows, K), the dims of GEMM `role` merged last (block axis = last). For 2-D tile formats
        qdot_general tiles each batch element's matrix of X's and W's 'fwd' role and dY's 'dx' role (the
        other roles see those tiles transposed), so tile this matrix only without batch dims."""
        if role not in self.axes:
            raise KeyError(f"{self.name} has roles {sorted(self.axes)}, not {role!r}")
        m = merged_matrix(self.value, self.axes[role])
        return m.reshape(-1, m.shape[-1])


@dataclass(eq=False)
class Capture:
    """Records of a `capture` context: `records` in arrival order, `tensors` the latest per path and name."""

    records: list[Captured] = field(default_factory=list)
    report: object = None  # the interceptor's Report: which layers were captured / skipped
    is_open: bool = True

    def record(self, path: str, call: int, name: str, axes: Mapping[str, tuple[int, ...]], value: ArrayLike) -> None:
        """Store one operand (a host callback's value) while the context is open."""
        if self.is_open:
            self.records.append(Captured(path, name, np.asarray(value), dict(axes), call))

    def close(self) -> None:
        """Wait for pending callbacks and stop recording."""
        jax.effects_barrier()
        self.is_open = False

    @property
    def tensors(self) -> dict[str, dict[str, Captured]]:
        out: dict[str, dict[str, Captured]] = {}
        for r in self.records:
            out.setdefault(r.path, {})[r.name] = r
        return out

    @property
    def paths(self) -> list[str]:
        return list(self.tensors)

    def __getitem__(self, path: str) -> dict[str, Captured]:
        return self.tensors[path]


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def grad_tap(sink, y):
    """Identity whose backward passes the cotangent to `sink` (a host callback) and on unchanged."""
    return y


def _grad_tap_fwd(sink, y):
    return y, None


def _grad_tap_bwd(sink, _, dy):
    jax.debug.callback(sink, dy)
    return (dy,)


grad_tap.defvjp(_grad_tap_fwd, _grad_tap_bwd)


def tap_dot_general(sink: Callable[..., None], inner: Callable[..., Any] = lax.dot_general) -> Callable[..., Any]:
    """A lax.dot_general-compatible callable that reports (name, axes, value) of X, W and dY to `sink` and
    computes the product with `inner` (a dot_general-compatible callable, e.g. a quantized one)."""

    def dot_general(
        lhs: jax.Array,
        rhs: jax.Array,
        dimension_numbers: DimensionNumbers,
        precision: Precision = None,
        preferred_element_type: DTypeLike | None = None,
        out_sharding: Any = None,
    ) -> jax.Array:
        axes = operand_axes(dimension_numbers, lhs.ndim, rhs.ndim)
        jax.debug.callback(functools.partial(sink, "x", axes["x"]), lhs)
        jax.debug.callback(functools.partial(sink, "w", axes["w"]), rhs)
        y = inner(
            lhs,
            rhs,
            dimension_numbers,
            precision=precision,
            preferred_element_type=preferred_element_type,
            out_sharding=out_sharding,
        )
        return grad_tap(functools.partial(sink, "dy", axes["dy"]), y)

    return dot_general
