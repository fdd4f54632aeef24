"""Gate-level cost model of block-scaled MAC units (arXiv 2510.25602 §6, App. C, Tables 5-7, Eq. 44-48), extended to
per-block adaptive formats (IF4/IF6, arXiv 2603.28765; MXIF; NVFP4 Four Over Six, arXiv 2512.02010).

A k-lane MAC array (one lane per block element; k = the block size: 32 for MX, 16 for NV) feeds one shared
dequantizer and one shared FP32 accumulator per block. Only combinational cells are counted (no registers,
quantizer, wiring or place-and-route), as in the paper. Table 6 gives each sub-block's dominant cell count; each is
expanded here into a textbook circuit so that Eq. 45-48 can weigh cell types:

    multiplier      a x b bits (INT: the element widths; FP: y+1 mantissa bits): Braun array, a*b AND,
                    a(b-2) FA, a HA (a >= b; exact Braun counts when a = b)        Table 6: k(x+y+1)^2 | k(y+1)^2
    int adder       ripple adder of the product width a+b: (w-1) FA + 1 HA          Table 6: 2k(x+y+1)
    exponent adder  x-bit ripple adder                                              Table 6: k*x
    mantissa adder  n-bit ripple adder                                              Table 6: k*n
    exp subtractor  x XOR + x FA (a + ~b + 1)                                       Table 6: k*x
    comparator      x XOR + x AND + x OR                                            Table 6: k*x
    aligner         barrel shifter, n * ceil(log2 n) MUX2 (whole stages)            Table 6: k*n*log2 n
    normalizer      n * ceil(log2 n) MUX2 + (n-1) OR leading-one tree, once per k   Table 6: n*log2 n (shared)

with the aligner width n = min(2^(x+1) + 2y, psum_bits) (Eq. 44; 24 / 14 / 10 for E4M3 / E2M3 / E2M1). Sign logic
is not counted (Baugh-Wooley INT multipliers and FP sign XORs are a few gates per lane). Per block:
dequantizer UE8M0 = two 8-bit integer additions; E4M3 = two FP multiplications: the scale product s_a s_b (4x4
mantissa array + 4-bit exponent adder, Table 6's FP multiplier) and the block sum times that 8-bit product (w x 8
array + 5-bit exponent adder), w the width of the exact block sum: a.bits + b.bits + log2 k for INT lanes (12 for
NVINT4), n + log2 k for FP lanes (14 for NVFP4). Accumulator = one FP32 adder (x = 8, y = 23, so n = 24) with the
FP-add rows.

Throughput: a "slot" delivers one 8-bit MAC or `throughput_ratio` (= 2, Blackwell's 1:2; Table 7) MACs of <= 4-bit
elements per cycle; every figure is per slot, shared blocks times the blocks finished per slot per cycle (lanes / k).
Single-format units (`single_throughput`): "mac" (default) gives every one the same MAC rate, one lane per slot,
which is what Table 5's "normalized, equal throughput" says; "slot" gives the <= 4-bit ones throughput_ratio lanes,
as a Blackwell slot, which doubles their cost. Under "slot" no cell factors at all reach the paper's NVFP4 ratio:
a Table 5 ratio is a weighted mean of the per-cell count ratios (`reachable`), and NVFP4's lie in 0.88-1.74.
Mixed units provision the dequantizers of both modes and one accumulator at the faster block rate. Table 7 schemes
(slot = one MX 8-bit MAC or r NV 4-bit MACs): INT "none" 1 int8 + r int4 lanes; "reuse1" the int8 lane also runs
int4 (XXXX_0000) + r-1 int4 lanes; "reuse2" (adopted) r int8 x (u)int4 lanes, whose int8-mode nibble products
are shift-added once per block (a 2b + log2 k bit "combine adder"); FP "none" 1 e4m3 + r e2m1; "reuse" (adopted)
the e4m3 lane also runs e2m1 (S_00XX_X00) + r-1 e2m1 lanes. Operand steering is wiring, uncounted for both kinds;
a lane that runs NV blocks shares its normalizer among 16 lanes.

Aggregation, Eq. 45-48: Area = sum_s sum_g c_sg A_g, Energy = sum_s sum_g c_sg E_g tau_g over MAC, dequantizer and
accumulator (shared parts / k per lane). The paper's TSMC FinFET factors are not published: only ratios compare.
Default factors (relative to NAND2 = 1; `CellLibrary` takes any others):

    cell   area  energy   area: X1 cell areas of the open Nangate 45 nm library (NAND2 0.798, AND2/OR2 1.064, XOR2
    AND2   1.33  1.5            1.596, MUX2 1.862, HA 2.660, FA 4.256 um^2; recalled, not re-read from the files),
    OR2    1.33  1.5            consistent with gate-equivalent rules (AND = NAND + INV; FA ~ 5-7 GE).
    XOR2   2.00  3.0      energy: dynamic energy per output toggle ~ switched capacitance ~ transistor count of the
    MUX2   2.33  3.0            static-CMOS cell / 4 (NAND2 4T, AND/OR 6T, XOR2 and MUX2 12T, HA = XOR2 + AND2 18T,
    HA     3.33  4.5            FA 28T mirror adder); layout area shrinks complex cells by diffusion sharing, energy
    FA     5.33  7.0            does so less. Toggle rate tau = 0.5 for every cell (one tau, as the paper; cancels).

Adaptive formats (`format_unit` of an lb.AdaptiveFormat; `HardwareParams.adaptive_model` picks the datapath). Each
operand block carries its own choice, so a lane meets every ordered pair of candidates (FP x FP, INT x INT and
the mixed INT x FP). The quantizer, and with it the per-block selection (every candidate quantized, errors
compared), is not modelled, as for every other format: only the MAC array is. Candidates sharing one element
type (Four Over Six: E2M1 mapped to 6 or to 4, the choice stored as the scale itself) leave the MAC unchanged,
so `nvfp4_4over6` costs exactly what NVFP4 does under either model. Otherwise, per slot:

  "mux"      one complete Table 6 lane per candidate pair side by side: FP x FP and INT x INT as above, and a
             mixed lane (b-bit INT times the (y+1)-bit significand: b x (y+1) array, no exponent adder, FP-add
             rows of width n = min(2^x + y + b, psum_bits), Eq. 44's count with the INT operand's b bits in place
             of one FP operand's 2^x + y) that also runs FP x INT through an operand swap (2b MUX2 per lane).
             Each pair reduces its block in its own adder; a mux selects the block sum of the pair in use
             (block-sum bits x (pairs - 1) MUX2, once per block) in front of the dequantizer and accumulator.
  "unified"  one lane (as the IF4 MAC RTL of the Four Over Six repository does): each operand is decoded into a
             common sign-magnitude fixed point of w bits (FP: the significand shifted left by max(e - 1, 0),
             w x ceil(log2(2^x - 1)) MUX2; INT: the magnitude of the two's complement code, (b-1) XOR + (b-1) HA;
             the block's selector picks one of them, w x (candidates - 1) MUX2), a w x w array, and an integer
             lane adder of 2w + 1 bits; no aligner; the product's sign is uncounted, as in the FP lanes.
             w = max(bits(max / min_subnormal) of the FP grids, b - 1): 4 for E2M1/INT4 (the RTL's Q4.1 spends
             one more), 6 for E2M3/INT6. Where 2w exceeds
             psum_bits (E4M3: 18-bit magnitudes) a fixed point is not exact, and the common code keeps the FP
             exponent instead: an FP lane whose significand multiplier is widened to s = max(y + 1, b - 1) bits,
             INT codes entering with a constant exponent (x AND gates), Eq. 44 with y = s - 1 (MXIF8: 7 x 7,
             n = 24); the INT decode and the s-bit select are as above.

Mode constants (both models). A product's value is P * u_a * u_b * s_a * s_b, u the value of one unit of the
decoded operand: FP 2^-f in the fixed point (f = -log2 min_subnormal; 1 in an FP lane), INT c * 2^-(shift + t)
with c = top / qmax for stretched grids (IF4: 6/7) and 1 otherwise, shift the OCP UE8M0 offset (MXINT: b - 2),
t the largest shift <= f that keeps (2^(b-1) - 1) * 2^t within w bits (the RTL's INT placement). Relative to the
first pair, each ordered pair needs R = u_a u_b / u_0^2 = C * 2^E (E = round(log2 R)). Per block:
  - distinct E: an exponent adder (8 bits UE8M0, 5 bits E4M3) adding the selected offset, and a mux of the
    offsets (exponent bits x (distinct E - 1) MUX2);
  - C != 1 (stretched INT grids: IF4 6/7 and 36/49 when both operands are INT; IF6 30/31 and 900/961): the
    scale significand (E4M3: the 8-bit s_a s_b product) times the selected constant, a q x 8 array
    (q = `const_bits`, default the accumulator's 24-bit significand: the constants are not dyadic, and a
    narrower one would change the dequantized values) with the constants muxed onto it (q x (distinct C - 1)
    MUX2), and the block-sum multiplication of the dequantizer widened from 8 to q bits. A single format with
    such a grid (if4_int alone) folds its one constant into the FP32 tensor scale and pays nothing;
  - selector decode: one AND tree per ordered candidate pair, n^2 (2 ceil(log2 n) - 1) AND.
The selector itself is wiring: the E4M3 sign bit (IF4/IF6) or a stored bit beside the scale (MXIF). Energy counts
every cell toggling at the library's rate, as for the other units, so the mux model's energy is an upper bound
(a design that isolates the idle pairs' operands switches one pair per block).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

import lowbit_jax as lb
from lowbit_jax.formats import ElemType, FPElem, IntElem, ScaledIntElem

Cells = dict[str, float]  # cell type -> count
CELLS = ("AND", "OR", "XOR", "MUX2", "HA", "FA")
DEFAULT_AREA = {"AND": 1.33, "OR": 1.33, "XOR": 2.0, "MUX2": 2.33, "HA": 3.33, "FA": 5.33}
DEFAULT_ENERGY = {"AND": 1.5, "OR": 1.5, "XOR": 3.0, "MUX2": 3.0, "HA": 4.5, "FA": 7.0}
DEFAULT_TOGGLE = dict.fromkeys(CELLS, 0.5)
NAMES = ("MXFP8", "MXINT8", "NVFP4", "NVINT4", "MXFP8+NVFP4", "MXINT8+NVINT4")
INT_SCHEMES, FP_SCHEMES = ("none", "reuse1", "reuse2"), ("none", "reuse")
SINGLE_THROUGHPUTS = ("mac", "slot")
ADAPTIVE_MODELS = ("mux", "unified")


@dataclass(frozen=True)
class CellLibrary:
    """Per-cell area A_g, energy per toggle E_g and toggle rate tau_g (Eq. 45-46), relative units."""

    area: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_AREA))
    energy: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_ENERGY))
    toggle: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_TOGGLE))

    def __post_init__(self):
        for what in ("area", "energy", "toggle"):
            table = getattr(self, what)
            if set(table) != set(CELLS) or not all(v > 0 for v in table.values()):
                raise ValueError(f"CellLibrary.{what} needs a positive factor for each of {CELLS}; got {table}")

    def scaled(self, cell: str, factor: float) -> CellLibrary:
        """The library with `cell`'s area and energy factors multiplied by `factor`."""
        times = lambda table: {**table, cell: table[cell] * factor}
        return CellLibrary(times(self.area), times(self.energy), self.toggle)


