"""Route an unmodified Flax model's GEMMs through qdot_general (or capture their operands) by module-path rules.

Rules: a dict {regex: value} or a list of (regex, value) pairs, matched with re.fullmatch against '/'-joined module
paths ('encoder/layer_0/attn/query'; NNX list indices appear as numbers, 'layers/0/linear'); the first match wins;
unmatched layers are left alone; `block_rules(value, n_blocks, first=, last=)` builds rules for the first / last
transformer blocks (e.g. kept in high precision), and `Report.unused` lists the rules that decided no layer. A bare
regex (or a list of them) has no value: TypeError for `quantized`, a capture rule for `capture`. value: a
QDotConfig; None or "skip"; a preset "train:<spec>" / "direct_cast:<spec>", or the tuple ("train", spec) /
("direct_cast", spec). The preset is the text before the first ':' (case-insensitive) and <spec> everything after
it, a full format spec (lowbit_jax.formats grammar, e.g. "direct_cast:mxint8:block_size=64",
"train:fp(3,2):block_size=16:scale=e4m3"); the tuple's spec may also be a Format. Bad regexes, presets and specs
fail at construction, with the spec parser's own message.

Convolutions: linen nn.Conv and nnx.Conv get their `conv_general_dilated` hook swapped for
`qconv.qconv_general_dilated` (the convolution as patches . W through qdot_general, grouped ones included).
Transposed and unshared (ConvLocal) convolutions are not quantized; a rule that matches one lists it in
`Report.unsupported` rather than passing over it silently.

Tied heads: nn.Embed.attend / nnx.Embed.attend (query . table^T, the tied LM head) is a GEMM under the Embed's
path; the embedding lookup itself is not a GEMM and is never quantized.

Nesting: contexts compose. At each layer the innermost `quantized` context with a rule for its path (a skip rule
included) decides its config, and every `capture` context whose rule matches records the layer's operands (the
high-precision X, W and dY that the quantizers see). Every active context's Report records what ran.

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
import weakref
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeAlias, cast

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from lowbit_jax import capture as capture_lib
from lowbit_jax._types import Key
from lowbit_jax.formats import Format, get_format
from lowbit_jax.qconv import with_conv_config
from lowbit_jax.qdot import QDotConfig, with_config
from lowbit_jax.qdot_config import GEMMS
from lowbit_jax.qeinsum import einsum_via

# A rule's value (module docstring): a QDotConfig, None / False / "skip", True / "capture", a preset string
# "train:<spec>" / "direct_cast:<spec>", or a (preset, spec string or Format) pair.
RuleValue: TypeAlias = QDotConfig | str | tuple[str, str | Format] | bool | None
# Rules: {regex: value}, [(regex, value), ...], or (capture only) a regex or a list of regexes.
Rules: TypeAlias = dict[str, RuleValue] | Sequence[tuple[str, RuleValue] | str] | str
# Models whose NNX layers a context hooks: one nnx.Module, a list or tuple of them, or None (linen only).
Models: TypeAlias = nnx.Module | list[nnx.Module] | tuple[nnx.Module, ...] | None

PRESETS = {"train": QDotConfig.train, "direct_cast": QDotConfig.direct_cast}
CAPTURE = "capture"
_NNX_HOOKS = {
    nnx.Linear: "dot_general",
    nnx.LinearGeneral: "dot_general",
    nnx.Einsum: "einsum_op",
    nnx.Conv: "conv_general_dilated",
    nnx.Embed: "attend",
}
_LINEN_LAYERS = (nn.Dense, nn.DenseGeneral, nn.Einsum, nn.Conv)
_LINEN_UNSUPPORTED = (nn.ConvTranspose, nn.ConvLocal)
_NNX_UNSUPPORTED = (nnx.ConvTranspose,)


@dataclass(frozen=True)
class Rule:
    """A compiled rule: module paths that fullmatch `pattern` get `config` (None: left alone)."""

    pattern: re.Pattern
    config: QDotConfig | str | None


def _preset(name: str, spec: object, where: str) -> QDotConfig:
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


def parse_value(value: RuleValue, where: str = "rule") -> QDotConfig | str | None:
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


def parse_rules(rules: Rules, default: RuleValue = None) -> tuple[Rule, ...]:
    """Compile rules: a dict {regex: value}, a list of (regex, value) pairs, or (capture only, `default` given) a
    regex string or a list of regex strings. TypeError for anything else, so that no rule silently matches nothing.
    """
    items: list[Any]
    if isinstance(rules, dict):
        items = list(rules.items())
    elif isinstance(rules, str):
        items = [rules]
    elif isinstance(rules, list | tuple):
        items = list(rules)
    else:
        raise TypeError(
            f"rules must be a dict {{regex: config}} or a list of (regex, config) pairs, got {type(rules).__name__}"
        )
    out = []
    for i, rule in enumerate(items):
        if isinstance(rule, str):
            if default is None:
                raise TypeError(
                    f"rule {i} ({rule!r}) is a bare pattern without a config; write (regex, config) pairs or a dict "
                    f"{{regex: config}}, e.g. [('.*', 'direct_cast:mxfp4')]"
                )
            rule = (rule, default)
        if not isinstance(rule, tuple | list) or len(rule) != 2 or not isinstance(rule[0], str):
            raise TypeError(f"rule {i}: expected a (regex, config) pair, got {rule!r}")
        pattern, value = rule
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


def block_rules(
    value: RuleValue, n_blocks: int, *, first: int = 0, last: int = 0, block: str = "layers_{i}"
) -> list[tuple[str, RuleValue]]:
    """Rules giving `value` to every GEMM inside the first `first` and the last `last` of `n_blocks` blocks, one
    rule per block; a block is the module whose path component is block.format(i=i), anywhere in the path
    ('layers_3/attn/q_proj', 'model/layers_3/mlp/up_proj'). Put them before the catch-all rule (first match wins)."""
    for name, v in (("n_blocks", n_blocks), ("first", first), ("last", last)):
        if isinstance(v, bool) or not isinstance(v, int) or v < (1 if name == "n_blocks" else 0):
            raise ValueError(f"block_rules: {name} must be an int >= {1 if name == 'n_blocks' else 0}, got {v!r}")
    if first + last > n_blocks:
        raise ValueError(f"block_rules: first={first} + last={last} blocks exceed the model's n_blocks={n_blocks}")
    if "{i}" not in block:
        raise ValueError(f"block_rules: block must name the block index as {{i}}, e.g. 'layers_{{i}}', got {block!r}")
    chosen = sorted(set(range(first)) | set(range(n_blocks - last, n_blocks)))
    return [(rf"(?:.*/)?{re.escape(block.format(i=i))}(?:/.*)?", value) for i in chosen]


def find(rules: tuple[Rule, ...], path: str) -> Rule | None:
    """The first rule whose regex fullmatches `path`, or None."""
    return next((rule for rule in rules if rule.pattern.fullmatch(path)), None)


def match(rules: tuple[Rule, ...], path: str) -> QDotConfig | str | None:
    """The config of the first rule whose regex fullmatches `path` (None if none does or it says skip)."""
    rule = find(rules, path)
    return None if rule is None else rule.config


@dataclass
class Report:
    """What ran at each GEMM layer a context saw: quantized (path -> config label; 'capture' for a capture
    context), skipped (left alone), and unsupported (a rule matched a layer that cannot be quantized: path ->
    module type), so that no layer is missed; unused: the patterns of this context's rules that decided no layer
    (a misspelt path, a block index beyond the model, a rule shadowed by an earlier one), filled when the context
    exits. Under nested contexts every report records what actually ran."""

    quantized: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    unsupported: dict[str, str] = field(default_factory=dict)
    unused: list[str] = field(default_factory=list)

    def record(self, path: str, config: QDotConfig | str | None) -> None:
        """Record what runs at `path`: a config (its label), CAPTURE, or None (the layer was left alone)."""
        if config is None:
            self.quantized.pop(path, None)
            if path not in self.skipped:
                self.skipped.append(path)
        else:
            if path in self.skipped:
                self.skipped.remove(path)
            self.quantized[path] = CAPTURE if config == CAPTURE else cast(QDotConfig, config).label


def layer_key(key: Key, path: str, call: int = 0) -> Key:
    """The per-layer key fold_in(fold_in(key, crc32(path)), call)."""
    return jax.random.fold_in(jax.random.fold_in(key, zlib.crc32(path.encode()) & 0x7FFFFFFF), call)


@dataclass(eq=False)
class Session:
    """One active `quantized` / `capture` context (a capture context has `capture` set)."""

    rules: tuple[Rule, ...]
    key: Key | None = None
    report: Report = field(default_factory=Report)
    capture: capture_lib.Capture | None = None
    calls: dict[str, int] = field(default_factory=dict)
    used: set[int] = field(default_factory=set)  # id() of the rules that decided some layer

    def unused_patterns(self) -> list[str]:
        """The patterns of rules that decided no layer so far."""
        return [r.pattern.pattern for r in self.rules if id(r) not in self.used]

    def next_call(self, path: str) -> int:
        call = self.calls.get(path, 0)
        self.calls[path] = call + 1
        return call


def _keyed_rotation(config: QDotConfig) -> bool:
    """Whether some GEMM's rotation draws its signs from the call's key (or, without one, rotation_seed)."""
    return any((r := config.rotation_of(g)) is not None and r.signs == "key" for g in GEMMS)


def _quant_op(path: str, config: QDotConfig, key: Key | None, call: int = 0, conv: bool = False) -> Callable[..., Any]:
    bind: Callable[..., Callable[..., Any]] = with_conv_config if conv else with_config
    if key is not None:
        return bind(config, layer_key(key, path, call))
    if _keyed_rotation(config):  # no key: a per-layer Hadamard seed, so layers still get their own rotations
        seed = zlib.crc32(f"{path}#{call}".encode()) & 0x7FFFFFFF
        config = dataclasses.replace(config, rotation_seed=seed)
    return bind(config, None)


_STACK = threading.local()


def _sessions() -> list[Session]:
    if not hasattr(_STACK, "sessions"):
        _STACK.sessions = []
    return _STACK.sessions


def active() -> bool:
    """Whether a `quantized` or `capture` context is open in this thread (a trace made now would see it)."""
    return bool(_sessions())


# ---------------------------------------------------------------------------------------------- dispatch
@dataclass(frozen=True)
class Cover:
    """One context's view of a layer: the session (None: permanent NNX surgery), the layer's path in that context
    and the first rule matching it (None: no rule matched)."""

    session: Session | None
    path: str
    rule: Rule | None

    @property
    def config(self) -> QDotConfig | str | None:
        return None if self.rule is None else self.rule.config


def _unsupported_reason(module: object, cover: Cover) -> str | None:
    """Why `cover`'s context cannot act on `module` (None: it can)."""
    if isinstance(module, _LINEN_UNSUPPORTED + _NNX_UNSUPPORTED):
        return type(module).__name__
    if cover.config == CAPTURE and isinstance(module, nn.Conv | nnx.Conv):
        return "Conv (capture)"
    return None


