"""substitute.div_rcp_fma: float32 division from rcp.approx and FMAs, correctly rounded, proven on the CPU.

The rule's PTX block (`substitute.DIV_RCP_FMA_PTX`, the very text the Triton kernels run) executes here on an
exact interpreter (`Ptx`): every fma and mul is rounded once from its exact value (Python integers; IEEE
round-to-nearest-even with subnormals and overflow), integer and predicate instructions act on 32-bit words, and
rcp.approx.ftz.f32 is adversarial: each case runs once for every float32 y0 with |b y0 - 1| <= 2^-23, a superset
of what the PTX ISA allows (within 1 ulp of 1/b). The oracle is the exact quotient (fractions.Fraction) rounded
once; the interpreter's arithmetic is itself checked against numpy's IEEE float32 operations and Fractions.

What the tests stand for (the argument is in div_rcp_fma's docstring): the error bound leaves room for a wrong
quotient only where b's significand is within 16 ulp of 2 and a / b within 16 * 2^-47 / b of a rounding midpoint;
`test_the_set_the_bound_leaves_open_...` enumerates that whole set with every y0 (at four placements of the
exponents, the range's corners included) and finds the one failure the fallback takes, b's significand all ones.
The other CPU tests cover random normal operands over every exponent, the operands of the kernels' NV and
per-channel divisions, quotients constructed next to midpoints, significands of b near 1 and 2 with
a = b (1 +- tiny), the edges of the fast range (inside: fast and exact; outside: the fallback, and, at every edge
but the lowest quotients, operands the fast sequence alone would get wrong), zeros, subnormals, Inf and NaN.

GPU (`-m gpu`, scripts/gpu_check.sh): the rule in a tiny Pallas Triton kernel, bit for bit against div.rn.f32 and
the CPU's IEEE division over the same adversarial operands (and a million random ones); the NV and per-channel
kernels traced with LOWBIT_JAX_TRITON_DIV=rcp against the CPU reference. Imports only jax, numpy, pytest and the
library, so it runs with `--noconftest`.
"""

from __future__ import annotations

import functools
import math
import random
import re
import struct
from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import lowbit_jax as lb
from lowbit_jax.kernels import pallas_quantize as pq
from lowbit_jax.kernels import reference, substitute

ON_GPU = jax.default_backend() == "gpu"
gpu = [pytest.mark.gpu, pytest.mark.skipif(not ON_GPU, reason="needs a GPU")]
MIN_NORMAL = 2.0**-126
RCP_BOUND = Fraction(1, 2**23)  # |b y0 - 1| <= 2^-23: the PTX ISA's 1 ulp for rcp.approx.f32, and more


# ------------------------------------------------------------------------------------------ exact float32
def f32(bits: int) -> float:
    """The float32 with these bits, as a Python float (exact)."""
    return struct.unpack("<f", struct.pack("<I", bits & 0xFFFFFFFF))[0]


def bits_of(x: float) -> int:
    """The bits of a float32 value held in a Python float."""
    return struct.unpack("<I", struct.pack("<f", x))[0]


def make(sig: int, exp: int, sign: int = 1) -> float:
    """sign * sig * 2^(exp - 23): a 24-bit significand sig in [2^23, 2^24) and unbiased exponent exp."""
    return sign * math.ldexp(sig, exp - 23)


def _round_scaled(num: int, den: int, sign: int) -> float:
    """RN-even of sign * num / den (num, den > 0) to float32: subnormals kept, overflow to Inf."""
    e = num.bit_length() - den.bit_length()  # 2^e <= num / den < 2^(e + 1), after the correction
    if (num << max(0, -e)) < (den << max(0, e)):
        e -= 1
    quantum = max(e - 23, -149)
    num, den = (num << -quantum, den) if quantum < 0 else (num, den << quantum)
    n, rem = divmod(num, den)
    if 2 * rem > den or (2 * rem == den and n & 1):
        n += 1
    if n and n.bit_length() + quantum > 128:  # n 2^quantum >= 2^128
        return sign * math.inf
    return sign * math.ldexp(n, quantum)


def round_f32(x: Fraction) -> float:
    """The float32 nearest to x (ties to even); a zero x is +0."""
    if x == 0:
        return 0.0
    return _round_scaled(abs(x.numerator), x.denominator, -1 if x < 0 else 1)


def floor_log2(x: Fraction) -> int:
    """floor(log2(x)) of a positive rational, exactly."""
    e = x.numerator.bit_length() - x.denominator.bit_length()
    return e - 1 if x < Fraction(2) ** e else e


def _dyadic(x: float) -> tuple[int, int]:
    """(n, k) with x = n 2^k exactly (x finite)."""
    p, q = x.as_integer_ratio()
    return p, 1 - q.bit_length()


def _neg_zero(x: float) -> bool:
    return x == 0 and math.copysign(1.0, x) < 0