@dataclass(frozen=True)
class HardwareParams:
    psum_bits: int = 24  # Eq. 44 cap on the aligner width
    throughput_ratio: int = 2  # <=4-bit MACs per 8-bit MAC slot (Table 7)
    single_throughput: str = "mac"  # single-format units: "mac" (one MAC per slot each) or "slot" (as mixed units)
    int_scheme: str = "reuse2"  # Table 7: "none", "reuse1", "reuse2" (adopted)
    fp_scheme: str = "reuse"  # Table 7: "none", "reuse" (adopted)
    acc_exp_bits: int = 8  # FP32 accumulator
    acc_man_bits: int = 23
    adaptive_model: str = "unified"  # adaptive formats: "mux" (a lane per candidate pair) or "unified" (one lane)
    const_bits: int | None = (
        None  # significand bits of a scale times a non-dyadic mode constant; None: acc_man_bits + 1
    )

    def __post_init__(self):
        if self.int_scheme not in INT_SCHEMES or self.fp_scheme not in FP_SCHEMES:
            raise ValueError(f"int_scheme must be one of {INT_SCHEMES} and fp_scheme one of {FP_SCHEMES}")
        if self.single_throughput not in SINGLE_THROUGHPUTS:
            raise ValueError(f"single_throughput must be one of {SINGLE_THROUGHPUTS}, got {self.single_throughput!r}")
        if self.adaptive_model not in ADAPTIVE_MODELS:
            raise ValueError(f"adaptive_model must be one of {ADAPTIVE_MODELS}, got {self.adaptive_model!r}")
        if self.psum_bits < 2 or self.throughput_ratio < 1 or self.acc_exp_bits < 1 or self.acc_man_bits < 0:
            raise ValueError("psum_bits >= 2, throughput_ratio >= 1 and a valid accumulator FP(e, m) are required")
        if self.const_bits is not None and self.const_bits < 1:
            raise ValueError(f"const_bits must be a positive number of bits (or None), got {self.const_bits!r}")

    @property
    def constant_bits(self) -> int:
        """q: the significand bits of a scale product times a non-dyadic mode constant."""
        return self.acc_man_bits + 1 if self.const_bits is None else self.const_bits


