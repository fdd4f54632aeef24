"""Route an unmodified Flax model's GEMMs through qdot_general (or capture their operands) by module-path rules.

Rules: a list of (regex, value), matched with re.fullmatch against '/'-joined module paths ('encoder/layer_0/
attn/query'; NNX list indices appear as numbers, 'layers/0/linear'); the first match wins; unmatched layers
are left alone. value: a QDotConfig; None or "skip"; a preset "train:<spec>" / "direct_cast:<spec>", or the
tuple ("train", spec) / ("direct_cast", spec). The preset is the text before the first ':' (case-insensitive) and
<spec> everything after it, a full format spec (lowbit_jax.formats grammar, e.g. "direct_cast:mxint8:block_size=64",
"train:fp(3,2):block_size=16:scale=e4m3"); the tuple's spec may also be a Format. Bad regexes, presets and specs
fail at construction, with the spec parser's own message.

Convolutions: linen nn.Conv and nnx.Conv get their `conv_general_dilated` hook swapped for
`qconv.qconv_general_dilated` (the convolution as patches . W through qdot_general, grouped ones included).
Transposed and unshared (ConvLocal) convolutions are not quantized; a rule that matches one lists it in
`Report.unsupported` rather than passing over it silently.

Linen: `with quantized(rules): model.apply(...)` uses flax.linen.intercept_methods. nn.Dense/DenseGeneral
run their own __call__ with their `dot_general` hook swapped for the duration of the call; nn.Einsum (no hook)
is re-run by a copy of its small forward with the einsum done by qdot_general.
NNX (no intercept_methods): module surgery on nnx.Linear / LinearGeneral (`dot_general`) and nnx.Einsum
(`einsum_op`): `with quantized(rules, model=m)` installs hooks and restores them on exit; `quantize_nnx(m,
rules)` installs them for good (hooks are hashable values, so nnx.jit caches them).

Keys: stochastic rounding and Hadamard signs use per-layer keys, fold_in(fold_in(key, crc32(path)), call),
where `call` counts the layer's calls inside the context: deterministic across processes (crc32, not hash()).
Without a key, rotations use a per-layer rotation_seed crc32(f"{path}#{call}"); stochastic_grads needs a key
once differentiated (an error otherwise).
A permanently quantized NNX model takes its key from the innermost active `quantized(..., key=key)` context.

Lifted transforms: nn.scan and nn.remat work (tested). A scanned body is traced once, so every step of an
nn.scan shares the layer's path, hence its keys and rotation signs (the call counter counts traces, not steps).

Trace-time semantics: the context acts while JAX traces, so enter it inside the function you jit/grad (or
jit a fresh function inside it); a function compiled outside the context keeps its unquantized trace.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import re
import threading
import zlib
from dataclasses import dataclass, field

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from lowbit_jax import capture as capture_lib
from lowbit_jax.formats import Format, get_format
from lowbit_jax.qconv import with_conv_config
from lowbit_jax.qdot import QDotConfig, einsum_via, with_config

PRESETS = {"train": QDotConfig.train, "direct_cast": QDotConfig.direct_cast}
CAPTURE = "capture"
_NNX_HOOKS = {
    nnx.Linear: "dot_general",
    nnx.LinearGeneral: "dot_general",
    nnx.Einsum: "einsum_op",
    nnx.Conv: "conv_general_dilated",
}
_LINEN_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)
_LINEN_UNSUPPORTED = (nn.ConvTranspose, nn.ConvLocal)
_NNX_UNSUPPORTED = (nnx.ConvTranspose,)


@dataclass(frozen=True)
class Rule:
    """A compiled rule: module paths that fullmatch `pattern` get `config` (None: left alone)."""

    pattern: re.Pattern
    config: QDotConfig | str | None


def _preset(name: str, spec, where: str) -> QDotConfig:
    """The preset `name` ('train' / 'direct_cast', any case) applied to a format spec string or Format."""
    key = name.strip().lower()
    if key not in PRESETS:
        raise ValueError(f"{where}: unknown preset {name!r}; use one of {sorted(PRESETS)} or a QDotConfig")
    if not isinstance(spec, str | Format):
        raise ValueError(f"{where}: preset {key!r} takes a format spec string or a Format, got {spec!r}")
    try:
        return PRESETS[key](get_format(spec))
    except (ValueError, TypeError) as err:
        raise ValueError(f"{where}: {err}") from err


def parse_value(value, where: str = "rule") -> QDotConfig | str | None:
    """A rule's value as a QDotConfig, CAPTURE, or None (skip)."""
    if value is None or value is False or value == "skip":
        return None
    if value is True or value == CAPTURE:
        return CAPTURE
    if isinstance(value, QDotConfig):
        return value
    if isinstance(value, str) and ":" in value:
        preset, _, spec = value.partition(":")  # the spec keeps its own ':'s
        return _preset(preset, spec, where)
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str):
        return _preset(value[0], value[1], where)
    raise ValueError(
        f"{where}: a rule value must be a QDotConfig, None/'skip', 'train:<spec>', 'direct_cast:<spec>' "
        f"or ('train'|'direct_cast', spec); got {value!r}"
    )