def fma(x: float, y: float, z: float) -> float:
    """fma.rn.f32: x * y + z rounded once (IEEE: subnormals, overflow, signed zeros, Inf and NaN)."""
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(z)):
        return x * y + z  # Inf or NaN: nothing to round (Python floats follow IEEE here)
    (nx, kx), (ny, ky), (nz, kz) = _dyadic(x), _dyadic(y), _dyadic(z)
    k = min(kx + ky, kz)
    n = (nx * ny << (kx + ky - k)) + (nz << (kz - k))
    if n == 0:  # exact zero: -0 only for (-0) + (-0)
        product_negative = (math.copysign(1.0, x) * math.copysign(1.0, y)) < 0
        return -0.0 if (x * y == 0 and product_negative and _neg_zero(z)) else 0.0
    num, den = (abs(n) << k, 1) if k >= 0 else (abs(n), 1 << -k)
    return _round_scaled(num, den, -1 if n < 0 else 1)


def mul(x: float, y: float) -> float:
    """mul.rn.f32 (x * y + (-0) keeps the product's sign of zero)."""
    return fma(x, y, -0.0)


def div_rn(a: float, b: float) -> float:
    """div.rn.f32 / IEEE division: the exact quotient rounded once; zeros, Inf and NaN by IEEE's rules."""
    if math.isfinite(a) and math.isfinite(b) and b != 0:
        q = round_f32(Fraction(a) / Fraction(b))
        negative = (math.copysign(1.0, a) * math.copysign(1.0, b)) < 0
        return -abs(q) if negative else abs(q)
    with np.errstate(all="ignore"):
        return float(np.float64(a) / np.float64(b))  # 0, Inf or NaN: exact


def same(x: float, y: float) -> bool:
    """Bit-identical, any NaN matching any NaN."""
    return (math.isnan(x) and math.isnan(y)) or bits_of(x) == bits_of(y)


def rcp_candidates(b: float) -> list[float]:
    """Every float32 y0 with |b y0 - 1| <= 2^-23 (b normal): what rcp.approx(b) may return, and more. Where
    1/b is at or below the normal range's bottom, a flushed (zero) result is among them."""
    c = abs(round_f32(1 / Fraction(b)))
    out = []
    for d in range(-24, 25):
        if bits_of(c) + d < 0:
            continue
        y = math.copysign(f32(bits_of(c) + d), b)
        if math.isfinite(y) and abs(Fraction(b) * Fraction(y) - 1) <= RCP_BOUND:
            out.append(y if abs(y) >= MIN_NORMAL else math.copysign(0.0, b))  # .ftz flushes a subnormal result
    if not out or abs(1 / Fraction(b)) < MIN_NORMAL:
        out.append(math.copysign(0.0, b))
    return list(dict.fromkeys(out))


def rcp_approx_ftz(b: float, y0: float | None) -> float:
    """rcp.approx.ftz.f32 returning y0 for normal b (one of rcp_candidates(b)); its specified results elsewhere
    (subnormal input as zero)."""
    if math.isnan(b):
        return math.nan
    if abs(b) < MIN_NORMAL:
        return math.copysign(math.inf, b)
    if math.isinf(b):
        return math.copysign(0.0, b)
    assert y0 is not None
    return y0