# --- circuits (Table 6 rows) -----------------------------------------------------------------------------------


def _sum(*parts: Cells, scale: float = 1.0) -> Cells:
    out: Cells = {}
    for p in parts:
        for g, c in p.items():
            out[g] = out.get(g, 0.0) + scale * c
    return {g: c for g, c in out.items() if c}


def stages(n: int) -> int:
    """Mux stages of an n-bit barrel shifter: ceil(log2 n) (0 for n <= 1)."""
    return math.ceil(math.log2(n)) if n > 1 else 0


def aligner_width(exp_bits: int, man_bits: int, psum_bits: int = 24) -> int:
    """Eq. 44: n = min(2^(x+1) + 2y, psum_bit_width)."""
    return min(2 ** (exp_bits + 1) + 2 * man_bits, psum_bits)


def array_multiplier(a: int, b: int) -> Cells:
    """Braun array multiplier: a*b AND, a(b-2) FA, a HA (a >= b >= 2); a single row of ANDs when b = 1."""
    a, b = max(a, b), min(a, b)
    return _sum({"AND": a * b}, {"FA": a * (b - 2), "HA": a} if b >= 2 else {})


def ripple_adder(width: int) -> Cells:
    return _sum({"FA": width - 1, "HA": 1}) if width > 0 else {}


def subtractor(width: int) -> Cells:
    return {"XOR": width, "FA": width} if width > 0 else {}


def comparator(width: int) -> Cells:
    return {"XOR": width, "AND": width, "OR": width} if width > 0 else {}


def barrel_shifter(n: int) -> Cells:
    return _sum({"MUX2": n * stages(n)})


def normalizer(n: int) -> Cells:
    return _sum(barrel_shifter(n), {"OR": n - 1})


def fp_adder(exp_bits: int, man_bits: int, psum_bits: int = 24) -> dict[str, Cells]:
    """The FP-add rows of Table 6 for one lane, with the normalizer unshared."""
    n = aligner_width(exp_bits, man_bits, psum_bits)
    return {
        "mantissa adder": ripple_adder(n),
        "exponent subtractor": subtractor(exp_bits),
        "comparator": comparator(exp_bits),
        "aligner": barrel_shifter(n),
        "normalizer": normalizer(n),
    }


def _check_lane(a: ElemType, b: ElemType) -> None:
    lane_types = FPElem | IntElem | ScaledIntElem  # a stretched INT grid multiplies its integer codes
    if not isinstance(a, lane_types) or not isinstance(b, lane_types):
        raise ValueError(f"a MAC lane needs FPElem or IntElem operands; got {a!r} x {b!r}")
    if a.kind != b.kind or (a.kind == "fp" and (a.exp_bits, a.man_bits) != (b.exp_bits, b.man_bits)):
        raise ValueError(f"a lane multiplies two INT elements or two equal FP elements; got {a.name} x {b.name}")