@dataclass(frozen=True)
class Plan:
    """What runs at one layer call: the quantizing cover (innermost context with a matching rule, skip rules
    included) or None, and the capture covers that record its operands."""

    quant: Cover | None
    captures: tuple[Cover, ...]

    @property
    def config(self) -> QDotConfig | None:
        return None if self.quant is None else cast(QDotConfig, self.quant.config)  # plan(): never a capture rule


def plan(covers: list[Cover], module: object) -> Plan:
    """Compose the active contexts at a layer (outermost first): the innermost quantizing context that has a rule
    for the layer decides its config; every capture context whose rule matches records the GEMM's operands (the
    high-precision X, W and dY that the quantizers see)."""
    quant = next((c for c in reversed(covers) if c.rule is not None and c.config != CAPTURE), None)
    if quant is not None and _unsupported_reason(module, quant):
        quant = None
    captures = tuple(c for c in covers if c.config == CAPTURE and not _unsupported_reason(module, c))
    return Plan(quant, captures)


def record(covers: list[Cover], module: object, chosen: Plan) -> None:
    """Update every context's report with what runs at the layer."""
    for c in covers:
        if c.session is None:
            continue
        if c.rule is not None:
            c.session.used.add(id(c.rule))
        report = c.session.report
        reason = _unsupported_reason(module, c)
        if reason is not None:
            if c.config is not None:
                report.unsupported[c.path] = reason
        elif c.session.capture is not None:
            report.record(c.path, CAPTURE if c in chosen.captures else None)
        else:
            report.record(c.path, chosen.config)


