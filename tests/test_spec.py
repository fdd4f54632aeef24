"""The one format-spec grammar: parse_spec / get_format strings against formats built field by field, the error
messages, the consumers that take specs (interceptor rules, QDotConfig, experiment flags), labels, and the
experiments.formats table and figure.

Oracles: Format / element / scale-rule objects constructed directly from their dataclass fields (not through the
parser); OCP MX v1.0 and NVFP4 constants written out as arithmetic (E8M0 max 2^127, E4M3 max 448, 8-bit scales per
32 or 16 elements); element value sets enumerated from ml_dtypes' bit patterns; NF4 rebuilt from normal
quantiles with scipy as bitsandbytes builds its table.
"""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from scipy.stats import norm

import lowbit_jax as lb
from analysis.lm import train as lm_train
from experiments import common, crossover, train
from experiments import formats as formats_exp
from lowbit_jax.elements import FPElem, IntElem
from lowbit_jax.formats import Format
from lowbit_jax.interceptor import parse_rules
from lowbit_jax.scaling import UE8M0, FloatScale

KEYS = ("block_size", "scale", "scale_rounding", "scale_dtype", "int_range", "tensor_scale")
ROUNDINGS = ("ceil", "floor", "round", "even", "ceil_amax")


# ------------------------------------------------------------------------------------------------ grammar
@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("mxint8:block_size=64", Format("mxint8", IntElem(8), 64, "ue8m0")),
        ("mxint8:block_size=channel", Format("mxint8", IntElem(8), "channel", "ue8m0")),
        ("mxint8:block_size=-1", Format("mxint8", IntElem(8), "channel", "ue8m0")),
        ("int8_channel:block_size=tensor", Format("int8_channel", IntElem(8), "tensor", "fp32")),
        ("nvfp4:block_size=16x16", Format("nvfp4", FPElem(2, 1), (16, 16), "e4m3")),
        ("nvfp4:block_size=(16,16)", Format("nvfp4", FPElem(2, 1), (16, 16), "e4m3")),
        ("nvfp4:block_size=(8, 32)", Format("nvfp4", FPElem(2, 1), (8, 32), "e4m3")),
        ("mxfp4:scale=e4m3", Format("mxfp4", FPElem(2, 1), 32, "e4m3")),
        ("mxfp4:scale=ue5m3", Format("mxfp4", FPElem(2, 1), 32, "ue5m3")),
        ("mxfp4:scale=fp32", Format("mxfp4", FPElem(2, 1), 32, "fp32")),
        ("nvfp4:scale=ue8m0", Format("nvfp4", FPElem(2, 1), 16, "ue8m0")),
        ("mxint8:scale_dtype=bfloat16", Format("mxint8", IntElem(8), 32, "ue8m0", scale_dtype="bfloat16")),
        ("mxint8:int_range=asymmetric", Format("mxint8", IntElem(8, "asymmetric"), 32, "ue8m0")),
        ("nvint4:int_range=zero_point", Format("nvint4", IntElem(4, "zero_point"), 16, "e4m3")),
        ("nvfp4:tensor_scale=ue8m0", Format("nvfp4", FPElem(2, 1), 16, "e4m3", tensor_scale="ue8m0")),
        ("nvfp4:tensor_scale=none", Format("nvfp4", FPElem(2, 1), 16, "e4m3", tensor_scale="none")),
        ("mxfp4:scale=ue5m3:tensor_scale=fp32", Format("mxfp4", FPElem(2, 1), 32, "ue5m3", tensor_scale="fp32")),
        (
            "mxint8:block_size=64:scale_rounding=floor",
            Format("mxint8", IntElem(8), 64, "ue8m0", scale_rounding="floor"),
        ),
    ],
)
def test_every_key_against_the_field_by_field_format(spec, expected):
    assert lb.get_format(spec) == expected == lb.parse_spec(spec)
    assert hash(lb.get_format(spec)) == hash(expected)


@pytest.mark.parametrize("rounding", ROUNDINGS)
def test_every_scale_rounding(rounding):
    fmt = lb.get_format(f"mxfp8_e4m3:scale_rounding={rounding}")
    assert fmt.scale_rule == UE8M0(rounding, "float32")
    assert fmt == Format("mxfp8_e4m3", FPElem(4, 3, "fn"), 32, "ue8m0", scale_rounding=rounding)