def table6_units(a: ElemType, b: ElemType | None = None, k: int = 1, psum_bits: int = 24) -> dict[str, int]:
    """Table 6's dominant cell counts for k lanes (log2 n as whole stages)."""
    b = a if b is None else b
    _check_lane(a, b)
    if a.kind == "int":
        return {"multiplier": k * a.bits * b.bits, "int adder": k * (a.bits + b.bits)}
    x, n = a.exp_bits, aligner_width(a.exp_bits, a.man_bits, psum_bits)
    return {
        "multiplier": k * (a.man_bits + 1) ** 2,
        "exponent adder": k * x,
        "mantissa adder": k * n,
        "exponent subtractor": k * x,
        "comparator": k * x,
        "aligner": k * n * stages(n),
        "normalizer": n * stages(n),
    }


def mac_cells(a: ElemType, b: ElemType | None = None, k: int = 1, psum_bits: int = 24) -> dict[str, Cells]:
    """Cells of k MAC lanes, per Table 6 row (the FP normalizer once for all k)."""
    b = a if b is None else b
    _check_lane(a, b)
    if a.kind == "int":
        rows = {"multiplier": array_multiplier(a.bits, b.bits), "int adder": ripple_adder(a.bits + b.bits)}
    else:
        m = a.man_bits + 1
        rows = {"multiplier": array_multiplier(m, m), "exponent adder": ripple_adder(a.exp_bits)}
        rows |= fp_adder(a.exp_bits, a.man_bits, psum_bits)
    return {s: _sum(c, scale=1 if s == "normalizer" else k) for s, c in rows.items()}


def block_sum_bits(a: ElemType, b: ElemType, k: int, psum_bits: int = 24) -> int:
    """Width of the exact sum of k products a x b: the product width (INT) or aligner width n (FP), plus log2 k."""
    _check_lane(a, b)
    product = a.bits + b.bits if a.kind == "int" else aligner_width(a.exp_bits, a.man_bits, psum_bits)
    return product + stages(k)


def dequantizer_cells(scale: str, sum_bits: int, scale_bits: int | None = None) -> Cells:
    """Per block: UE8M0 two 8-bit exponent adds; E4M3 the scale product s_a s_b (Table 6 FP multiplier, 4x4) and
    the `sum_bits`-wide block sum times it (sum_bits x 8 array, 5-bit exponent adder). `scale_bits`: the width
    of a scale significand widened by a mode constant (adaptive formats), which the block sum is then multiplied
    by (a sum_bits x scale_bits array, also under UE8M0)."""
    if scale == "ue8m0":
        widened = array_multiplier(sum_bits, scale_bits) if scale_bits else {}
        return _sum(ripple_adder(8), ripple_adder(8), widened)
    if scale == "e4m3":
        width = scale_bits or 8
        return _sum(array_multiplier(4, 4), ripple_adder(4), array_multiplier(sum_bits, width), ripple_adder(5))
    raise ValueError(f"the cost model knows UE8M0 (MX) and E4M3 (NV) block scales, not {scale!r}")


def accumulator_cells(p: HardwareParams) -> Cells:
    """Per block: one FP adder of the accumulator type (FP32 by default)."""
    return _sum(*fp_adder(p.acc_exp_bits, p.acc_man_bits, p.psum_bits).values())


# --- adaptive lanes (module docstring: "mux" and "unified") ------------------------------------------------------


def shifter(width: int, positions: int) -> Cells:
    """A left shifter of a `width`-bit result by 0..positions-1 places: width x ceil(log2 positions) MUX2."""
    return _sum({"MUX2": width * stages(positions)})


def int_magnitude(bits: int) -> Cells:
    """|k| of a b-bit two's complement code: the b-1 low bits XOR the sign, plus the sign (b-1 HA incrementer)."""
    return {"XOR": bits - 1, "HA": bits - 1} if bits > 1 else {}


def mixed_aligner_width(exp_bits: int, man_bits: int, int_bits: int, psum_bits: int = 24) -> int:
    """Eq. 44 for an INT(b) x FP(x, y) product: one FP operand's 2^x + y bits plus the INT operand's b."""
    return min(2**exp_bits + man_bits + int_bits, psum_bits)


def _key(e: ElemType) -> tuple:
    """What a lane sees of an element: FP (x, y), or INT width (a stretched grid multiplies integer codes)."""
    return ("fp", e.exp_bits, e.man_bits) if e.kind == "fp" else ("int", e.bits)


def _lane_elems(elems: tuple[ElemType, ...]) -> tuple[ElemType, ...]:
    """The candidates' elements, one per lane key, in candidate order."""
    seen: dict[tuple, ElemType] = {}
    for e in elems:
        _check_lane(e, e)
        seen.setdefault(_key(e), e)
    return tuple(seen.values())


def _pairs(elems: tuple[ElemType, ...]) -> list[tuple[ElemType, ElemType]]:
    """The unordered lane pairs (a, b), INT first in a mixed pair; two different FP elements are not modelled."""
    out = []
    for i, a in enumerate(elems):
        for b in elems[i:]:
            if a.kind == b.kind == "fp" and a is not b:
                raise ValueError(f"no lane multiplies two different FP elements ({a.name} x {b.name})")
            out.append((b, a) if (a.kind, b.kind) == ("fp", "int") else (a, b))
    return out