def parse_rules(rules, default=None) -> tuple[Rule, ...]:
    """Compile rules: a regex string, or a list of regex strings (value `default`) or (regex, value) pairs."""
    rules = [rules] if isinstance(rules, str) else list(rules)
    out = []
    for i, rule in enumerate(rules):
        pattern, value = (rule, default) if isinstance(rule, str) else (rule if len(rule) == 2 else (None, None))
        if not isinstance(pattern, str):
            raise ValueError(f"rule {i}: expected (regex, config) or a regex string, got {rule!r}")
        try:
            compiled = re.compile(pattern)
        except re.error as err:
            raise ValueError(f"rule {i}: invalid regex {pattern!r}: {err}") from err
        out.append(Rule(compiled, parse_value(value, f"rule {i} ({pattern!r})")))
    return tuple(out)


def _only(rules: tuple[Rule, ...], kind: type, where: str) -> tuple[Rule, ...]:
    """Check that every non-skip rule is a quantization config (kind QDotConfig) or a capture rule (kind str)."""
    for i, rule in enumerate(rules):
        if rule.config is not None and not isinstance(rule.config, kind):
            want = "a QDotConfig or preset" if kind is QDotConfig else "True/'capture' or None"
            raise ValueError(f"{where}: rule {i} ({rule.pattern.pattern!r}) must give {want}, got {rule.config!r}")
    return rules


def match(rules: tuple[Rule, ...], path: str) -> QDotConfig | str | None:
    """The config of the first rule whose regex fullmatches `path` (None if none does or it says skip)."""
    for rule in rules:
        if rule.pattern.fullmatch(path):
            return rule.config
    return None


@dataclass
class Report:
    """Which GEMM layers were quantized (path -> config label), which were left alone by a rule, and which
    matched a rule but cannot be quantized (convolutions: path -> module type), so that they are not missed."""

    quantized: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)

    def passes_over(self, path: str, module, config) -> bool:
        """Whether the layer cannot be quantized (a transposed or local convolution; a convolution under capture,
        whose operands are not a GEMM's); if so and a rule matched it, it is listed in `unsupported`."""
        if isinstance(module, _LINEN_UNSUPPORTED + _NNX_UNSUPPORTED):
            reason = type(module).__name__
        elif config == CAPTURE and isinstance(module, nn.Conv | nnx.Conv):
            reason = "Conv (capture)"
        else:
            return False
        if config is not None:
            self.unsupported[path] = reason
        return True

    def record(self, path: str, config) -> None:
        if config is None:
            if path not in self.skipped:
                self.skipped.append(path)
        else:
            self.quantized[path] = CAPTURE if config == CAPTURE else config.label