@pytest.mark.parametrize(
    ("spec", "elem", "block", "rule"),
    [
        ("fp(3,2)", FPElem(3, 2, "none"), 32, UE8M0("ceil")),  # custom elements: block 32, UE8M0 by default
        ("fp(4,3)", FPElem(4, 3, "fn"), 32, UE8M0("ceil")),  # 8-bit E4M3: the OCP 'fn' convention
        ("fp(5,2)", FPElem(5, 2, "ieee"), 32, UE8M0("ceil")),
        ("fp(4,3,ieee)", FPElem(4, 3, "ieee"), 32, UE8M0("ceil")),
        ("fp(3,2):block_size=32:scale=ue8m0", FPElem(3, 2, "none"), 32, UE8M0("ceil")),
        ("fp(3,2):block_size=16:scale=e4m3", FPElem(3, 2, "none"), 16, FloatScale("e4m3", "float32", "fp32")),
        ("int(5)", IntElem(5), 32, UE8M0("ceil")),
        ("int(5):block_size=16:scale=e4m3", IntElem(5), 16, FloatScale("e4m3", "float32", "fp32")),
        ("int(4):int_range=zero_point:scale=fp32", IntElem(4, "zero_point"), 32, FloatScale("fp32")),
        ("fp(2,3):scale=ue5m3", FPElem(2, 3, "none"), 32, FloatScale("ue5m3", "float32", "none")),
    ],
)
def test_custom_elements(spec, elem, block, rule):
    fmt = lb.get_format(spec)
    assert (fmt.elem, fmt.block_size, fmt.scale_rule) == (elem, block, rule)
    assert fmt.name == spec.split(":")[0]


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("MXFP4", "mxfp4"),
        ("MxInt8:Block_Size=64:SCALE_ROUNDING=FLOOR", "mxint8:block_size=64:scale_rounding=floor"),
        ("NVFP4:BLOCK_SIZE=16X16", "nvfp4:block_size=16x16"),
        ("FP(3,2):SCALE=E4M3", "fp(3,2):scale=e4m3"),
        ("INT(5):INT_RANGE=ASYMMETRIC", "int(5):int_range=asymmetric"),
        ("mxint8:scale_dtype=BFloat16", "mxint8:scale_dtype=bfloat16"),
        ("MXFP8", "mxfp8_e4m3"),  # aliases too
    ],
)
def test_case_insensitive(text, canonical):
    assert lb.get_format(text) == lb.get_format(canonical)


@pytest.mark.parametrize(
    ("text", "canonical"),
    [
        ("  mxint8 : block_size = 64 ", "mxint8:block_size=64"),
        ("nvfp4:block_size=( 16 , 16 )", "nvfp4:block_size=16x16"),
        ("nvfp4 :block_size= 16 x 16", "nvfp4:block_size=16x16"),
        ("fp( 3 , 2 ):block_size=16", "fp(3,2):block_size=16"),
        (" mxfp4 ", "mxfp4"),
    ],
)
def test_whitespace_is_ignored(text, canonical):
    assert lb.get_format(text) == lb.get_format(canonical)


def test_whitespace_inside_a_bare_custom_element():
    assert lb.get_format("fp( 3 , 2 )") == lb.get_format("fp(3,2)")


@pytest.mark.parametrize(
    ("spec", "same"),
    [("nvfp4:tensor_scale=fp32", "nvfp4"), ("fp(2,3):scale=ue5m3:tensor_scale=none", "fp(2,3):scale=ue5m3")],
)
def test_spelling_out_the_default_second_level_changes_nothing(spec, same):
    assert lb.get_format(spec).scale_rule == lb.get_format(same).scale_rule  # the same arithmetic...
    assert lb.get_format(spec) == lb.get_format(same)  # ...so the same format (one jit cache entry, one label)


@pytest.mark.parametrize(
    ("spec", "name", "overrides"),
    [
        ("mxint8:block_size=64", "mxint8", {"block_size": 64}),
        ("mxint8:block_size=64:scale_rounding=floor", "mxint8", {"block_size": 64, "scale_rounding": "floor"}),
        ("nvfp4:block_size=16x16", "nvfp4", {"block_size": (16, 16)}),
        (
            "mxint6:int_range=asymmetric:scale_dtype=bfloat16",
            "mxint6",
            {"int_range": "asymmetric", "scale_dtype": "bfloat16"},
        ),
        ("fp(3,2):block_size=32:scale=ue8m0", "fp(3,2)", {"block_size": 32, "scale": "ue8m0"}),
        ("int(5):block_size=16:scale=e4m3", "int(5)", {"block_size": 16, "scale": "e4m3"}),
        ("nvfp4:tensor_scale=ue8m0", "nvfp4", {"tensor_scale": "ue8m0"}),
        ("mxfp4:block_size=channel:scale=fp32", "mxfp4", {"block_size": "channel", "scale": "fp32"}),
    ],
)
def test_string_form_equals_keyword_form(spec, name, overrides):
    assert lb.get_format(spec) == lb.get_format(name, **overrides)
    # a spec with further keyword overrides: the keywords apply last
    assert lb.get_format(spec, block_size=8) == lb.get_format(name, **(overrides | {"block_size": 8}))