def layer_op(covers: list[Cover], module: object, conv: bool = False) -> Callable[..., Any] | None:
    """The dot_general-compatible (conv: conv_general_dilated-compatible) callable for one call of the layer, or
    None when no context acts on it (the layer runs its own GEMM). Records the call in every report."""
    chosen = plan(covers, module)
    record(covers, module, chosen)
    if chosen.config is None and not chosen.captures:
        return None
    op: Callable[..., Any] = lax.conv_general_dilated if conv else lax.dot_general
    if chosen.config is not None:
        q = chosen.quant
        assert q is not None  # a config comes from the quantizing cover
        if q.session is None:  # permanent surgery: the key of the innermost active context that has one
            key = next((s.key for s in reversed(_sessions()) if s.key is not None), None)
            op = _quant_op(q.path, chosen.config, key, conv=conv)
        else:
            op = _quant_op(q.path, chosen.config, q.session.key, q.session.next_call(q.path), conv)
    for c in reversed(chosen.captures):
        assert c.session is not None and c.session.capture is not None  # capture rules come from capture contexts
        sink = functools.partial(c.session.capture.record, c.path, c.session.next_call(c.path))
        op = capture_lib.tap_dot_general(sink, op)
    return op


def _embed_attend(op, query, embedding):
    """Embed.attend's query @ embedding.T (contract query's features with the embedding's) computed by `op`."""
    return op(query, embedding, (((query.ndim - 1,), (1,)), ((), ())))


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
    assert kernel is not None  # promote_dtype passes arrays through (only None stays None)
    y = einsum_via(
        op, einsum_str, inputs, kernel, precision=mod.precision, preferred_element_type=mod.preferred_element_type
    )
    return y if bias is None else y + jnp.reshape(bias, bias_shape)