# ------------------------------------------------------------------------------------------ PTX interpreter
class Ptx:
    """An interpreter for the PTX of one elementwise inline-asm block ($0 = f(a=$1, b=$2), all .f32).

    Knows exactly the instructions the block uses; any other raises, so the proof covers the whole text."""

    _CMP = {"lt": lambda x, y: x < y, "eq": lambda x, y: x == y, "ne": lambda x, y: x != y}

    def __init__(self, text: str):
        self.types = {"$0": "f32", "$1": "f32", "$2": "f32"}
        self.code = []
        self.labels = {}  # label -> index of the next instruction
        for line in text.splitlines():
            line = line.split("//")[0].strip().rstrip(";").strip()
            if line in ("", "{", "}"):
                continue
            if line.endswith(":"):
                self.labels[line[:-1]] = len(self.code)
                continue
            if line.startswith(".reg"):
                _, kind, names = line.split(None, 2)
                self.types.update({n.strip(): kind.lstrip(".") for n in names.split(",")})
                continue
            guard = None
            if line.startswith("@"):
                pred, line = line.split(None, 1)
                guard = (pred.lstrip("@!"), pred.startswith("@!"))
            op, rest = line.split(None, 1)
            self.code.append((guard, op, [s.strip() for s in rest.split(",")]))

    def _bits(self, regs, s: str) -> int:
        if s in regs:
            v = regs[s]
            return bits_of(v) if self.types[s] == "f32" else v
        return int(s, 0) & 0xFFFFFFFF

    def _float(self, regs, s: str) -> float:
        if s in regs:
            return regs[s] if self.types[s] == "f32" else f32(regs[s])
        assert s.startswith("0f"), s
        return f32(int(s[2:], 16))

    def _pred(self, regs, s: str) -> bool:
        return not regs[s[1:]] if s.startswith("!") else regs[s]

    def run(self, a: float, b: float, y0: float | None) -> tuple[float, float, bool]:
        """(result, the fast path's value before the fallback, whether div.rn.f32 ran) for rcp.approx = y0.

        The inputs are read-only and $0 is written once, as the last instruction: the block must be correct
        when the compiler gives $0 the register of $1 or $2."""
        regs: dict = {"$1": a, "$2": b}
        fast, fell_back, pc = None, False, 0
        while pc < len(self.code):
            guard, op, ops = self.code[pc]
            pc += 1
            d = ops[0]
            assert d not in ("$1", "$2") and "$0" not in regs, f"{op}: writes an input, or follows the write of $0"
            if op == "div.rn.f32":
                fast = regs[d]  # what the fast path left in the register the fallback overwrites
            if guard is not None and regs[guard[0]] == guard[1]:  # @p runs when p; @!p when not p
                continue
            if op == "bra":
                pc = self.labels[d]
                continue
            bits = functools.partial(self._bits, regs)
            flt = functools.partial(self._float, regs)
            if op == "mov.b32":
                v = self._bits(regs, ops[1])
                regs[d] = f32(v) if self.types[d] == "f32" else v
            elif op == "mov.f32":
                regs[d] = flt(ops[1])
            elif op in ("and.b32", "xor.b32", "or.b32"):
                x, y = bits(ops[1]), bits(ops[2])
                regs[d] = {"and.b32": x & y, "xor.b32": x ^ y, "or.b32": x | y}[op]
            elif op == "shr.u32":
                regs[d] = bits(ops[1]) >> int(ops[2])
            elif op == "bfe.u32":
                regs[d] = (bits(ops[1]) >> int(ops[2])) & ((1 << int(ops[3])) - 1)
            elif op in ("sub.s32", "add.s32"):
                x, y = bits(ops[1]), bits(ops[2])
                regs[d] = (x - y if op == "sub.s32" else x + y) & 0xFFFFFFFF
            elif op.startswith("setp.") and op.endswith(".u32"):
                parts = op.split(".")
                r = self._CMP[parts[1]](bits(ops[1]), bits(ops[2]))
                if len(parts) == 4:  # setp.cmp.bool.u32 p, a, b, c: p = (a cmp b) bool c
                    c = self._pred(regs, ops[3])
                    r = (r and c) if parts[2] == "and" else (r or c)
                regs[d] = r
            elif op == "and.pred":
                regs[d] = self._pred(regs, ops[1]) and self._pred(regs, ops[2])
            elif op == "neg.f32":
                regs[d] = -flt(ops[1])
            elif op == "rcp.approx.ftz.f32":
                regs[d] = rcp_approx_ftz(flt(ops[1]), y0)
            elif op == "fma.rn.f32":
                regs[d] = fma(flt(ops[1]), flt(ops[2]), flt(ops[3]))
            elif op == "mul.rn.f32":
                regs[d] = mul(flt(ops[1]), flt(ops[2]))
            elif op == "div.rn.f32":
                regs[d], fell_back = div_rn(flt(ops[1]), flt(ops[2])), True
            else:
                raise NotImplementedError(f"PTX instruction {op!r} has no exact model here")
        return regs["$0"], regs["$0"] if fast is None else fast, fell_back


RULE = Ptx(substitute.DIV_RCP_FMA_PTX)


def check(pairs, *, what: str) -> dict:
    """Run the rule on (a, b) pairs with every rcp.approx result the bound allows; assert RN(a / b) each time.

    Returns counts: cases (pair x y0), fast (cases on the fast path), pairs."""
    n = {"cases": 0, "fast": 0, "pairs": 0}
    for a, b in pairs:
        want = div_rn(a, b)
        normal_b = math.isfinite(b) and abs(b) >= MIN_NORMAL
        n["pairs"] += 1
        for y0 in rcp_candidates(b) if normal_b else [None]:
            got, fast, fell_back = RULE.run(a, b, y0)
            assert same(got, want), f"{what}: a={a.hex()} b={b.hex()} y0={y0} got {got.hex()} want {want.hex()}"
            if not fell_back:
                assert same(fast, want)
            n["cases"] += 1
            n["fast"] += not fell_back
    return n


def in_fast_range(a: float, b: float) -> bool:
    """The documented fast range (substitute.RCP_*), from the exponent fields."""
    ea, eb = (bits_of(a) >> 23) & 0xFF, (bits_of(b) >> 23) & 0xFF
    lo_a, hi_a = substitute.RCP_A_EXPONENTS
    lo_b, hi_b = substitute.RCP_B_EXPONENTS
    lo_d, hi_d = substitute.RCP_EXPONENT_DIFFERENCES
    b_ok = lo_b <= eb <= hi_b and bits_of(b) & 0x7FFFFF != 0x7FFFFF
    return b_ok and (a == 0 or (lo_a <= ea <= hi_a and lo_d <= ea - eb <= hi_d))