def test_named_formats_parse_to_themselves():
    for name in lb.list_formats():
        assert lb.get_format(name.upper()) is lb.get_format(name)
        assert lb.get_format(name).name == name


# ------------------------------------------------------------------------------------------------ errors
def _message(spec, **kw) -> str:
    with pytest.raises(ValueError) as info:
        lb.get_format(spec, **kw)
    return str(info.value)


def test_unknown_key_lists_the_allowed_keys():
    msg = _message("mxint8:block_sise=64")
    assert "unknown key 'block_sise'" in msg and "mxint8:block_sise=64" in msg
    assert all(k in msg for k in KEYS)


@pytest.mark.parametrize(
    ("spec", "hint"),
    [
        ("mxin8", "mxint8"),
        ("MXIN8", "mxint8"),
        ("nvfq4:block_size=16", "nvfp4"),
        ("mxfp8-e4m3", "mxfp8_e4m3"),
        ("nf5", "nf4"),
    ],
)
def test_unknown_name_suggests_the_closest(spec, hint):
    msg = _message(spec)
    assert "unknown format" in msg and f"did you mean {hint!r}" in msg and "fp(e,m)" in msg


@pytest.mark.parametrize(
    ("spec", "key", "allowed"),
    [
        ("mxint8:scale_rounding=flor", "scale_rounding", ROUNDINGS),
        ("mxint8:scale=e5m3", "scale", ("ue8m0", "e4m3", "ue5m3", "fp32")),
        ("mxint8:scale_dtype=float16", "scale_dtype", ("float32", "bfloat16")),
        ("mxint8:int_range=unsigned", "int_range", ("symmetric", "asymmetric", "zero_point")),
        ("nvfp4:tensor_scale=e4m3", "tensor_scale", ("fp32", "ue8m0", "none")),
    ],
)
def test_bad_value_lists_the_allowed_values(spec, key, allowed):
    msg = _message(spec)
    assert f"{key} must be one of" in msg and spec in msg
    assert all(repr(a) in msg for a in allowed)


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("mxint8:block_size=16:block_size=32", "'block_size' is given twice"),
        ("mxint8:block_size=16:BLOCK_SIZE=32", "'block_size' is given twice"),
        ("mxint8:block_size", "is not key=value"),
        ("mxint8:", "is not key=value"),
        ("mxint8:block_size=", "is not key=value"),
        ("mxint8:block_size=0", "block_size must be a positive int"),
        ("mxint8:block_size=16x", "block_size must be a positive int"),
        ("nvfp4:block_size=(16,0)", "block_size must be a positive int"),
        ("fp(3)", "bad element 'fp(3)'"),
        ("fp(a,2):block_size=16", "bad element 'fp(a,2)'"),
        ("int(9)", "2 <= b <= 8"),
        ("bf16:block_size=8", "identity format and takes no overrides"),
        ("nf4:int_range=asymmetric", "int_range applies to INT formats only"),
        ("mxint8:scale=e4m3:scale_rounding=floor", "scale_rounding applies to UE8M0 scales only"),
        ("mxint8:tensor_scale=fp32", "UE8M0 block scale takes no tensor scale"),
        ("nvfp4:block_size=tensor", "needs blocks smaller than the tensor"),
    ],
)
def test_errors_name_the_bad_part(spec, needle):
    assert needle in _message(spec)


def test_not_a_string():
    with pytest.raises(ValueError, match="non-empty string"):
        lb.parse_spec("  ")
    with pytest.raises(TypeError, match="a Format or a spec string"):
        lb.get_format(8)