def _linen_attend(mod: nn.Embed, op, query):
    """flax.linen.Embed.attend (flax 0.12.8) with the GEMM computed by `op`."""
    query, embedding = mod.promote_dtype(query, mod.embedding, dtype=mod.dtype)
    return _embed_attend(op, query, embedding)


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


def _linen_interceptor(next_fun, args, kwargs, context):
    """The one linen interceptor: installed by the outermost context, it composes every active context."""
    mod = context.module
    if context.method_name == "attend" and isinstance(mod, nn.Embed):
        gemm = "attend"
    elif context.method_name == "__call__" and isinstance(mod, _LINEN_LAYERS + _LINEN_UNSUPPORTED):
        gemm = "conv" if isinstance(mod, nn.Conv) else "call"
    else:
        return next_fun(*args, **kwargs)
    path = _linen_path(mod)
    covers = [Cover(s, path, find(s.rules, path)) for s in _sessions()]
    op = layer_op(covers, mod, conv=gemm == "conv")
    if op is None:
        return next_fun(*args, **kwargs)
    if gemm == "attend":
        return _linen_attend(mod, op, *args, **kwargs)
    if gemm == "conv":
        return _linen_with_hook(mod, op, next_fun, args, kwargs, hook="conv_general_dilated")
    if isinstance(mod, nn.Einsum):
        return _linen_einsum(mod, op, *args, **kwargs)
    return _linen_with_hook(mod, op, next_fun, args, kwargs)


# ---------------------------------------------------------------------------------------------- NNX
@dataclass(frozen=True)
class NNXHook:
    """A dot_general / einsum_op / conv_general_dilated / attend hook installed on an NNX layer: composes the
    contexts that cover the layer (outermost first) at call time; `original` is the attribute it replaced."""

    covers: tuple[Cover, ...]
    attr: str = "dot_general"
    original: object = None
    module: weakref.ref | None = None  # the layer (a weak reference: no cycle in the module graph)

    def __call__(self, *args, **kwargs):
        mod = self.module()
        op = layer_op(list(self.covers), mod, conv=self.attr == "conv_general_dilated")
        if self.attr == "attend":
            return type(mod).attend(mod, *args, **kwargs) if op is None else _nnx_attend(mod, op, *args, **kwargs)
        if op is None:
            op = self.original
        return einsum_via(op, *args, **kwargs) if self.attr == "einsum_op" else op(*args, **kwargs)


def _nnx_attend(mod: nnx.Embed, op, query, out_sharding=None):
    """flax.nnx.Embed.attend (flax 0.12.8) with the GEMM computed by `op`."""
    query, embedding = mod.promote_dtype((query, mod.embedding[...]), dtype=mod.dtype)
    y = _embed_attend(op, query, embedding)
    return y if out_sharding is None else jax.lax.with_sharding_constraint(y, out_sharding)


def nnx_layers(model: nnx.Module, also: tuple[type, ...] = ()) -> list[tuple[str, nnx.Module]]:
    """(path, module) of every nnx.Linear / LinearGeneral / Einsum / Conv / Embed (and instance of `also`)."""
    if not isinstance(model, nnx.Module):
        raise TypeError(f"model= takes Flax NNX modules (linen models need no model=), got {type(model).__name__}")
    return [
        ("/".join(str(p) for p in path), m)
        for path, m in nnx.iter_modules(model)
        if type(m) in _NNX_HOOKS or isinstance(m, also)
    ]