# ------------------------------------------------------------------------------------------ operand sets
def quotient_near_midpoint(b: float, w: int, kappa: int, t: int, binade: int) -> float | None:
    """The float a with a - m b = t 2^-47 in the scaled picture (b's significand in [1, 2), a in [2^binade,
    2^(binade + 1)), m = w 2^-24 a midpoint, w odd in (2^24, 2^25)), then scaled so that a / b ~ m 2^kappa;
    None when that a is not a float of the binade."""
    big_b = bits_of(abs(b)) & 0x7FFFFF | 0x800000
    a_scaled = w * big_b + t  # a = a_scaled 2^-47 for b in [1, 2)
    quantum = 24 + binade  # a in [1, 2): multiple of 2^-23; [2, 4): 2^-22
    if a_scaled % (1 << quantum) or not (1 << (47 + binade)) <= a_scaled < (1 << (48 + binade)):
        return None
    eb = ((bits_of(abs(b)) >> 23) & 0xFF) - 127
    return math.ldexp(a_scaled, eb + kappa - 47)


def closest_to_midpoints(big_bs, ts, placements) -> list[tuple[float, float]]:
    """Every (a, b) with b's significand in big_bs, a / b within |t| 2^-47 / b of a midpoint (t in ts), both
    binades of a, at each (exponent of b, exponent of a / b) placement: the closest a quotient can come."""
    out = []
    for big_b in big_bs:
        odd, shift = big_b >> ((big_b & -big_b).bit_length() - 1), (big_b & -big_b).bit_length() - 1
        for t in ts:
            if t % (1 << shift):
                continue  # a - m b is a multiple of 2^shift units when b's significand is
            for binade in (0, 1):
                mod = 1 << (24 + binade - shift)
                w = (-(t >> shift) * pow(odd, -1, mod)) % mod
                w += ((1 << 24) - w + mod - 1) // mod * mod  # the first w >= 2^24 in the residue class
                for ww in range(w, 1 << 25, mod):
                    if not ww & 1:
                        continue
                    for beta, kappa in placements:
                        b = make(big_b, beta)
                        a = quotient_near_midpoint(b, ww, kappa, t, binade)
                        if a is not None:
                            out.append((a, b))
    return out


def rng_float(rng: random.Random, lo_exp: int, hi_exp: int, signed=True) -> float:
    sign = rng.choice((-1, 1)) if signed else 1
    return make(rng.randrange(1 << 23, 1 << 24), rng.randint(lo_exp, hi_exp), sign)


def random_pairs(seed: int, n: int) -> list[tuple[float, float]]:
    """(a) Normal a and b, significands and exponents uniform over the whole float32 range, both signs."""
    rng = random.Random(seed)
    return [(rng_float(rng, -126, 127), rng_float(rng, -126, 127)) for _ in range(n)]


def kernel_pairs(seed: int, n: int) -> list[tuple[float, float]]:
    """(a) The kernels' divisions: bfloat16 x by an NV scale (E4M3 block scale times a float32 tensor scale g)
    or by a per-channel float32 scale; x / amax-sized quotients, values far below the scale included."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        x = make(rng.randrange(1 << 23, 1 << 24) >> 16 << 16, rng.randint(-60, 20), rng.choice((-1, 1)))
        g = rng_float(rng, -40, 10, signed=False)
        if i % 2:
            e4m3 = make(rng.randrange(8, 16) << 20, rng.randint(-6, 8), 1)  # 3 stored significand bits
            out.append((x, round_f32(Fraction(e4m3) * Fraction(g))))
        else:
            out.append((x, g))
    return out


def midpoint_pairs(seed: int, n: int) -> list[tuple[float, float]]:
    """(b) A midpoint m and b; a = RN(m b) and its neighbours (+-1, +-2 ulp), random exponents in range."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        b = rng_float(rng, -50, 100)
        m = Fraction(2 * rng.randrange(1 << 23, 1 << 24) + 1, 1 << 24) * Fraction(2) ** rng.randint(-20, 20)
        a0 = round_f32(m * Fraction(b))
        out += [(math.copysign(f32(bits_of(abs(a0)) + d), a0), b) for d in (-2, -1, 0, 1, 2)]
    return out


def significand_edge_pairs() -> list[tuple[float, float]]:
    """(c) b's significand within 24 ulp of 1 or of 2; a = b (1 +- j 2^-23) (b's neighbours), a = b, a a power
    of two or just below one; a few exponents."""
    out = []
    sigs = list(range(1 << 23, (1 << 23) + 24)) + list(range((1 << 24) - 24, 1 << 24))
    for sig in sigs:
        for eb, ea in ((0, 0), (-70, 13), (100, 24), (-120, 50)):  # exponent of b, of a / b
            b = make(sig, eb)
            for d in range(-4, 5):
                out.append((f32(bits_of(b) + d) * 2.0**ea, b))
            for j in (0, 1):
                out += [(2.0 ** (eb + ea + j), b), (make((1 << 24) - 1, eb + ea + j), b)]
    return out