# ------------------------------------------------------------------------------------------------ labels
@pytest.mark.parametrize(
    ("spec", "label"),
    [
        ("MXFP4", "mxfp4"),
        ("mxfp8", "mxfp8_e4m3"),
        ("nvfp4_2d", "nvfp4_2d"),
        ("mxint8:block_size=32", "mxint8"),  # a no-op override is no override
        ("mxint8:block_size=64", "mxint8[block_size=64]"),
        ("mxint8:block_size=64:scale_rounding=floor", "mxint8[block_size=64, scale_rounding=floor]"),
        ("nvfp4:block_size=16x16", "nvfp4[block_size=16x16]"),
        ("mxint8:int_range=asymmetric", "mxint8[int_range=asymmetric]"),
        ("nvfp4:tensor_scale=ue8m0", "nvfp4[tensor_scale=ue8m0]"),
        ("fp(3,2)", "fp(3,2)"),
        ("fp(3,2):block_size=16:scale=e4m3", "fp(3,2)[block_size=16, scale=e4m3]"),
    ],
)
def test_labels_show_the_overrides(spec, label):
    assert lb.get_format(spec).label == label


@pytest.mark.parametrize(
    ("make", "held_by"),
    [
        (lambda: lb.adaptive(["mxfp4", "mxint4"], name="mxint8"), "a block"),
        (lambda: lb.adaptive(["mxfp4", "mxint4"], name="mxfp8"), "a block"),  # an alias counts
        (lambda: lb.get_format("mxint8").replace(name="if4"), "an adaptive"),
        (lambda: lb.get_format("mxint8").replace(name="bf16"), "an identity"),
    ],
)
def test_a_name_held_by_a_named_format_of_another_kind_is_refused(make, held_by):
    # A label describes a format by its differences from the named format of its name; across kinds there is
    # no such description, so the name is refused rather than labelled with the other format's name.
    with pytest.raises(ValueError, match=f"names {held_by} format"):
        make()
    assert lb.adaptive(["mxfp4", "mxint4"], name="mine").label == "mine"


# ------------------------------------------------------------------------------------------------ consumers
@pytest.mark.parametrize(
    ("value", "preset", "spec"),
    [
        ("direct_cast:mxint8:block_size=64", "direct_cast", "mxint8:block_size=64"),
        ("train:fp(3,2):block_size=16:scale=e4m3", "train", "fp(3,2):block_size=16:scale=e4m3"),
        ("TRAIN:NVFP4:BLOCK_SIZE=16X16", "train", "nvfp4:block_size=16x16"),
        (" direct_cast :mxfp4", "direct_cast", "mxfp4"),
        (("train", "int(5):block_size=16:scale=e4m3"), "train", "int(5):block_size=16:scale=e4m3"),
        (("direct_cast", lb.get_format("mxint8", block_size=64)), "direct_cast", "mxint8:block_size=64"),
    ],
)
def test_interceptor_rules_take_full_specs(value, preset, spec):
    (rule,) = parse_rules([(".*", value)])
    fmt = lb.get_format(spec)
    expected = lb.QDotConfig.train(fmt) if preset == "train" else lb.QDotConfig(x_fwd=fmt, w_fwd=fmt)
    assert rule.config == expected
    assert rule.config.label == f"{preset}({fmt.label})"


@pytest.mark.parametrize(
    "value",
    [
        "direct_cast:mxint8:block_sise=64",
        "train:mxin8",
        ("train", "nvfp4:block_size=16:block_size=32"),
        "direct_cast:mxint8:scale_rounding=flor",
        "train:fp(3):block_size=16",
    ],
)
def test_bad_rule_specs_fail_at_construction_with_the_spec_message(value):
    spec = value[1] if isinstance(value, tuple) else value.partition(":")[2]
    own = _message(spec)
    with pytest.raises(ValueError) as info:
        parse_rules([("enc/.*", value)])
    assert own in str(info.value) and "rule 0 ('enc/.*')" in str(info.value)
    with pytest.raises(ValueError, match="rule 0"), lb.quantized([("enc/.*", value)]):
        pass


def test_bad_presets():
    with pytest.raises(ValueError, match="unknown preset 'fast'"):
        parse_rules([(".*", "fast:mxint8")])
    with pytest.raises(ValueError, match="takes a format spec string or a Format"):
        parse_rules([(".*", ("train", 8))])


def test_rule_string_routes_a_model_like_the_keyword_config():
    model = nn.Dense(8)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 64)), jnp.float32)
    params = model.init(jax.random.key(0), x)
    fmt = lb.get_format("mxint8", block_size=64)

    def run(rules):
        reports = []

        def f(p, v):  # the context acts at trace time, so it is entered inside the jitted function
            with lb.quantized(rules) as report:
                reports.append(report)
                return model.apply(p, v)

        return jax.jit(f)(params, x), reports[0]

    y_spec, report = run([(".*", "direct_cast:MXINT8:block_size=64")])
    y_kw, _ = run([(".*", lb.QDotConfig.direct_cast(fmt))])
    y_default, _ = run([(".*", "direct_cast:mxint8")])
    assert report.quantized == {"": "direct_cast(mxint8[block_size=64])"}
    np.testing.assert_array_equal(np.asarray(y_spec), np.asarray(y_kw))
    assert not np.array_equal(np.asarray(y_spec), np.asarray(y_default))  # block 64 vs 32 is a different format


