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

Float32 division has a second exact rule, `div_rcp_fma` (not the default): the approximate reciprocal
rcp.approx.ftz.f32, one Newton step and one residual correction, all FMAs, with a branch to div.rn.f32 for the
operands outside the range where that sequence is proven correctly rounded (its docstring has the argument;
tests/kernels/test_division.py runs this very PTX text on an exact interpreter, against every reciprocal the PTX
ISA's error bound allows). It gives div.rn.f32's bits. Whether it is faster is for a GPU to measure: compiled
for sm_90 (ptxas 13.0, read back with nvdisasm), div.rn.f32 is the same MUFU.RCP and five FFMAs behind an FCHK
test and a branch to a slow-path call, and div_rcp_fma puts about a dozen integer instructions (its range test)
where FCHK was. `triton_rules(division)` picks the rule set: "rn" (`TRITON_RULES`, div.rn.f32, the default) or
"rcp" (`TRITON_RULES_RCP`); with no argument it reads the environment variable LOWBIT_JAX_TRITON_DIV (unset:
"rn"), which is how the Pallas kernels choose (read when a kernel is traced: jit caches the trace, so set it
before a process first runs a kernel), so that a benchmark can time both (`LOWBIT_JAX_TRITON_DIV=rcp python -m
experiments.bench ...`).
"""

from __future__ import annotations

import contextlib
import functools
import os

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


# The fast path of div_rcp_fma: biased exponents (bits 23..30) of a and b, and their difference.
RCP_A_EXPONENTS = (48, 254)  # |a| >= 2^-79 (or a = +-0): the remainder a - b q0 stays normal
RCP_B_EXPONENTS = (1, 251)  # 2^-126 <= |b| < 2^125: 1/b and its approximations stay normal
RCP_EXPONENT_DIFFERENCES = (-124, 126)  # 2^-125 < |a / b| < 2^127: q0 and q stay normal and finite
_B_ALL_ONES = 0x7FFFFF  # b's significand 2 - 2^-23: the one divisor the sequence can get wrong


def _unsigned_range(lo: int, hi: int) -> tuple[int, int]:
    """(offset, count): lo <= x <= hi iff (x - lo) mod 2^32 < count, one unsigned compare."""
    return lo, hi - lo + 1


def _rcp_fma_ptx() -> str:
    """The PTX of div_rcp_fma; $0 is written once, last (the compiler may give it an input's register). The
    label is unique per inline-asm instance (LLVM expands ${:uid}): Triton emits the block once per element."""
    a_lo, a_n = _unsigned_range(*RCP_A_EXPONENTS)
    b_lo, b_n = _unsigned_range(*RCP_B_EXPONENTS)
    d_lo, d_n = _unsigned_range(*RCP_EXPONENT_DIFFERENCES)
    return f"""{{
.reg .f32 dv_aa, dv_nb, dv_y0, dv_e, dv_y, dv_q0, dv_r, dv_q;
.reg .b32 dv_ua, dv_ub, dv_sa, dv_ea, dv_eb, dv_t;
.reg .pred dv_ok, dv_pa;
mov.b32 dv_ua, $1;
mov.b32 dv_ub, $2;
and.b32 dv_sa, dv_ua, 0x80000000;
and.b32 dv_ua, dv_ua, 0x7FFFFFFF;
mov.b32 dv_aa, dv_ua;
neg.f32 dv_nb, $2;
rcp.approx.ftz.f32 dv_y0, $2;
fma.rn.f32 dv_e, dv_nb, dv_y0, 0f3F800000;
fma.rn.f32 dv_y, dv_e, dv_y0, dv_y0;
mul.rn.f32 dv_q0, dv_aa, dv_y;
fma.rn.f32 dv_r, dv_nb, dv_q0, dv_aa;
fma.rn.f32 dv_q, dv_r, dv_y, dv_q0;
mov.b32 dv_t, dv_q;
xor.b32 dv_t, dv_t, dv_sa;
mov.b32 dv_q, dv_t;
shr.u32 dv_ea, dv_ua, 23;
bfe.u32 dv_eb, dv_ub, 23, 8;
sub.s32 dv_t, dv_eb, {b_lo};
setp.lt.u32 dv_ok, dv_t, {b_n};
and.b32 dv_t, dv_ub, {_B_ALL_ONES:#x};
setp.ne.and.u32 dv_ok, dv_t, {_B_ALL_ONES:#x}, dv_ok;
sub.s32 dv_t, dv_ea, {a_lo};
setp.lt.u32 dv_pa, dv_t, {a_n};
sub.s32 dv_t, dv_ea, dv_eb;
sub.s32 dv_t, dv_t, {d_lo};
setp.lt.and.u32 dv_pa, dv_t, {d_n}, dv_pa;
setp.eq.or.u32 dv_pa, dv_ua, 0, dv_pa;
and.pred dv_ok, dv_ok, dv_pa;
@dv_ok bra DV_DONE${{:uid}};
div.rn.f32 dv_q, $1, $2;
DV_DONE${{:uid}}:
mov.f32 $0, dv_q;
}}"""


DIV_RCP_FMA_PTX = _rcp_fma_ptx()


def div_rcp_fma(a, b):
    """Correctly rounded float32 a / b (div.rn.f32's bits) from rcp.approx.ftz.f32 and FMAs: one PTX block.

        y0 = rcp.approx(b);  e = fma(-b, y0, 1);  y = fma(e, y0, y0)        (one Newton step)
        q0 = |a| * y;        r = fma(-b, q0, |a|); q = fma(r, y, q0)       (one residual correction)

    then the sign of a is put back on q (so that -0 / b is -0). Operands outside the fast range branch to
    div.rn.f32 (a branch, not a predicated div.rn.f32: ptxas for sm_90 if-converts that one and runs
    div.rn.f32's own sequence and its slow-path check for every element, then selects): zero,
    subnormal, Inf or NaN b; b with significand 2 - 2^-23; subnormal, Inf or NaN a, |a| < 2^-79; and exponents
    of a and b that could take the quotient near the ends of the normal range (RCP_* above). Each fma and the
    multiply round once (.rn: no contraction); inside the range every intermediate is a normal float, so ftz
    changes nothing and scaling a and b by powers of two does not change the rounding of any step.

    Why the result is RN(a / b). Scale to 1 <= b < 2 and 1 <= Q = a / b < 2 (so 1 <= a < 4); u = 2^-24.
    1. The PTX ISA bounds rcp.approx.f32 by 1 ulp, so eps = b y0 - 1 has |eps| <= 2u; eps is a multiple of
       2^-47 (y0 >= 1/2 unless b = 2 - 2^-23), so e = -eps exactly.
    2. y = RN(y0 (1 - eps)) = RN((1 - eps^2) / b): eta = b y - 1 has |eta| <= b u/2 + 4u^2.
    3. For any q0, q0 + (a - b q0) y = Q + (Q - q0) eta. With q0 = RN(a y) = RN(Q (1 + eta)),
       |Q - q0| <= Q |eta| + u < 3u + 2^-45; the remainder a - b q0, a multiple of 2^-46 below 2^-20, is exact
       below 2^-22 and within 2^-45 of the fma's r otherwise. So the value V = q0 + r y that the last fma
       rounds is within |Q - q0| |eta| + 2^-45 < 2^-44 of Q.
    4. q = RN(V) = RN(Q) unless a rounding boundary, a midpoint m = w 2^-24 (w odd), lies within |V - Q| of Q.
       A quotient of floats is never a midpoint: a - m b = t 2^-47 for an integer t != 0, |Q - m| = |t| 2^-47 / b,
       so a failure needs |t| < 16. Write m - q0 = k 2^-24 (k odd; q0 < 1 only when Q < 1 + 2^-25, far from
       any midpoint). |k| >= 5 contradicts step 3. |k| = 3 needs a >= 4 - 48u, so b > a / 2 >= 2 - 24u.
       |k| = 1 leaves |V - Q| <= (u + |t| 2^-47 / b)(b u/2 + 4u^2) (the remainder (t + k B) 2^-47, B = 2^23 b,
       is exact when B + |t| < 2^24), below |Q - m| unless |t| = 1 and b >= 2 - 5u.
    So every wrong quotient has b >= 2 - 16 * 2^-23 and |t| < 16: a finite set (per binade of a), which the
    tests enumerate with every y0 the bound allows (and more: every y0 with |eps| <= 2^-23). The one failure is
    b = 2 - 2^-23 with a a power of two and y0 = 1/2 or just below it: y = RN(1/2 + 2^-25) ties to even (1/2),
    q0 = a / 2 and q0 + r y is again an exact midpoint that ties the wrong way (a second correction ties the
    same way). That significand takes the fallback.
    The exact residuals and the correction step are Markstein's (1990), and Cornea et al. build IA-64 division
    from the same steps; Markstein's theorem assumes y = RN(1/b) and a q0 within 1 ulp, but here q0 can be 1.4
    ulp off and y the other neighbour of 1/b, hence the counting argument.
    """
    if jnp.result_type(a) != _F32 or jnp.result_type(b) != _F32:
        return lax.div_p.bind(a, b)
    a, b = jnp.broadcast_arrays(a, b)
    return _asm(DIV_RCP_FMA_PTX, a, b)


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
TRITON_RULES_RCP = {**TRITON_RULES, lax.div_p: div_rcp_fma}
TRITON_DIVISIONS = {"rn": TRITON_RULES, "rcp": TRITON_RULES_RCP}
TRITON_DIV_ENV = "LOWBIT_JAX_TRITON_DIV"


def triton_rules(division: str | None = None) -> dict:
    """The Triton rule set with float32 division `division`: "rn" (div.rn.f32, the default) or "rcp"
    (div_rcp_fma, same bits); None reads the environment variable LOWBIT_JAX_TRITON_DIV (unset or empty: "rn")."""
    if division is None:
        division = os.environ.get(TRITON_DIV_ENV, "").strip() or "rn"
    if division not in TRITON_DIVISIONS:
        raise ValueError(f"{TRITON_DIV_ENV} / division must be one of {sorted(TRITON_DIVISIONS)}, got {division!r}")
    return TRITON_DIVISIONS[division]


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