def mixed_mac_cells(i: ElemType, f: ElemType, k: int = 1, psum_bits: int = 24) -> dict[str, Cells]:
    """Cells of k INT(b) x FP(x, y) lanes: b x (y+1) array; one exponent, so no exponent adder; the FP-add rows at
    the mixed Eq. 44 width (normalizer once for all k)."""
    if i.kind != "int" or f.kind != "fp":
        raise ValueError(f"a mixed lane multiplies an INT by an FP element; got {i.name} x {f.name}")
    n = mixed_aligner_width(f.exp_bits, f.man_bits, i.bits, psum_bits)
    rows = {
        "multiplier": array_multiplier(i.bits, f.man_bits + 1),
        "mantissa adder": ripple_adder(n),
        "exponent subtractor": subtractor(f.exp_bits),
        "comparator": comparator(f.exp_bits),
        "aligner": barrel_shifter(n),
        "normalizer": normalizer(n),
    }
    return {s: _sum(c, scale=1 if s == "normalizer" else k) for s, c in rows.items()}


def _pair_name(a: ElemType, b: ElemType) -> str:
    return f"{a.name} x {b.name}"


def _pair_sum_bits(a: ElemType, b: ElemType, k: int, psum_bits: int) -> int:
    if a.kind == b.kind:
        return block_sum_bits(a, b, k, psum_bits)
    return mixed_aligner_width(b.exp_bits, b.man_bits, a.bits, psum_bits) + stages(k)


def fixed_point_bits(e: ElemType) -> int:
    """w of one element in a sign-magnitude fixed point: FP bits(max / min_subnormal), INT b - 1."""
    if e.kind == "int":
        return e.bits - 1
    return int(Fraction(e.max) / Fraction(e.min_subnormal)).bit_length()


def _fraction_bits(e: ElemType) -> int:
    """f = -log2 of an FP grid's min_subnormal (the fixed point's fraction bits); 0 for INT."""
    return 0 if e.kind == "int" else Fraction(e.min_subnormal).denominator.bit_length() - 1


def unified_layout(elems: tuple[ElemType, ...], psum_bits: int = 24) -> tuple[str, int]:
    """("fixed", w) where the common sign-magnitude fixed point holds every product within psum_bits, else
    ("float", s): an FP lane with an s-bit significand (s = max(y + 1, b - 1))."""
    elems = _lane_elems(elems)
    w = max(fixed_point_bits(e) for e in elems)
    if 2 * w <= psum_bits:
        return "fixed", w
    return "float", max(e.man_bits + 1 if e.kind == "fp" else e.bits - 1 for e in elems)


def _int_shift(e: ElemType, elems: tuple[ElemType, ...], w: int) -> int:
    """t: the largest shift <= the fixed point's fraction bits that keeps an INT grid's qmax * 2^t in w bits."""
    f = max(_fraction_bits(x) for x in elems)
    qmax = 2 ** (e.bits - 1) - 1
    return max(t for t in range(f + 1) if qmax << t < 2**w)


def unified_mac_cells(elems: tuple[ElemType, ...], k: int = 1, psum_bits: int = 24) -> dict[str, Cells]:
    """Cells of k "unified" lanes for the candidates' elements (module docstring): per operand each candidate's
    decoder and a select, then an integer (fixed point) or FP (float layout) multiply-add."""
    elems = _lane_elems(elems)
    layout, w = unified_layout(elems, psum_bits)
    select = {"MUX2": w * (len(elems) - 1)}
    ints = [e for e in elems if e.kind == "int"]
    fps = [e for e in elems if e.kind == "fp"]
    if layout == "fixed":
        decode = _sum(*(int_magnitude(e.bits) for e in ints), *(shifter(w, 2**e.exp_bits - 1) for e in fps))
        rows = {
            "decode": _sum(decode, scale=2),
            "operand select": _sum(select, scale=2),
            "multiplier": array_multiplier(w, w),
            "int adder": ripple_adder(2 * w + 1),
        }
    else:
        if len(fps) != 1:
            raise ValueError(f"a unified FP lane needs exactly one FP candidate; got {[e.name for e in elems]}")
        (f,) = fps
        decode = _sum(*(int_magnitude(e.bits) for e in ints), {"AND": f.exp_bits} if ints else {})
        rows = {
            "decode": _sum(decode, scale=2),
            "operand select": _sum(select, scale=2),
            "multiplier": array_multiplier(w, w),
            "exponent adder": ripple_adder(f.exp_bits),
        }
        rows |= fp_adder(f.exp_bits, w - 1, psum_bits)
    return {s: _sum(c, scale=1 if s == "normalizer" else k) for s, c in rows.items()}


def unified_sum_bits(elems: tuple[ElemType, ...], k: int, psum_bits: int = 24) -> int:
    """Block-sum width of the unified lane: 2w + 1 + log2 k (fixed point) or Eq. 44 with y = s - 1, + log2 k."""
    layout, w = unified_layout(elems, psum_bits)
    if layout == "fixed":
        return 2 * w + 1 + stages(k)
    (f,) = [e for e in _lane_elems(elems) if e.kind == "fp"]
    return aligner_width(f.exp_bits, w - 1, psum_bits) + stages(k)


def operand_unit(e: ElemType, elems: tuple[ElemType, ...], model: str, scale: str, psum_bits: int = 24) -> Fraction:
    """u: the value (relative to the stored block scale) of one unit of e's decoded operand in the lane that
    multiplies it (module docstring, "Mode constants")."""
    fixed = model == "unified" and unified_layout(elems, psum_bits)[0] == "fixed"
    if e.kind == "fp":
        return Fraction(1, 2 ** max(_fraction_bits(x) for x in elems if x.kind == "fp")) if fixed else Fraction(1)
    c = Fraction(e.top) / (2 ** (e.bits - 1) - 1) if isinstance(e, ScaledIntElem) else Fraction(1)
    shift = e.scale_shift if scale == "ue8m0" else 0
    t = _int_shift(e, _lane_elems(elems), unified_layout(elems, psum_bits)[1]) if fixed else 0
    return c / 2 ** (shift + t)