def test_qdot_config_strings():
    cfg = lb.QDotConfig(x_fwd="mxint8:block_size=64", w_fwd="FP(3,2):block_size=16:scale=e4m3", dy_dx="nvfp4_2d")
    assert cfg.x_fwd == lb.get_format("mxint8", block_size=64)
    assert cfg.w_fwd == Format("fp(3,2)", FPElem(3, 2), 16, "e4m3")
    assert cfg.dy_dx.block_size == (16, 16)
    assert cfg.label == "x_fwd=mxint8[block_size=64],w_fwd=fp(3,2)[block_size=16, scale=e4m3],dy_dx=nvfp4_2d"
    assert lb.QDotConfig.train("mxint8:block_size=64") == lb.QDotConfig.train(lb.get_format("mxint8", block_size=64))
    with pytest.raises(ValueError, match="unknown key 'block_sise'"):
        lb.QDotConfig(x_fwd="mxint8:block_sise=64")


def test_parse_precision_delegates_to_the_grammar():
    assert lm_train.parse_precision("none") is None and lm_train.parse_precision(" NONE ") is None
    for spec in ("MXFP4", "fp(3,2):block_size=16:scale=e4m3", "nvfp4:block_size=16x16", "mxint8:scale_rounding=even"):
        assert lm_train.parse_precision(spec) == lb.get_format(spec)
    with pytest.raises(ValueError, match="no overrides"):
        lm_train.parse_precision("none:block_size=8")
    with pytest.raises(ValueError, match="unknown key 'blok_size'"):
        lm_train.parse_precision("mxint8:blok_size=8")


def test_comma_lists_split_outside_parentheses():
    assert common.split_list("mxint8,fp(3,2):block_size=(16,16), NVFP4") == [
        "mxint8",
        "fp(3,2):block_size=(16,16)",
        " NVFP4",
    ]
    assert common.split_list("2048,4096") == ["2048", "4096"]
    cfg, _ = common.parse_config(train.Config, ["--precision", "none,FP(3,2):block_size=16,int(5)"], "")
    assert cfg.precision == ("none", "FP(3,2):block_size=16", "int(5)")
    argv = ["--pairs", "int(6):block_size=16/fp(3,2):block_size=16,MXINT8/MXFP8", "--formats", "fp(3,2),mxfp4"]
    cfg, _ = common.parse_config(crossover.Config, argv, "")
    key, int_fmt, fp_fmt = crossover.parse_pair(cfg.pairs[0])
    assert key == "INT(6):BLOCK_SIZE=16/FP(3,2):BLOCK_SIZE=16"
    assert (int_fmt, fp_fmt) == (lb.get_format("int(6)", block_size=16), lb.get_format("fp(3,2)", block_size=16))
    assert cfg.formats == ("fp(3,2)", "mxfp4")


def test_experiment_flags_report_the_spec_error(capsys):
    with pytest.raises(SystemExit):
        crossover.main(["--pairs", "mxint8:block_sise=64/mxfp8"])
    assert "unknown key 'block_sise'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ experiments.formats
def _ml_values(dtype) -> np.ndarray:
    """Distinct finite values of every bit pattern of an ml_dtypes type."""
    n = 2 ** ml_dtypes.finfo(dtype).bits
    v = np.arange(n, dtype=np.uint8).view(dtype).astype(np.float64)
    return np.unique(v[np.isfinite(v)])