def layer_key(key, path: str, call: int = 0):
    """The per-layer key fold_in(fold_in(key, crc32(path)), call)."""
    return jax.random.fold_in(jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF), call)


@dataclass(eq=False)
class Session:
    """One active `quantized` / `capture` context."""

    rules: tuple[Rule, ...]
    key: object = None
    report: Report = field(default_factory=Report)
    capture: capture_lib.Capture | None = None
    calls: dict[str, int] = field(default_factory=dict)

    def op(self, path: str, config, conv: bool = False):
        """The dot_general-compatible (conv: conv_general_dilated-compatible) callable for one call at `path`."""
        call = self.calls.get(path, 0)
        self.calls[path] = call + 1
        if config == CAPTURE:
            return capture_lib.tap_dot_general(functools.partial(self.capture.record, path, call))
        return _quant_op(path, config, self.key, call, conv)


def _quant_op(path: str, config: QDotConfig, key, call: int = 0, conv: bool = False):
    bind = with_conv_config if conv else with_config
    if key is not None:
        return bind(config, layer_key(key, path, call))
    if config.rotation:  # no key: a per-layer Hadamard seed, so layers still get their own rotations
        seed = zlib.crc32(f"{path}#{call}".encode()) & 0x7FFFFFFF
        config = dataclasses.replace(config, rotation_seed=seed)
    return bind(config, None)


_STACK = threading.local()


def _sessions() -> list[Session]:
    if not hasattr(_STACK, "sessions"):
        _STACK.sessions = []
    return _STACK.sessions


# ---------------------------------------------------------------------------------------------- linen
def _linen_path(module: nn.Module) -> str:
    return "/".join(str(p) for p in module.path)


def _linen_einsum(mod: nn.Einsum, op, inputs, einsum_str=None):
    """flax.linen.Einsum.__call__ (flax 0.12.8) with the einsum computed by `op`."""
    einsum_str = nn.module.merge_param("einsum_str", mod.einsum_str, einsum_str).replace(" ", "")
    kernel = mod.param("kernel", mod.kernel_init, mod.shape, mod.param_dtype)
    bias, bias_shape = None, None
    if mod.use_bias:
        shape, bias_shape = mod._get_bias_shape(einsum_str, inputs, kernel)
        bias = mod.param("bias", mod.bias_init, shape, mod.param_dtype)
    inputs, kernel, bias = mod.promote_dtype(inputs, kernel, bias, dtype=mod.dtype)
    y = einsum_via(
        op, einsum_str, inputs, kernel, precision=mod.precision, preferred_element_type=mod.preferred_element_type
    )
    return y if bias is None else y + jnp.reshape(bias, bias_shape)


def _linen_with_hook(mod, op, next_fun, args, kwargs, hook: str = "dot_general"):
    """Run a Dense/DenseGeneral's (Conv's: hook='conv_general_dilated') own __call__ with its hook set to `op`."""
    saved = getattr(mod, hook), getattr(mod, f"{hook}_cls")
    object.__setattr__(mod, hook, op)
    object.__setattr__(mod, f"{hook}_cls", None)
    try:
        return next_fun(*args, **kwargs)
    finally:
        object.__setattr__(mod, hook, saved[0])
        object.__setattr__(mod, f"{hook}_cls", saved[1])


def _linen_interceptor(session: Session):
    def interceptor(next_fun, args, kwargs, context):
        mod = context.module
        if context.method_name != "__call__" or not isinstance(mod, _LINEN_LAYERS + _LINEN_UNSUPPORTED):
            return next_fun(*args, **kwargs)
        path = _linen_path(mod)
        config = match(session.rules, path)
        if session.report.passes_over(path, mod, config):
            return next_fun(*args, **kwargs)
        session.report.record(path, config)
        if config is None:
            return next_fun(*args, **kwargs)
        if isinstance(mod, nn.Conv):
            op = session.op(path, config, conv=True)
            return _linen_with_hook(mod, op, next_fun, args, kwargs, hook="conv_general_dilated")
        op = session.op(path, config)
        if isinstance(mod, nn.Einsum):
            return _linen_einsum(mod, op, *args, **kwargs)
        return _linen_with_hook(mod, op, next_fun, args, kwargs)

    return interceptor