def mode_constants(
    elems: tuple[ElemType, ...], model: str, scale: str, psum_bits: int = 24
) -> dict[tuple[int, int], tuple[Fraction, int]]:
    """{(i, j): (C, E)} for every ordered candidate pair: R = u_i u_j / u_0^2 = C * 2^E with E = round(log2 R)."""
    u = [operand_unit(e, elems, model, scale, psum_bits) for e in elems]
    out = {}
    for i in range(len(elems)):
        for j in range(len(elems)):
            r = u[i] * u[j] / (u[0] * u[0])
            e = math.floor(math.log2(r) + 0.5)
            out[(i, j)] = (r / Fraction(2) ** e, e)
    return out


def constant_cells(constants, scale: str, q: int) -> tuple[Cells, int | None]:
    """(cells per block, widened scale significand bits or None) for the mode constants: an exponent adder and an
    offset mux for distinct E, a q x sig array with the constants muxed on it for C != 1 (sig: 8 for E4M3's
    scale product, 1 for UE8M0, whose significand is the constant itself)."""
    cs = {c for c, _ in constants.values()}
    es = {e for _, e in constants.values()}
    exp_width = 8 if scale == "ue8m0" else 5
    cells: Cells = {}
    if len(es) > 1:
        cells = _sum(ripple_adder(exp_width), {"MUX2": exp_width * (len(es) - 1)})
    if cs == {Fraction(1)}:
        return cells, None
    sig = 8 if scale == "e4m3" else 1
    cells = _sum(cells, {"MUX2": q * (len(cs) - 1)}, array_multiplier(q, sig) if sig > 1 else {})
    return cells, q


def selector_decode(n: int) -> Cells:
    """One AND tree per ordered candidate pair over both operands' ceil(log2 n) selector bits."""
    s = stages(n)
    return {"AND": n * n * (2 * s - 1)} if s else {}


@dataclass(frozen=True)
class AdaptiveLane:
    """One MAC position of an adaptive format with distinct candidate elements, built per `model`."""

    elems: tuple[ElemType, ...]
    k: int
    model: str


def lane_cells(lane: Lane | AdaptiveLane, p: HardwareParams = HardwareParams()) -> dict[str, Cells]:
    """Cells of one lane by sub-block, its shared normalizers divided by the lanes that share them (lane.k)."""
    if isinstance(lane, Lane):
        rows = mac_cells(lane.a, lane.b, 1, p.psum_bits)
    elif lane.model == "unified":
        rows = unified_mac_cells(lane.elems, 1, p.psum_bits)
    else:
        rows = {}
        for a, b in _pairs(_lane_elems(lane.elems)):
            same = a.kind == b.kind
            cells = mac_cells(a, b, 1, p.psum_bits) if same else mixed_mac_cells(a, b, 1, p.psum_bits)
            if not same:
                cells["operand swap"] = {"MUX2": 2 * a.bits}
            rows |= {f"{_pair_name(a, b)}: {s}": c for s, c in cells.items()}
    return {s: _sum(c, scale=1 / lane.k if s.endswith("normalizer") else 1) for s, c in rows.items()}


# --- units of Table 7 (per slot) -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Lane:
    """One MAC lane a x b; `k` lanes share one normalizer (the block size of the finest mode the lane runs)."""

    a: ElemType
    b: ElemType
    k: int


@dataclass(frozen=True)
class Unit:
    """A slot of a MAC array: lanes, (scale, blocks per slot per cycle, block-sum bits) per mode, INT scheme-2
    combine adder, and an adaptive format's per-block logic: (sub-block, blocks per slot per cycle, cells per
    block) rows and the widened scale significand of its dequantizer (None: the scale's own)."""

    name: str
    lanes: tuple[Lane | AdaptiveLane, ...]
    modes: tuple[tuple[str, float, int], ...]
    combine: tuple[int, float] = (0, 0.0)  # (adder width, per-slot rate)
    block_logic: tuple[tuple[str, float, Cells], ...] = ()
    scale_bits: int | None = None


def _block_format(fmt: lb.Format | str) -> lb.Format:
    fmt = lb.get_format(fmt)
    if fmt.is_identity:
        raise ValueError(f"{fmt.name} is an identity format: there is no block-scaled MAC to cost")
    if fmt.scale_rule.name not in ("ue8m0", "e4m3") or not isinstance(fmt.block_size, int):
        raise ValueError(
            f"{fmt.label}: the cost model covers block-scaled MX (UE8M0) and NV (E4M3) formats with an integer "
            f"block size; got scale {fmt.scale_rule.name!r}, block {fmt.block_size!r}"
        )
    return fmt


