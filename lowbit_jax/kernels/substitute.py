"""Run a kernel body with a few primitives swapped for exact equivalents a GPU backend can lower.

Pallas' Triton lowering (jax 0.10) has no `round`, lowers float32 division to the approximate `div.full.f32`,
and lowers `max`/`min` (and the `reduce_max` of a block amax) to NaN-ignoring `maxnumf`/`minnumf`. The kernel
body stays the library's own code (rounding.round_elem, scaling.*); `substituted(fn, rules, ...)` traces it to a
jaxpr and re-evaluates it with those primitives replaced:

  neg (float)             -> a sign-bit flip (Triton lowers neg to 0 - x: the sign of zero is lost)
  round (to nearest even) -> floor, an exact remainder and a parity test
  div (float32)           -> PTX `div.rn.f32` (IEEE, correctly rounded)
  max / min / clamp       -> NaN-propagating, as XLA's
  reduce_max (float)      -> NaN if any element is NaN, as XLA's
  reduce_precision (bf16) -> a bf16 round trip (Triton keeps it; XLA may elide it, so not off the GPU)

`PORTABLE_RULES` uses no inline assembly, so the CPU tests run the same machinery in interpret mode.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.extend import core as jcore

from lowbit_jax import rounding

_F32 = jnp.dtype(jnp.float32)
_SUBJAXPR_PARAMS = ("jaxpr", "call_jaxpr", "fun_jaxpr")


def _is_float(*xs) -> bool:
    return all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in xs)


def _nan_max(a, b):
    return jnp.where(a != a, a, jnp.where(b != b, b, lax.max(*jnp.broadcast_arrays(a, b))))


def _nan_min(a, b):
    return jnp.where(a != a, a, jnp.where(b != b, b, lax.min(*jnp.broadcast_arrays(a, b))))


def max_rule(a, b):
    """lax.max with XLA's NaN propagation."""
    return _nan_max(a, b) if _is_float(a, b) else lax.max_p.bind(a, b)


def min_rule(a, b):
    """lax.min with XLA's NaN propagation."""
    return _nan_min(a, b) if _is_float(a, b) else lax.min_p.bind(a, b)


def clamp_rule(lo, x, hi):
    """lax.clamp as min(max(x, lo), hi) with NaN propagation."""
    return _nan_min(_nan_max(x, lo), hi) if _is_float(x) else lax.clamp_p.bind(lo, x, hi)


def reduce_max_rule(x, *, axes, **params):
    """reduce_max that returns NaN for a slice holding NaN (Triton's combiner ignores NaN)."""
    m = lax.reduce_max_p.bind(x, axes=axes, **params)
    if not _is_float(x):
        return m
    has_nan = lax.reduce_max_p.bind((x != x).astype(jnp.int32), axes=axes, **params) > 0
    return jnp.where(has_nan, jnp.nan, m).astype(m.dtype)


def neg_rule(x):
    """lax.neg as a sign-bit flip: Pallas Triton lowers neg to 0 - x, so neg(+0) came out +0 instead of -0."""
    bits = {jnp.dtype(jnp.float32): jnp.uint32, jnp.dtype(jnp.bfloat16): jnp.uint16}.get(jnp.result_type(x))
    if bits is None:
        return lax.neg_p.bind(x)
    sign = 1 << (8 * jnp.dtype(bits).itemsize - 1)
    return lax.bitcast_convert_type(lax.bitcast_convert_type(x, bits) ^ jnp.asarray(sign, bits), x.dtype)


def rne_exact(x, *, rounding_method):
    """Round half to even from floor and exact compares (XLA folds the (|x| + 2^23) - 2^23 trick away)."""
    if rounding_method != lax.RoundingMethod.TO_NEAREST_EVEN or jnp.result_type(x) != _F32:
        return lax.round_p.bind(x, rounding_method=rounding_method)
    a = jnp.abs(x)
    r = jnp.floor(a)
    d = a - r
    odd = r * 0.5 != jnp.floor(r * 0.5)
    up = (d > 0.5) | ((d == 0.5) & odd)
    return rounding.with_sign_of(r + up.astype(jnp.float32), x)  # the magnitude is >= 0: sign bit clear


