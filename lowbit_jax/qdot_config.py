"""QDotConfig: the three GEMMs of a linear layer as data: the formats of the six operands, where each GEMM is
rotated, how each operand rounds, and how products accumulate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import jax.numpy as jnp
import numpy as np

from lowbit_jax import accumulate, blocks, hadamard, rounding
from lowbit_jax.formats import Format, get_format
from lowbit_jax.impls import check_impl

OPERANDS = ("x_fwd", "w_fwd", "dy_dx", "w_dx", "x_dw", "dy_dw")
GEMMS = ("fwd", "dx", "dw")
GEMM_OPERANDS = {"fwd": ("x_fwd", "w_fwd"), "dx": ("dy_dx", "w_dx"), "dw": ("x_dw", "dy_dw")}
GRAD_OPERANDS = ("dy_dx", "dy_dw")
BACKWARD_INPUTS = ("original", "forward")


def _as_format(value: object, field: str) -> Format | None:
    if value is None or isinstance(value, Format):
        return value
    if isinstance(value, str):
        return get_format(value)
    raise TypeError(f"QDotConfig.{field} must be a Format, a format name or None, got {type(value).__name__}")


def is_tiled(fmt: Format | None) -> bool:
    """Whether `fmt` quantizes 2-D tiles (block_size (r, c)) rather than blocks along one axis."""
    return fmt is not None and blocks.block_ndim(fmt.block_size) == 2


def _check_operands(names: object, field: str) -> tuple[str, ...]:
    """Operand names as a tuple in OPERANDS order; ValueError naming an unknown one."""
    if isinstance(names, str):
        names = (names,)
    if not isinstance(names, tuple | list | frozenset | set):
        raise TypeError(f"QDotConfig.{field} takes a tuple of operand names {OPERANDS}, got {names!r}")
    bad = [n for n in names if n not in OPERANDS]
    if bad:
        raise ValueError(f"QDotConfig.{field}: unknown operand(s) {bad}; operands are {list(OPERANDS)}")
    return tuple(n for n in OPERANDS if n in names)


@dataclass(frozen=True)
class Rotation:
    """A block-diagonal random Hadamard rotation R = diag(signs) H / sqrt(size) of one GEMM's contracting axis.

    signs: "key" (drawn per call: fold_in of the call's key, or of jax.random.key(rotation_seed) without one; the
    interceptor gives every layer its own), an int seed (the signs of jax.random.key(seed): one vector for every
    layer and step), or `size` explicit +-1 values (one fixed vector, e.g. TransformerEngine's). only: None rotates
    both operands, so the GEMM runs in the rotated basis (the product is unchanged up to rounding); the name of one
    of the GEMM's operands quantizes that operand alone in the rotated basis and rotates it back (R^T) before the
    GEMM.
    """

    size: int
    signs: str | int | tuple[float, ...] = "key"
    only: str | None = None

    def __post_init__(self) -> None:
        hadamard.check_size(self.size)
        signs = self.signs
        if isinstance(signs, list | np.ndarray):
            signs = tuple(np.asarray(signs).ravel().tolist())
        if isinstance(signs, tuple):
            hadamard.check_signs(np.asarray(signs, np.float64), self.size)
            object.__setattr__(self, "signs", tuple(float(v) for v in signs))
        elif isinstance(signs, bool) or not (signs == "key" or isinstance(signs, int | np.integer)):
            raise ValueError(f"Rotation.signs must be 'key', an int seed or {self.size} +-1 values, got {signs!r}")
        elif not isinstance(signs, str):
            object.__setattr__(self, "signs", int(signs))
        if self.only is not None and self.only not in OPERANDS:
            raise ValueError(f"Rotation.only must be None or an operand name {OPERANDS}, got {self.only!r}")

    @property
    def label(self) -> str:
        """e.g. 'rot16', 'rot16(seed=3)', 'rot16(fixed)', 'rot32(only=w_fwd)'."""
        extra = [] if self.signs == "key" else ["fixed" if isinstance(self.signs, tuple) else f"seed={self.signs}"]
        extra += [] if self.only is None else [f"only={self.only}"]
        return f"rot{self.size}" + (f"({','.join(extra)})" if extra else "")

    def rotates(self, operand: str) -> bool:
        """Whether this rotation rotates `operand` (one of its GEMM's two)."""
        return self.only is None or self.only == operand


def _as_rotation(value: object, field: str) -> Rotation | None:
    if value is None or isinstance(value, Rotation):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return Rotation(int(value))
    raise TypeError(f"QDotConfig.{field} must be a Rotation, a Hadamard size or None, got {value!r}")


@dataclass(frozen=True)
class QDotConfig:
    """The three GEMMs of a linear layer: the format of each of the six operands (None = unquantized), where each
    GEMM is rotated, which operands round stochastically or with MS-EDEN, and how products accumulate.

    Rotation per GEMM: rot_fwd / rot_dx / rot_dw (a Rotation, or a Hadamard size h for Rotation(h)). The shorthand
    rotation=h rotates the forward GEMM (with rotate_grads also both backward GEMMs), signs from the key or from
    jax.random.key(rotation_seed); give one spelling, not both.
    Rounding per operand: `stochastic` names operands rounded stochastically (stochastic_grads=True adds dy_dx and
    dy_dw, the paper's gradient SR); sr_bits: random bits per rounding decision (an int for every stochastic
    operand, or {operand: bits}; None: 24); `eden` names operands quantized with Quartet II's unbiased MS-EDEN
    estimator (lowbit_jax.eden), which needs its GEMM rotated on both operands (the rotation size is its group).
    Identity formats (bf16) round to nearest whatever they are asked. Stochastic operands need a key once used.
    Accumulation: accum_dtype is the GEMM's accumulation and output dtype; accum_block=k emulates a hardware
    accumulator (lowbit_jax.accumulate): each K-chunk of k products is summed in float32 and the chunk sums are
    accumulated in accum_format (default float32) with round-to-nearest-even after every add.
    backward_inputs: "original" (the backward GEMMs quantize X and W from the high-precision tensors, as
    TransformerEngine does) or "forward" (they re-quantize the forward GEMM's Q(X) and Q(W), as Quartet II does).
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
    rot_fwd: Rotation | int | None = None
    rot_dx: Rotation | int | None = None
    rot_dw: Rotation | int | None = None
    stochastic: tuple[str, ...] = ()
    sr_bits: int | dict[str, int] | tuple[tuple[str, int], ...] | None = None
    eden: tuple[str, ...] = ()
    accum_block: int | None = None
    accum_format: str | None = None
    backward_inputs: str = "original"

    def __post_init__(self) -> None:
        for name in OPERANDS:
            object.__setattr__(self, name, _as_format(getattr(self, name), name))
        for g in GEMMS:
            object.__setattr__(self, f"rot_{g}", _as_rotation(getattr(self, f"rot_{g}"), f"rot_{g}"))
        if self.rotation is not None:
            hadamard.check_size(self.rotation)
            given = [f"rot_{g}" for g in GEMMS if getattr(self, f"rot_{g}") is not None]
            if given:
                raise ValueError(f"QDotConfig: give rotation= (the shorthand) or {', '.join(given)}, not both")
        if not isinstance(self.stochastic_grads, bool):
            raise TypeError(f"QDotConfig.stochastic_grads must be True or False, got {self.stochastic_grads!r}")
        object.__setattr__(self, "stochastic", _check_operands(self.stochastic, "stochastic"))
        object.__setattr__(self, "eden", _check_operands(self.eden, "eden"))
        object.__setattr__(self, "sr_bits", self._normal_sr_bits())
        for g in GEMMS:
            self._check_gemm(g)
        dt = jnp.dtype(self.accum_dtype)
        if not jnp.issubdtype(dt, jnp.floating):
            raise ValueError(f"accum_dtype must be a floating dtype, got {self.accum_dtype!r}")
        object.__setattr__(self, "accum_dtype", dt.name)
        self._check_accumulator()
        if self.backward_inputs not in BACKWARD_INPUTS:
            raise ValueError(
                f"QDotConfig.backward_inputs must be one of {BACKWARD_INPUTS}, got {self.backward_inputs!r}"
            )
        if self.backward_inputs == "forward" and self.rotation_of("fwd") is not None:
            raise ValueError(
                "QDotConfig.backward_inputs='forward' re-quantizes the forward GEMM's Q(X) and Q(W), which a forward "
                "rotation leaves in the rotated basis: rotate the backward GEMMs instead"
            )
        check_impl(self.impl)

    # ---------------------------------------------------------------------------------------- validation
    def _normal_sr_bits(self) -> int | tuple[tuple[str, int], ...] | None:
        """sr_bits as None, one int, or (operand, bits) pairs of stochastic operands in OPERANDS order."""
        v = self.sr_bits
        if v is None:
            return None
        pairs = dict(v) if isinstance(v, dict | tuple | list) else None
        for n in [v] if pairs is None else list(pairs.values()):
            try:
                rounding.check_sr_bits(cast(int, n))
            except ValueError as err:
                raise ValueError(f"QDotConfig.sr_bits: {err}") from err
        if not any(self.is_stochastic(o) for o in OPERANDS):
            raise ValueError("QDotConfig.sr_bits is given but no operand rounds stochastically (stochastic=...)")
        if pairs is None:
            return int(v)  # type: ignore[arg-type]
        names = _check_operands(tuple(pairs), "sr_bits")
        stray = [o for o in names if not self.is_stochastic(o)]
        if stray:
            raise ValueError(f"QDotConfig.sr_bits names {stray}, which do not round stochastically")
        return tuple((o, int(pairs[o])) for o in names)

    def _check_gemm(self, gemm: str) -> None:
        rot, ops = self.rotation_of(gemm), GEMM_OPERANDS[gemm]
        if rot is not None:
            if rot.only is not None and rot.only not in ops:
                raise ValueError(f"QDotConfig.rot_{gemm}: only={rot.only!r} is not an operand of the {gemm} GEMM {ops}")
            tiled = [n for n in ops if rot.rotates(n) and is_tiled(getattr(self, n))]
            if tiled:
                fmt = getattr(self, tiled[0])
                raise ValueError(
                    f"QDotConfig: Hadamard rotation ({rot.label} of the {gemm} GEMM) does not combine with the 2-D "
                    f"tile format {fmt.label} of {', '.join(tiled)}: a tile has no single axis to rotate along"
                )
        for op in ops:
            if op not in self.eden:
                continue
            if rot is None or rot.only is not None:
                raise ValueError(
                    f"QDotConfig.eden: MS-EDEN on {op} needs the {gemm} GEMM rotated on both operands "
                    f"(rot_{gemm}=Rotation(h)): the random rotation is what makes its correction unbiased"
                )
            if getattr(self, op) is None:
                raise ValueError(f"QDotConfig.eden: {op} is unquantized (None); MS-EDEN needs a format")
            if self.is_stochastic(op):
                raise ValueError(f"QDotConfig: {op} is both stochastic and eden; choose one rounding")

    def _check_accumulator(self) -> None:
        if self.accum_block is None:
            if self.accum_format is not None:
                raise ValueError("QDotConfig.accum_format needs accum_block=k (the chunk length summed in float32)")
            return
        if self.accum_dtype != "float32":
            raise ValueError(
                "QDotConfig.accum_block emulates the accumulator in accum_format; leave accum_dtype float32 "
                f"(got {self.accum_dtype!r}) and give accum_format={self.accum_dtype!r} instead"
            )
        self.accumulator  # noqa: B018 -- AccumSpec validates block and format

    # ---------------------------------------------------------------------------------------- views
    def rotation_of(self, gemm: str) -> Rotation | None:
        """The Rotation of GEMM `gemm` ("fwd", "dx", "dw"): rot_<gemm>, or the rotation= shorthand's."""
        if self.rotation is not None:
            return Rotation(self.rotation) if gemm == "fwd" or self.rotate_grads else None
        return getattr(self, f"rot_{gemm}")

    def is_stochastic(self, operand: str) -> bool:
        """Whether `operand` rounds stochastically (in `stochastic`, or a dY operand with stochastic_grads)."""
        return operand in self.stochastic or (self.stochastic_grads and operand in GRAD_OPERANDS)

    def sr_bits_of(self, operand: str) -> int | None:
        """Random bits per rounding decision of a stochastic operand (None: the full 24)."""
        if self.sr_bits is None or not self.is_stochastic(operand):
            return None
        if isinstance(self.sr_bits, int):
            return self.sr_bits
        return dict(cast(tuple[tuple[str, int], ...], self.sr_bits)).get(operand)

    def rounding_of(self, operand: str) -> str:
        """How `operand` rounds onto its grid: "nearest", "stochastic" or "eden"."""
        if operand in self.eden:
            return "eden"
        return "stochastic" if self.is_stochastic(operand) else "nearest"

    @property
    def needs_key(self) -> bool:
        """Whether some operand rounds stochastically or with MS-EDEN (a key is needed once its GEMM runs)."""
        return any(self.rounding_of(o) != "nearest" for o in OPERANDS)

    @property
    def accumulator(self) -> accumulate.AccumSpec | None:
        """The emulated accumulator (None: the GEMM accumulates in accum_dtype as the backend does)."""
        if self.accum_block is None:
            return None
        return accumulate.AccumSpec(self.accum_block, self.accum_format or "float32")

    # ---------------------------------------------------------------------------------------- presets
    @classmethod
    def train(cls, fmt: Format | str, **kwargs: Any) -> QDotConfig:
        """All six operands in `fmt` (the paper's training setting); operands named in kwargs take their own."""
        operands: dict[str, Any] = dict.fromkeys(OPERANDS, fmt)
        return cls(**(operands | kwargs))

    @classmethod
    def direct_cast(cls, fmt: Format | str, **kwargs: Any) -> QDotConfig:
        """Forward X and W in `fmt`, backward unquantized (the paper's direct-cast inference setting)."""
        return cls(x_fwd=fmt, w_fwd=fmt, **kwargs)

    def formats(self) -> dict[str, Format | None]:
        return {name: getattr(self, name) for name in OPERANDS}

    @property
    def label(self) -> str:
        """Short description, e.g. 'train(mxint8)', 'direct_cast(nvfp4)+rot16', 'train(nvfp4)+rot_dw16(fixed)+sr'."""
        f = [None if v is None else v.label for v in self.formats().values()]
        if len(set(f)) == 1 and f[0] is not None:
            base = f"train({f[0]})"
        elif f[0] is not None and f[0] == f[1] and f[2:] == [None] * 4:
            base = f"direct_cast({f[0]})"
        else:
            base = ",".join(f"{n}={v}" for n, v in zip(OPERANDS, f, strict=True) if v is not None) or "none"
        extra = "+bwd_from_fwd" if self.backward_inputs == "forward" else ""
        return base + self._rotation_label() + self._rounding_label() + self._accum_label() + extra

    def _rotation_label(self) -> str:
        if self.rotation is not None:
            return f"+rot{self.rotation}" + "+rotgrads" * self.rotate_grads
        return "".join(f"+{r.label.replace('rot', f'rot_{g}', 1)}" for g in GEMMS if (r := self.rotation_of(g)))

    def _rounding_label(self) -> str:
        sr = [o for o in OPERANDS if self.is_stochastic(o)]
        out = "+sr" if sr == list(GRAD_OPERANDS) else f"+sr({','.join(sr)})" if sr else ""
        if isinstance(self.sr_bits, int):
            out += f"[{self.sr_bits}bit]"
        elif self.sr_bits is not None:  # normalised by __post_init__ to (operand, bits) pairs
            pairs = cast(tuple[tuple[str, int], ...], self.sr_bits)
            out += "[" + ",".join(f"{o}:{n}bit" for o, n in pairs) + "]"
        return out + (f"+eden({','.join(self.eden)})" if self.eden else "")

    def _accum_label(self) -> str:
        out = "" if self.accum_dtype == "float32" else f"+acc_{self.accum_dtype}"
        if self.accum_block is not None:
            out += f"+acc{self.accum_block}_{self.accum_format or 'float32'}"
        return out