def format_unit(fmt: lb.Format | str, p: HardwareParams = HardwareParams()) -> Unit:
    """A single-format unit, blocks of fmt.block_size: one lane, or throughput_ratio lanes for <= 4-bit elements
    when p.single_throughput is "slot". Adaptive formats get p.adaptive_model's lane (module docstring)."""
    fmt = _block_format(fmt)
    wide = fmt.elem.bits <= 4 and p.single_throughput == "slot"
    n, k, scale = p.throughput_ratio if wide else 1, fmt.block_size, fmt.scale_rule.name
    elems = _lane_elems(fmt.elem.elems) if fmt.is_adaptive else (fmt.elem,)
    if len(elems) == 1:  # a plain format, or candidates of one element type (Four Over Six): the plain MAC
        (e,) = elems
        mode = (scale, n / k, block_sum_bits(e, e, k, p.psum_bits))
        return Unit(fmt.label.upper(), (Lane(e, e, k),) * n, (mode,))
    cands = fmt.elem.elems
    lane = AdaptiveLane(cands, k, p.adaptive_model)
    if p.adaptive_model == "unified":
        sum_bits, merge = unified_sum_bits(cands, k, p.psum_bits), {}
    else:
        pairs = _pairs(_lane_elems(cands))
        sum_bits = max(_pair_sum_bits(a, b, k, p.psum_bits) for a, b in pairs)
        merge = {"MUX2": sum_bits * (len(pairs) - 1)}
    constants, scale_bits = constant_cells(
        mode_constants(cands, p.adaptive_model, scale, p.psum_bits), scale, p.constant_bits
    )
    rate = n / k
    logic = [("selector decode", rate, selector_decode(len(cands))), ("mode constants", rate, constants)]
    logic += [("pair merge", rate, merge)] if merge else []
    name = f"{fmt.label} ({p.adaptive_model})".upper()
    blocks = tuple((s, r, c) for s, r, c in logic if c)
    return Unit(name, (lane,) * n, ((scale, rate, sum_bits),), block_logic=blocks, scale_bits=scale_bits)


def mixed_unit(fmt8: lb.Format | str, fmt4: lb.Format | str, p: HardwareParams = HardwareParams()) -> Unit:
    """An 8-bit MX + 4-bit NV unit built with the Table 7 scheme of its kind (p.int_scheme or p.fp_scheme)."""
    f8, f4 = _block_format(fmt8), _block_format(fmt4)
    if f8.is_adaptive or f4.is_adaptive:
        raise ValueError(f"mixed units pair plain formats (Table 7); got {f8.label}+{f4.label}")
    e8, e4, r = f8.elem, f4.elem, p.throughput_ratio
    if e8.kind != e4.kind or e8.bits <= 4 or e4.bits > 4:
        raise ValueError(f"a mixed unit pairs a wider and a <= 4-bit format of one kind; got {f8.label}+{f4.label}")
    k8, k4, kmin = f8.block_size, f4.block_size, min(f8.block_size, f4.block_size)
    scheme = p.int_scheme if e8.kind == "int" else p.fp_scheme
    combine = (0, 0.0)
    if scheme == "none":  # separate lanes: one 8-bit, r 4-bit
        lanes = (Lane(e8, e8, k8),) + (Lane(e4, e4, k4),) * r
    elif scheme == "reuse2":  # r lanes of int8 x (u)int4; int8 mode sums the two nibble products once per block
        if e8.bits != r * e4.bits:
            raise ValueError(f"INT reuse scheme 2 needs int{r * e4.bits} = {r} x int{e4.bits}; got {e8.name}")
        lanes = (Lane(e8, e4, kmin),) * r
        combine = (2 * e8.bits + stages(k8), 1 / k8)
    else:  # reuse1 / FP reuse: the 8-bit lane also runs the 4-bit element (XXXX_0000, S_00XX_X00)
        if e8.kind == "fp" and (e8.exp_bits < e4.exp_bits or e8.man_bits < e4.man_bits):
            raise ValueError(f"{e8.name} cannot hold {e4.name}, so its lane cannot be reused")
        lanes = (Lane(e8, e8, kmin),) + (Lane(e4, e4, k4),) * (r - 1)
    name = f"{f8.label}+{f4.label}".upper()
    modes = (
        (f8.scale, 1 / k8, block_sum_bits(e8, e8, k8, p.psum_bits)),
        (f4.scale, r / k4, block_sum_bits(e4, e4, k4, p.psum_bits)),
    )
    return Unit(name, lanes, modes, combine)


def unit_cells(unit: Unit, p: HardwareParams = HardwareParams()) -> dict[str, Cells]:
    """Cells per slot by sub-block: lanes, plus shared blocks times blocks finished per slot per cycle (Eq. 45-48)."""
    rows: dict[str, list[Cells]] = {}
    for lane in unit.lanes:
        for s, c in lane_cells(lane, p).items():
            rows.setdefault(s, []).append(c)
    width, rate = unit.combine
    if width:
        rows["combine adder"] = [_sum(ripple_adder(width), scale=rate)]
    for s, r, c in unit.block_logic:
        rows.setdefault(s, []).append(_sum(c, scale=r))
    rows["dequantizer"] = [_sum(dequantizer_cells(s, w, unit.scale_bits), scale=r) for s, r, w in unit.modes]
    rows["accumulator"] = [_sum(accumulator_cells(p), scale=max(r for _, r, _ in unit.modes))]
    return {s: _sum(*parts) for s, parts in rows.items()}


def cost(cells: Cells, lib: CellLibrary = CellLibrary()) -> tuple[float, float]:
    """(area, energy) of a cell count: Eq. 45 sum c_g A_g and Eq. 46 sum c_g E_g tau_g."""
    area = sum(c * lib.area[g] for g, c in cells.items())
    energy = sum(c * lib.energy[g] * lib.toggle[g] for g, c in cells.items())
    return area, energy


def unit_cost(
    unit: Unit, lib: CellLibrary = CellLibrary(), p: HardwareParams = HardwareParams()
) -> tuple[float, float]:
    """(area, energy) per slot of a unit."""
    return cost(_sum(*unit_cells(unit, p).values()), lib)


def cost_per_mac(
    fmt: lb.Format | str, lib: CellLibrary = CellLibrary(), p: HardwareParams = HardwareParams()
) -> tuple[float, float]:
    """(area, energy) per MAC of a single-format unit of `fmt` (any MX/NV element type and integer block size;
    adaptive formats under p.adaptive_model)."""
    unit = format_unit(fmt, p)
    area, energy = unit_cost(unit, lib, p)
    return area / len(unit.lanes), energy / len(unit.lanes)