def _current_covers(m: nnx.Module, attr: str) -> tuple[Cover, ...]:
    hook = m.__dict__.get(attr)
    return hook.covers if isinstance(hook, NNXHook) else ()


def _install(
    model: nnx.Module, rules: tuple[Rule, ...], session: Session | None
) -> list[tuple[nnx.Module, str, object, bool]]:
    """Add `session`'s cover to every layer of `model` it sees; returns (module, attribute, old value) to restore.
    The reports of every context covering a layer are updated with what now runs there."""
    saved = []
    for path, m in nnx_layers(model, _NNX_UNSUPPORTED):
        rule = find(rules, path)
        if session is None and (rule is None or rule.config is None):
            continue  # permanent surgery hooks only the layers it quantizes
        if isinstance(m, _NNX_UNSUPPORTED):
            record([Cover(session, path, rule)], m, Plan(None, ()))
            continue
        attr = _NNX_HOOKS[type(m)]
        covers = _current_covers(m, attr)
        if session is None:  # permanent surgery replaces earlier surgery, and cannot outlive a context's hooks
            if any(c.session is not None for c in covers):
                raise ValueError(f"quantize_nnx on {path!r} inside an active quantized/capture context on it")
            covers = ()
        covers += (Cover(session, path, rule),)
        record(list(covers), m, plan(list(covers), m))
        old = m.__dict__.get(attr, getattr(m, attr))
        saved.append((m, attr, old, attr in m.__dict__))
        if getattr(m, "dot_general_cls", None) is not None:  # LinearGeneral prefers dot_general_cls
            saved.append((m, "dot_general_cls", cast(Any, m).dot_general_cls, True))
            object.__setattr__(m, "dot_general_cls", None)
        # attend is a method: the hook calls type(m).attend when nothing acts
        original = None if attr == "attend" else old.original if isinstance(old, NNXHook) else old
        object.__setattr__(m, attr, NNXHook(covers, attr, original, weakref.ref(m)))
    return saved


def _restore(saved: list[tuple[nnx.Module, str, object, bool]]) -> None:
    for m, attr, old, own in reversed(saved):
        if own:
            object.__setattr__(m, attr, old)
        else:
            object.__delattr__(m, attr)


def quantize_nnx(model: nnx.Module, rules: Rules) -> Report:
    """Quantize an NNX model in place (module surgery on its Linear / LinearGeneral / Einsum / Conv / Embed.attend
    hooks); returns the report of what the surgery installed."""
    compiled = _only(parse_rules(rules), QDotConfig, "quantize_nnx")
    report = Report()
    for path, m in nnx_layers(model, _NNX_UNSUPPORTED):
        cover = Cover(None, path, find(compiled, path))
        reason = _unsupported_reason(m, cover)
        if reason is not None and cover.config is not None:
            report.unsupported[path] = reason
        elif reason is None:
            report.record(path, cover.config)
    _install(model, compiled, None)
    return report


@contextlib.contextmanager
def _activate(session: Session, models: Models) -> Iterator[Session]:
    layers = [] if models is None else models if isinstance(models, list | tuple) else [models]
    saved: list[tuple[nnx.Module, str, object, bool]] = []
    outermost = not _sessions()
    _sessions().append(session)
    try:
        for m in layers:
            saved += _install(m, session.rules, session)
        with nn.intercept_methods(_linen_interceptor) if outermost else contextlib.nullcontext():
            yield session
    finally:
        _restore(saved)
        _sessions().remove(session)
        session.report.unused = session.unused_patterns()


@contextlib.contextmanager
def quantized(rules: Rules = (), *, key: Key | None = None, model: Models = None) -> Iterator[Report]:
    """Quantize matched Dense/DenseGeneral/Einsum/Conv layers and tied heads (Embed.attend) of linen models (and
    of the NNX `model`); yields a Report. Nested contexts compose: the innermost one with a rule for a layer
    decides, every report records what ran."""
    session = Session(_only(parse_rules(rules), QDotConfig, "quantized"), key)
    with _activate(session, model):
        yield session.report


@contextlib.contextmanager
def capture(rules: Rules = ".*", *, model: Models = None) -> Iterator[capture_lib.Capture]:
    """Record the X, W and dY operands of matched GEMMs during forward and backward passes: the high-precision
    operands, which under an enclosing or nested `quantized` context are those its quantizers see."""
    report = Report()
    store = capture_lib.Capture(report=report)
    session = Session(_only(parse_rules(rules, default=CAPTURE), str, "capture"), None, report, store)
    try:
        with _activate(session, model):
            yield store
    finally:
        store.close()