# ------------------------------------------------------------------------------------------ the model itself
def test_interpreter_arithmetic_is_ieee():
    """round_f32 and mul / fma / div_rn against numpy's IEEE float32 (and fma against Fractions)."""
    rng = np.random.default_rng(0)
    wide = rng.standard_normal(4000) * np.exp2(rng.integers(-160, 140, 4000).astype(np.float64))
    ties = np.array([1 + 2.0**-24, 1 + 3 * 2.0**-24, 2.0**-149 * 1.5, 2.0**-149 * 0.5, 2.0**128 - 2.0**103, 1e-46])
    with np.errstate(all="ignore"):
        for v in np.concatenate([wide, ties, -ties]):
            assert same(round_f32(Fraction(float(v))), float(np.float32(v))), v
        x = (rng.standard_normal(3000) * np.exp2(rng.integers(-80, 70, 3000))).astype(np.float32)
        y = (rng.standard_normal(3000) * np.exp2(rng.integers(-80, 70, 3000))).astype(np.float32)
        for xi, yi, p, q in zip(x.tolist(), y.tolist(), (x * y).tolist(), (x / y).tolist()):
            assert same(mul(xi, yi), p) and same(div_rn(xi, yi), q), (xi, yi)
        products = (-(x * y))[:500].tolist()
    for xi, yi, zi in zip(x[:500].tolist(), y[:500].tolist(), products):  # z = -RN(x y): cancellation
        for z in (zi, float(np.nextafter(np.float32(zi), np.float32(0))), 1.0):
            if math.isfinite(z):
                assert same(fma(xi, yi, z), round_f32(Fraction(xi) * Fraction(yi) + Fraction(z)))
    assert fma(1 + 2.0**-23, 1 - 2.0**-23, -1.0) == -(2.0**-46)
    assert _neg_zero(fma(-0.0, 1.0, -0.0)) and not _neg_zero(fma(-0.0, 1.0, 0.0)) and not _neg_zero(fma(1, 1, -1))
    assert _neg_zero(mul(-0.0, 3.0)) and _neg_zero(div_rn(-0.0, 3.0)) and math.isinf(div_rn(1.0, -0.0))


def test_rcp_model_holds_every_result_within_one_ulp():
    """The adversarial rcp.approx set contains RN(1/b), both floats bracketing 1/b and every float within 1 ulp
    of it (the PTX ISA's bound), over random b and b near powers of two."""
    rng = random.Random(1)
    bs = [rng_float(rng, -126, 124) for _ in range(300)] + [
        make(s, e) for s in (1 << 23, (1 << 24) - 1) for e in (0, -3)
    ]
    bs += [make((1 << 23) + 1, 5), make((1 << 24) - 2, -9)]
    for b in bs:
        inv = 1 / Fraction(b)
        ulp = Fraction(2) ** (floor_log2(abs(inv)) - 23)  # the ulp of 1/b's binade
        cands = rcp_candidates(b)
        c = round_f32(inv)
        within = [
            math.copysign(f32(bits_of(abs(c)) + d), b)
            for d in range(-3, 4)
            if abs(Fraction(math.copysign(f32(bits_of(abs(c)) + d), b)) - inv) <= ulp
        ]
        assert c in cands and set(within) <= set(cands) and len(within) >= 2, (b, within, cands)
        assert all(abs(Fraction(b) * Fraction(y) - 1) <= RCP_BOUND for y in cands)


# ------------------------------------------------------------------------------------------ the proof's cases
PLACEMENTS = [(0, 0), (-126, 47), (124, -124), (-30, 125)]  # (exponent of b, exponent of a / b): range corners


def test_the_set_the_bound_leaves_open_fails_only_for_the_all_ones_divisor():
    """Every quotient the error bound cannot decide (b's significand >= 2 - 16 ulp, a / b within 16 * 2^-47 / b
    of a midpoint; div_rcp_fma's docstring), with every y0: the sequence without its fallback is wrong only for
    b = 2 - 2^-23 with a a power of two; the rule sends that b to div.rn.f32 and is right everywhere."""
    top = range((1 << 24) - 16, 1 << 24)
    pairs = closest_to_midpoints(top, [t for t in range(-15, 16) if t], PLACEMENTS)
    assert len(pairs) > 400  # about 130 (a, b) per placement
    wrong = []
    for a, b in pairs:
        want = div_rn(a, b)
        for y0 in rcp_candidates(b):
            got, fast, fell_back = RULE.run(a, b, y0)
            assert same(got, want), (a.hex(), b.hex(), y0)
            assert fell_back == (bits_of(b) & 0x7FFFFF == 0x7FFFFF)
            if not same(fast, want):
                wrong.append((a, b, y0))
    assert wrong, "the all-ones divisor is the fallback's reason: its failure must show"
    for a, b, y0 in wrong:
        assert bits_of(b) & 0x7FFFFF == 0x7FFFFF and bits_of(a) & 0x7FFFFF == 0, (a.hex(), b.hex(), y0)
        assert abs(y0) * abs(b) < 1  # y0 at or below 1/2 of the binade: the power of two under 1/b, or less