def _asm(text: str, *args):
    from jax.experimental.pallas import triton as pltriton

    [out] = pltriton.elementwise_inline_asm(
        text,
        args=list(args),
        constraints="=f" + ",f" * len(args),
        pack=1,
        result_shape_dtypes=[jax.ShapeDtypeStruct(args[0].shape, jnp.float32)],
    )
    return out


def div_ptx(a, b):
    """Correctly rounded float32 division as PTX div.rn.f32."""
    if jnp.result_type(a) != _F32 or jnp.result_type(b) != _F32:
        return lax.div_p.bind(a, b)
    a, b = jnp.broadcast_arrays(a, b)
    return _asm("div.rn.f32 $0, $1, $2;", a, b)


def reduce_precision_bf16(x, *, exponent_bits, mantissa_bits):
    """rounding.round_bf16 (reduce_precision to bf16) as a cast pair, which Triton rounds to nearest even."""
    if (exponent_bits, mantissa_bits) != (8, 7) or jnp.result_type(x) != _F32:
        return lax.reduce_precision_p.bind(x, exponent_bits=exponent_bits, mantissa_bits=mantissa_bits)
    return x.astype(jnp.bfloat16).astype(jnp.float32)


PORTABLE_RULES = {
    lax.neg_p: neg_rule,
    lax.round_p: rne_exact,
    lax.max_p: max_rule,
    lax.min_p: min_rule,
    lax.clamp_p: clamp_rule,
    lax.reduce_max_p: reduce_max_rule,
}
TRITON_RULES = {**PORTABLE_RULES, lax.div_p: div_ptx, lax.reduce_precision_p: reduce_precision_bf16}


def _sub_jaxpr(eqn):
    for name in _SUBJAXPR_PARAMS:
        sub = eqn.params.get(name)
        if isinstance(sub, jcore.ClosedJaxpr):
            return sub
    return None


def eval_jaxpr(jaxpr, consts, args, rules):
    """Evaluate `jaxpr` binding each primitive, or its rule where `rules` has one (recursing into calls)."""
    env = dict(zip(jaxpr.constvars, consts))
    env.update(zip(jaxpr.invars, args))
    read = lambda v: v.val if isinstance(v, jcore.Literal) else env[v]
    for eqn in jaxpr.eqns:
        ins = [read(v) for v in eqn.invars]
        sub = _sub_jaxpr(eqn)
        if eqn.primitive in rules:
            outs = rules[eqn.primitive](*ins, **eqn.params)
        elif sub is not None and eqn.primitive.name in ("jit", "pjit", "closed_call", "custom_jvp_call"):
            outs = eval_jaxpr(sub.jaxpr, sub.consts, ins, rules)
        else:
            outs = eqn.primitive.bind(*ins, **eqn.params)
        outs = outs if eqn.primitive.multiple_results else [outs]
        env.update(zip(eqn.outvars, outs))
    return [read(v) for v in jaxpr.outvars]


def substituted(fn, rules, *, plain_division: bool):
    """fn(*arrays) -> tuple of arrays, evaluated with `rules` replacing primitives (None: as traced).

    plain_division: trace under `rounding.kernel_division`, for a backend whose own rule makes float32 division
    exact (Triton's div.rn.f32). Interpret mode runs the body through XLA on the default device, which divides
    approximately on a GPU: there `div_exact` keeps its correction.
    """

    @functools.wraps(fn)
    def wrapped(*args):
        with rounding.kernel_division() if plain_division else contextlib.nullcontext():
            if not rules:
                return fn(*args)
            closed, out_tree = jax.make_jaxpr(fn, return_shape=True)(*args)
        outs = eval_jaxpr(closed.jaxpr, closed.consts, args, rules)
        return jax.tree.unflatten(jax.tree.structure(out_tree), outs)

    return wrapped