def pareto_mask(cost: np.ndarray, quality: np.ndarray) -> np.ndarray:
    """True where no other point is at least as cheap and at least as good, and strictly better in one of them."""
    cost, quality = np.asarray(cost, float), np.asarray(quality, float)
    no_worse = (cost[None, :] <= cost[:, None]) & (quality[None, :] >= quality[:, None])
    better = (cost[None, :] < cost[:, None]) | (quality[None, :] > quality[:, None])
    return ~np.any(no_worse & better, axis=1)


def paper_units(p: HardwareParams = HardwareParams()) -> dict[str, Unit]:
    """The six configurations of Table 5, keyed by NAMES."""
    units = [format_unit(n, p) for n in ("mxfp8", "mxint8", "nvfp4", "nvint4")]
    units += [mixed_unit("mxfp8", "nvfp4", p), mixed_unit("mxint8", "nvint4", p)]
    return dict(zip(NAMES, units, strict=True))


def unit_totals(p: HardwareParams = HardwareParams()) -> dict[str, Cells]:
    """Total cells per slot of each Table 5 configuration."""
    return {name: _sum(*unit_cells(u, p).values()) for name, u in paper_units(p).items()}


def ratios(area_g: np.ndarray, energy_g: np.ndarray, totals: Mapping[str, Cells]) -> dict[str, np.ndarray]:
    """Table 5 ratios for factor vectors [..., cells] (energy_g holds E_g tau_g): singles / MXFP8, mixed / mixed FP."""
    c = np.array([[totals[n].get(g, 0.0) for g in CELLS] for n in NAMES])
    out = {}
    for metric, f in (("energy", energy_g), ("area", area_g)):
        v = np.asarray(f, float) @ c.T  # [..., names]
        ref = np.where(np.arange(len(NAMES)) < 4, v[..., 0:1], v[..., 4:5])
        out[metric] = v / ref
    return out


def reference_name(name: str) -> str:
    """Table 5's normalisation: single formats relative to MXFP8, mixed units to MXFP8+NVFP4."""
    return NAMES[0] if NAMES.index(name) < 4 else NAMES[4]


def reachable(totals: Mapping[str, Cells]) -> dict[str, tuple[float, float]]:
    """The Table 5 ratio of each configuration over all positive cell factors, as (infimum, supremum).

    A ratio sum_g c_g f_g / sum_g c_ref,g f_g is a weighted mean of the per-cell ratios c_g / c_ref,g (weights
    c_ref,g f_g), so it ranges over their span, whatever the areas, energies and toggle rates; a cell missing from
    the reference makes it unbounded above."""
    out = {}
    for name in NAMES:
        cells, ref = totals[name], totals[reference_name(name)]
        per_cell = [cells.get(g, 0.0) / ref[g] if ref.get(g) else math.inf for g in CELLS if cells.get(g) or ref.get(g)]
        out[name] = (min(per_cell), max(per_cell))
    return out


def _factors_within(totals, targets, half_width, lo, hi) -> np.ndarray | None:
    """Factors f in [lo, hi] (per cell) giving each target ratio +- half_width, or None: a linear program, since
    ratio <= t + w is sum_g (c_g - (t + w) c_ref,g) f_g <= 0 (and likewise from below)."""
    from scipy.optimize import linprog

    rows = []
    for name, target in targets.items():
        c = np.array([totals[name].get(g, 0.0) for g in CELLS])
        ref = np.array([totals[reference_name(name)].get(g, 0.0) for g in CELLS])
        rows += [c - (target + half_width) * ref, (target - half_width) * ref - c]
    res = linprog(
        np.zeros(len(CELLS)), A_ub=np.array(rows), b_ub=np.zeros(len(rows)), bounds=list(zip(lo, hi)), method="highs"
    )
    return res.x if res.status == 0 else None


def closest_factors(
    totals: Mapping[str, Cells],
    default: np.ndarray,
    targets: Mapping[str, float],
    half_width: float = 0.005,
    max_change: float = 1e6,
) -> tuple[float, np.ndarray] | None:
    """(r, f): the smallest r >= 1 such that factors f within [default / r, default * r] (CELLS order) give every
    target Table 5 ratio to +- half_width (0.005: the paper's two printed decimals); None if no positive factors
    up to `max_change` do. r says how far a cell library must stray from `default` to reproduce the targets.
    The ratios are scale-free, so bands around any multiple of `default` give the same r."""
    default = np.asarray(default, float)
    solve = lambda r: _factors_within(totals, targets, half_width, default / r, default * r)
    if solve(max_change) is None:
        return None
    at_default = solve(1.0)
    if at_default is not None:
        return 1.0, at_default
    lo, hi = 1.0, max_change
    while hi / lo > 1 + 1e-6:  # bisection on log r
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if solve(mid) is not None else (mid, hi)
    return hi, solve(hi)


def factor_vectors(lib: CellLibrary) -> tuple[np.ndarray, np.ndarray]:
    """(A_g, E_g tau_g) as vectors in CELLS order, for `ratios`."""
    return np.array([lib.area[g] for g in CELLS]), np.array([lib.energy[g] * lib.toggle[g] for g in CELLS])


def table5(lib: CellLibrary = CellLibrary(), p: HardwareParams = HardwareParams()) -> dict[str, dict[str, float]]:
    """{"energy": {name: ratio}, "area": {name: ratio}} in Table 5's normalisation."""
    r = ratios(*factor_vectors(lib), unit_totals(p))
    return {m: {n: float(v) for n, v in zip(NAMES, r[m], strict=True)} for m in ("energy", "area")}