def test_closest_quotients_to_midpoints_for_random_divisors():
    """(b) The same construction (a / b within |t| 2^-47 / b of a midpoint, |t| <= 3) for random significands
    of b over the whole range, and the brief's construction: a = RN(m b) and neighbours."""
    rng = random.Random(2)
    big_bs = [rng.randrange(1 << 23, 1 << 24) for _ in range(120)]
    pairs = closest_to_midpoints(big_bs, [-3, -2, -1, 1, 2, 3], [(0, 0), (-126, 47), (124, -124), (-30, 125)])
    n = check(pairs, what="closest to midpoints")
    assert n["pairs"] > 500 and n["fast"] == n["cases"]
    n = check(midpoint_pairs(3, 400), what="RN(m b) and neighbours")
    assert n["fast"] == n["cases"] and n["pairs"] == 2000


def test_random_operands_over_every_exponent():
    """(a) Normal a, b over the whole float32 range; the fast path holds every pair inside its range."""
    pairs = random_pairs(4, 1500)
    n = check(pairs, what="random")
    inside = sum(in_fast_range(a, b) for a, b in pairs)
    assert 0.2 < inside / len(pairs) < 0.9  # both sides of the range are exercised
    assert n["fast"] >= inside * 2  # every inside pair, with each of its (at least 2) y0


def test_the_kernels_divisions():
    """(a) bfloat16 x over NV (E4M3 x g) and per-channel float32 scales: all fast, all exact."""
    n = check(kernel_pairs(5, 1500), what="kernel operands")
    assert n["fast"] == n["cases"]


def test_divisor_significands_near_one_and_two():
    """(c) b's significand next to 1 or 2, a = b (1 +- tiny), a = b, powers of two: exact; only the all-ones
    significand falls back."""
    pairs = significand_edge_pairs()
    n = check(pairs, what="significand edges")
    all_ones = sum(bits_of(b) & 0x7FFFFF == 0x7FFFFF for _, b in pairs)
    assert n["pairs"] == len(pairs) and 0 < all_ones < len(pairs) // 40
    for a, b in pairs[:200]:
        assert RULE.run(a, b, rcp_candidates(b)[0])[2] == (bits_of(b) & 0x7FFFFF == 0x7FFFFF)


def _edge_pairs(rng, ea: int, eb: int, n: int = 12) -> list[tuple[float, float]]:
    """a and b with biased exponents ea and eb (0: subnormal, 255: Inf), significands random and extreme."""

    def value(e: int, sig: int) -> float:
        if e == 0:
            return f32(sig & 0x7FFFFF or 1)
        if e == 255:
            return math.inf
        return make(sig | 0x800000, e - 127)

    sigs = [0x800000, 0xFFFFFE, 0xFFFFFF, 0x800001] + [rng.randrange(1 << 23, 1 << 24) for _ in range(n)]
    return [(value(ea, sa), value(eb, sb)) for sa in sigs for sb in rng.sample(sigs, 4)]


def test_edges_of_the_fast_range():
    """(d) Exponents on both sides of every edge of the fast range: the rule is exact everywhere and takes the
    fast path exactly inside (in_fast_range). Outside the edges the fast sequence alone would be wrong for some
    operands whose divisor is not the all-ones one: |a| near 2^-125 (an inexact subnormal remainder), subnormal or
    infinite a, subnormal b, |b| >= 2^126, quotient exponents two above the upper end. The range keeps a margin:
    one exponent at the ends of b and the top of the quotient; |a| >= 2^-79 keeps the remainder normal (it is
    exact, if subnormal, down to 2^-102); the lowest quotients keep q0 normal, as the argument needs (searches
    found failures there only with |a| below the edge on a), so no failure outside that edge is asserted."""
    rng = random.Random(6)
    lo_a, hi_a = substitute.RCP_A_EXPONENTS
    lo_b, hi_b = substitute.RCP_B_EXPONENTS
    lo_d, hi_d = substitute.RCP_EXPONENT_DIFFERENCES
    groups = {
        "a low": [(ea, ea + 60) for ea in (0, 2, 3, lo_a - 1, lo_a, lo_a + 1)],
        "a high": [(ea, 200) for ea in (hi_a - 1, hi_a, 255)],
        "b low": [(127, eb) for eb in (0, lo_b, lo_b + 1)],
        "b high": [(ea, eb) for eb in (hi_b - 1, hi_b, hi_b + 1, hi_b + 2, 255) for ea in (eb - 60,)],
        "quotient high": [(eb + d, eb) for d in (hi_d - 1, hi_d, hi_d + 1, hi_d + 2) for eb in (1, 30, 254 - d)],
        "quotient low": [(eb + d, eb) for d in (lo_d - 2, lo_d - 1, lo_d, lo_d + 1) for eb in (250, 200)],
    }
    pairs = {
        name: [p for ea, eb in edges if 0 <= ea <= 255 and 0 <= eb <= 255 for p in _edge_pairs(rng, ea, eb)]
        for name, edges in groups.items()
    }
    wrong_outside = dict.fromkeys(groups, 0)
    for name, group in pairs.items():
        for a, b in group:
            want = div_rn(a, b)
            normal_b = math.isfinite(b) and abs(b) >= MIN_NORMAL
            for y0 in rcp_candidates(b) if normal_b else [None]:
                got, fast, fell_back = RULE.run(a, b, y0)
                assert same(got, want), (name, a.hex(), b.hex(), y0)
                assert fell_back != in_fast_range(a, b), (name, a.hex(), b.hex())
                all_ones = bits_of(b) & 0x7FFFFF == 0x7FFFFF
                wrong_outside[name] += fell_back and not all_ones and not same(fast, want)
    assert all(n for name, n in wrong_outside.items() if name != "quotient low"), wrong_outside