def test_formats_table_and_figure(tmp_path, capsys):
    extra = ["fp(3,2):block_size=16:scale=e4m3", "nvfp4:block_size=(16,16)", "mxint8:block_size=64"]
    argv = ["--formats", ",".join([*lb.list_formats(), *extra]), "--out", str(tmp_path)]
    result = formats_exp.main(argv)
    saved = json.loads((tmp_path / "formats.json").read_text())
    rows = {r["format"]: r for r in saved["formats"]}
    assert list(rows) == [
        *lb.list_formats(),
        "fp(3,2)[block_size=16, scale=e4m3]",
        "nvfp4[block_size=16x16]",
        "mxint8[block_size=64]",
    ]
    assert len((tmp_path / "formats.csv").read_text().strip().splitlines()) == len(rows) + 1
    assert (tmp_path / "grids.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "mxfp8_e4m3" in capsys.readouterr().out
    # bits per element: element bits + one 8-bit scale per block (OCP MX: 32 elements, NVFP4: 16, 2-D 16x16),
    # NF4 / SF4: one FP32 absmax per 64 / 128
    for name, bits in [("mxfp8_e4m3", 8 + 8 / 32), ("mxfp4", 4 + 8 / 32), ("mxint8", 8 + 8 / 32),
                       ("nvfp4", 4 + 8 / 16), ("nvfp4_2d", 4 + 8 / 256), ("mxfp8_2d", 8 + 8 / 1024),
                       ("nf4", 4 + 32 / 64), ("sf4", 4 + 32 / 128), ("bf16", 16), ("mxint8[block_size=64]", 8 + 8 / 64),
                       ("fp(3,2)[block_size=16, scale=e4m3]", 6 + 8 / 16)]:  # fmt: skip
        assert rows[name]["bits_per_element"] == bits, name
    # largest finite values: OCP MX v1.0 (E8M0 up to 2^127; MXINT8 = 1.984375 x 2^127), NVFP4 6 x 448 at g = 1
    assert rows["mxfp8_e4m3"]["max_value"] == 448 * 2.0**127
    assert rows["mxfp8_e5m2"]["max_value"] == 57344 * 2.0**127
    assert rows["mxfp4"]["max_value"] == 6 * 2.0**127
    assert rows["mxint8"]["max_value"] == (127 / 64) * 2.0**127
    assert rows["mxint8"]["min_value"] == 2.0**-6 * 2.0**-127
    assert rows["nvfp4"]["max_value"] == 6 * 448 and rows["nvfp4"]["min_value"] == 0.5 * 2.0**-9
    assert rows["nvfp4"]["second_level"] == "fp32" and rows["mxfp4"]["second_level"] == "none"
    assert rows["nvfp4"]["range_binades"] == pytest.approx(np.log2(6 * 448 / 2.0**-10))
    assert rows["mxfp4"]["block_range_binades"] == pytest.approx(np.log2(6 / 0.5))
    assert rows["bf16"]["max_value"] == float(ml_dtypes.finfo(ml_dtypes.bfloat16).max)
    for name, dtype in [("mxfp8_e4m3", ml_dtypes.float8_e4m3fn), ("mxfp8_e5m2", ml_dtypes.float8_e5m2),
                        ("mxfp6_e2m3", ml_dtypes.float6_e2m3fn), ("mxfp6_e3m2", ml_dtypes.float6_e3m2fn),
                        ("mxfp4", ml_dtypes.float4_e2m1fn)]:  # fmt: skip
        assert rows[name]["values"] == len(_ml_values(dtype)), name
    assert (rows["mxint8"]["values"], rows["mxint4"]["values"], rows["nf4"]["values"]) == (255, 15, 16)
    # the 4-bit grids, normalised to max 1
    grids = saved["grids"]
    assert list(grids) == ["mxfp4", "mxint4", "nf4", "sf4"] and result["grids"].keys() == grids.keys()
    np.testing.assert_array_equal(grids["mxfp4"]["values"], _ml_values(ml_dtypes.float4_e2m1fn) / 6)
    np.testing.assert_array_equal(grids["mxint4"]["values"], np.arange(-7, 8) / 7)
    # NF4 rebuilt as bitsandbytes' create_normal_map does (normal quantiles, offset 0.9677083, an exact zero), in
    # float64; bitsandbytes' float32 table differs from it by at most 2 float32 ulps
    offset = 0.9677083
    pos, neg = norm.ppf(np.linspace(offset, 0.5, 9)[:-1]), -norm.ppf(np.linspace(offset, 0.5, 8)[:-1])
    nf4 = np.sort(np.concatenate([pos, [0.0], neg]))
    np.testing.assert_allclose(grids["nf4"]["values"], nf4 / np.abs(nf4).max(), rtol=0, atol=2e-7)
    assert [grids[k]["count"] for k in grids] == [15, 15, 16, 16]


def test_formats_config_rejects_identity_grids():
    with pytest.raises(ValueError, match="identity format"):
        formats_exp.Config(grids=("bf16",))
    with pytest.raises(ValueError, match="did you mean 'mxint8'"):
        formats_exp.Config(formats=("mxin8",))