# ---------------------------------------------------------------------------------------------- NNX
@dataclass(frozen=True)
class NNXHook:
    """A dot_general / einsum_op / conv_general_dilated hook installed on an NNX layer; builds the layer's op at
    call time."""

    path: str
    config: QDotConfig | str
    attr: str = "dot_general"
    session: Session | None = None  # None (permanent surgery): key from the innermost active session

    def __call__(self, *args, **kwargs):
        session, conv = self.session, self.attr == "conv_general_dilated"
        if session is None:
            key = next((s.key for s in reversed(_sessions()) if s.key is not None), None)
            op = _quant_op(self.path, self.config, key, conv=conv)
        else:
            op = session.op(self.path, self.config, conv=conv)
        return einsum_via(op, *args, **kwargs) if self.attr == "einsum_op" else op(*args, **kwargs)


def nnx_layers(model, also: tuple = ()) -> list[tuple[str, nnx.Module]]:
    """(path, module) of every nnx.Linear / LinearGeneral / Einsum / Conv (and instance of `also`) in `model`."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model= takes Flax NNX modules (linen models need no model=), got {type(model).__name__}")
    return [
        ("/".join(str(p) for p in path), m)
        for path, m in nnx.iter_modules(model)
        if type(m) in _NNX_HOOKS or isinstance(m, also)
    ]


def _install(model, rules, report: Report, session: Session | None) -> list[tuple[nnx.Module, str, object]]:
    """Install hooks on the matched layers of `model`; returns (module, attribute, old value) to restore."""
    saved = []
    for path, m in nnx_layers(model, _NNX_UNSUPPORTED):
        config = match(rules, path)
        if report.passes_over(path, m, config):
            continue
        report.record(path, config)
        if config is None:
            continue
        attr = _NNX_HOOKS[type(m)]
        saved.append((m, attr, getattr(m, attr)))
        if getattr(m, "dot_general_cls", None) is not None:  # LinearGeneral prefers dot_general_cls
            saved.append((m, "dot_general_cls", m.dot_general_cls))
            object.__setattr__(m, "dot_general_cls", None)
        object.__setattr__(m, attr, NNXHook(path, config, attr, session))
    return saved


def quantize_nnx(model, rules) -> Report:
    """Quantize an NNX model in place (module surgery on its Linear / LinearGeneral / Einsum / Conv hooks)."""
    rules = _only(parse_rules(rules), QDotConfig, "quantize_nnx")
    report = Report()
    _install(model, rules, report, None)
    return report


@contextlib.contextmanager
def _activate(session: Session, models):
    models = [] if models is None else models if isinstance(models, list | tuple) else [models]
    saved = []
    _sessions().append(session)
    try:
        for m in models:
            saved += _install(m, session.rules, session.report, session)
        with nn.intercept_methods(_linen_interceptor(session)):
            yield session
    finally:
        for m, attr, old in reversed(saved):
            object.__setattr__(m, attr, old)
        _sessions().remove(session)


@contextlib.contextmanager
def quantized(rules=(), *, key=None, model=None):
    """Quantize matched Dense/DenseGeneral/Einsum/Conv layers of linen models (and of the NNX `model`); yields a
    Report."""
    session = Session(_only(parse_rules(rules), QDotConfig, "quantized"), key)
    with _activate(session, model):
        yield session.report


@contextlib.contextmanager
def capture(rules=".*", *, model=None):
    """Record the X, W and dY operands of matched GEMMs (unquantized) during forward and backward passes."""
    store = capture_lib.Capture(report=Report())
    session = Session(_only(parse_rules(rules, default=CAPTURE), str, "capture"), None, store.report, store)
    try:
        with _activate(session, model):
            yield store
    finally:
        store.close()