def test_zeros_subnormals_infinities_and_nans():
    """Every pair of special and extreme operands: the rule's bits are IEEE's; +-0 / b runs the fast path and
    keeps the sign of zero."""
    tiny, sub = MIN_NORMAL, f32(0x00000001)
    vals = [0.0, -0.0, math.inf, -math.inf, math.nan, sub, -sub, f32(0x007FFFFF), tiny, -tiny, 1.0, -3.0]
    vals += [f32(0x7F7FFFFF), -f32(0x7F7FFFFF), 2.0**-79, 2.0**124, 1.5]
    n = check([(a, b) for a in vals for b in vals], what="specials")
    assert n["fast"] > 0
    for a in (0.0, -0.0):
        for b in (1.5, -1.5, 2.0**100, 2.0**-126):
            got, _, fell_back = RULE.run(a, b, rcp_candidates(b)[-1])
            assert not fell_back and same(got, div_rn(a, b))


def test_rule_without_float32_operands_is_plain_division():
    x = jnp.arange(1, 7, dtype=jnp.int32)
    assert (substitute.div_rcp_fma(x * 7, x) == 7).all()


def test_rule_selection(monkeypatch):
    """Default: div.rn.f32, the rule set unchanged; LOWBIT_JAX_TRITON_DIV=rcp or an argument picks the rcp rule,
    in the kernels too; anything else is an error."""
    assert substitute.TRITON_RULES[jax.lax.div_p] is substitute.div_ptx
    assert substitute.TRITON_RULES_RCP[jax.lax.div_p] is substitute.div_rcp_fma
    assert {k: v for k, v in substitute.TRITON_RULES_RCP.items() if k is not jax.lax.div_p} == {
        k: v for k, v in substitute.TRITON_RULES.items() if k is not jax.lax.div_p
    }
    monkeypatch.delenv(substitute.TRITON_DIV_ENV, raising=False)
    assert substitute.triton_rules() is substitute.TRITON_RULES is pq._rules("triton")
    assert substitute.triton_rules("rcp") is substitute.TRITON_RULES_RCP
    monkeypatch.setenv(substitute.TRITON_DIV_ENV, "rcp")
    assert (
        pq._rules("triton") is substitute.TRITON_RULES_RCP and substitute.triton_rules("rn") is substitute.TRITON_RULES
    )
    assert pq._rules("interpret") is None and pq._rules("interpret_portable") is substitute.PORTABLE_RULES
    monkeypatch.setenv(substitute.TRITON_DIV_ENV, "fast")
    with pytest.raises(ValueError, match="LOWBIT_JAX_TRITON_DIV"):
        substitute.triton_rules()


def test_ptx_block_is_the_documented_range():
    """The PTX compares against the module's range constants (the interpreter runs that text; this pins that
    the constants name it)."""
    text = substitute.DIV_RCP_FMA_PTX
    (lo_a, hi_a), (lo_b, hi_b) = substitute.RCP_A_EXPONENTS, substitute.RCP_B_EXPONENTS
    lo_d, hi_d = substitute.RCP_EXPONENT_DIFFERENCES
    for offset, count in ((lo_a, hi_a - lo_a + 1), (lo_b, hi_b - lo_b + 1), (lo_d, hi_d - lo_d + 1)):
        assert re.search(rf"sub\.s32 dv_t, dv_\w+, {offset};\n(setp\.lt\.(and\.)?u32 dv_\w+, dv_t, {count})", text)
    assert text.count("fma.rn.f32") == 4 and text.count("mul.rn.f32") == 1 and text.count("div.rn.f32") == 1


# ------------------------------------------------------------------------------------------ GPU only
def adversarial_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Every (a, b) of the CPU tests above (float32 arrays), for the hardware comparison."""
    rng = random.Random(7)
    pairs = closest_to_midpoints(range((1 << 24) - 16, 1 << 24), [t for t in range(-15, 16) if t], PLACEMENTS)
    pairs += closest_to_midpoints([rng.randrange(1 << 23, 1 << 24) for _ in range(2000)], [-3, -1, 1, 3], PLACEMENTS)
    pairs += random_pairs(4, 20000) + kernel_pairs(5, 20000) + midpoint_pairs(3, 4000) + significand_edge_pairs()
    lo_d, hi_d = substitute.RCP_EXPONENT_DIFFERENCES
    for ea in range(0, 256, 3):
        for eb in (0, 1, 2, 125, 250, 251, 252, 253, 255, ea - lo_d, ea - hi_d, ea - hi_d - 1, ea - lo_d + 1):
            if 0 <= eb <= 255:
                pairs += _edge_pairs(rng, ea, eb, n=2)
    a, b = (np.array(v, np.float32) for v in zip(*pairs))
    return a, b


def _gpu_divide(rule, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """rule(a, b) in a Pallas Triton kernel over (rows, 128) tiles of 64 rows."""
    from jax.experimental import pallas as pl
    from jax.experimental.pallas import triton as pltriton

    cols, tile = 128, 64
    n = a.size
    rows = -(-n // (cols * tile)) * tile
    pad = rows * cols - n
    a2 = np.concatenate([a, np.ones(pad, np.float32)]).reshape(rows, cols)
    b2 = np.concatenate([b, np.ones(pad, np.float32)]).reshape(rows, cols)

    def kernel(a_ref, b_ref, o_ref):
        o_ref[...] = rule(a_ref[...], b_ref[...])

    spec = pl.BlockSpec((tile, cols), lambda i: (i, 0))
    out = pl.pallas_call(
        kernel,
        out_shape=jax.ShapeDtypeStruct((rows, cols), jnp.float32),
        grid=(rows // tile,),
        in_specs=[spec, spec],
        out_specs=spec,
        compiler_params=pltriton.CompilerParams(num_warps=4, num_stages=1),
    )(jnp.asarray(a2), jnp.asarray(b2))
    return np.asarray(jax.device_get(out)).reshape(-1)[:n]


def _assert_bits_equal(got: np.ndarray, want: np.ndarray, a: np.ndarray, b: np.ndarray, what: str) -> None:
    both_nan = np.isnan(got) & np.isnan(want)
    bad = ~both_nan & (got.view(np.uint32) != want.view(np.uint32))
    if bad.any():
        rows = [f"{a[i]!r} / {b[i]!r}: {got[i]!r} vs {want[i]!r}" for i in np.flatnonzero(bad)[:8]]
        raise AssertionError(f"{what}: {int(bad.sum())} of {bad.size} differ\n" + "\n".join(rows))


def test_gpu_rcp_rule_is_div_rn_bit_for_bit():
    """On the GPU: div_rcp_fma == div.rn.f32 == the CPU's IEEE float32 division, over the adversarial operands
    of the CPU tests and 2^20 random ones (every exponent, both signs)."""
    a, b = adversarial_arrays()
    rng = np.random.default_rng(8)
    ra, rb = (rng.integers(0, 2**32, 2**20, dtype=np.uint64).astype(np.uint32).view(np.float32) for _ in range(2))
    a, b = np.concatenate([a, ra]), np.concatenate([b, rb])
    with np.errstate(all="ignore"):
        want = a / b  # numpy float32 division: IEEE, subnormals kept
    rcp = _gpu_divide(substitute.div_rcp_fma, a, b)
    rn = _gpu_divide(substitute.div_ptx, a, b)
    _assert_bits_equal(rn, want, a, b, "div.rn.f32 vs the CPU")
    _assert_bits_equal(rcp, rn, a, b, "div_rcp_fma vs div.rn.f32")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("name", ["nvfp4", "nvint4", "fp8_channel", "int8_channel"])
def test_gpu_kernels_with_the_rcp_division_match_the_cpu_reference(name, dtype, monkeypatch):
    """The NV and per-channel kernels traced with LOWBIT_JAX_TRITON_DIV=rcp (a fresh jit: the variable is read
    at trace time) give the CPU reference's bits."""
    rng = np.random.default_rng(9)
    x = rng.standard_normal((256, 4128)).astype(np.float32) * np.exp2(rng.integers(-12, 12, (256, 1)))
    x[0, 3], x[1, 40], x[2, :32], x[3, 5] = np.nan, np.inf, 0.0, 1e-30
    x = jnp.asarray(x.astype(np.float32)).astype(dtype)
    fmt = lb.get_format(name)
    cpu = jax.devices("cpu")[0]
    want = jax.jit(lambda v: reference.fake_quant_ref(v, fmt), device=cpu)(jax.device_put(x, cpu))
    monkeypatch.setenv(substitute.TRITON_DIV_ENV, "rcp")
    kernel = jax.jit(functools.partial(pq.fake_quant_pallas.__wrapped__, fmt=fmt, backend="triton"))
    got = np.asarray(jax.device_get(kernel(x))).astype(np.float32)
    want = np.asarray(jax.device_get(want)).astype(np.float32)
    _assert_bits_equal(got, want, got, want, name)


for _name, _fn in list(globals().items()):
    if _name.startswith("test_gpu_"):
        globals()[_name] = functools.reduce(lambda f, mark: mark(f), gpu, _fn)
