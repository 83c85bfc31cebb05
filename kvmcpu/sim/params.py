"""Typed, described, validated SimObject parameters (gem5's ``Param.Int(3, "desc")``).

A parameter set is a dataclass deriving from :class:`Params`; every field is
declared with :func:`param`, which records a description and an optional
``check``. Construction validates every field's type (int, float, bool, str,
Enum, Optional/Union and lists of those; other classes by ``isinstance``) and
runs the checks, raising :class:`~kvmcpu.errors.ConfigError` that names the
parameter::

    @dataclass
    class CpuParams(Params):
        clock_period: int = param(1000, "clock period in ticks", check=lambda v: v > 0)
        cpu_id: int = param(0, "CPU index")
        host_factor: float = param(1.0, "host to simulated time scale")
"""

from __future__ import annotations

import dataclasses
import enum
import sys
import types
import typing
from typing import Any, Callable, ClassVar, Dict, List, Tuple

from kvmcpu.errors import ConfigError

__all__ = ["Params", "param"]

_MISSING: Any = dataclasses.MISSING


def param(
    default: Any = _MISSING,
    desc: str = "",
    *,
    check: Callable[[Any], object] | None = None,
    default_factory: Callable[[], Any] | None = None,
) -> Any:
    """Declare a parameter: a dataclass field carrying a description and a check.

    Args:
        default: the default value (omit for a required parameter).
        desc: one line describing the parameter (shown by :meth:`Params.describe`).
        check: called with the value; a false result or a ValueError/TypeError
            rejects it.
        default_factory: for mutable defaults (lists).
    """
    metadata = {"desc": desc, "check": check}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _eval_hint(text: str, module: str) -> Any:
    # Python 3.9 cannot evaluate "int | None" under postponed annotations; split it.
    ns = dict(vars(sys.modules[module])) if module in sys.modules else {}
    ns.setdefault("typing", typing)
    parts = [p.strip() for p in text.split("|")]
    if len(parts) == 1:
        return eval(text, ns)  # noqa: S307 - annotations of the class being validated
    return typing.Union[tuple(_eval_hint(p, module) for p in parts)]


def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class Params:
    """Base of parameter dataclasses; validates every field in ``__post_init__``.

    Subclasses must be decorated with ``@dataclass``.
    """

    _hints_cache: ClassVar[Dict[type, Dict[str, Any]]] = {}

    def __post_init__(self) -> None:
        self.validate()

    @classmethod
    def _hints(cls) -> Dict[str, Any]:
        hints = Params._hints_cache.get(cls)
        if hints is None:
            try:
                hints = typing.get_type_hints(cls)
            except Exception:  # noqa: BLE001 - fall back field by field
                hints = {}
                for f in dataclasses.fields(cls):  # type: ignore[arg-type]
                    tp = f.type
                    if isinstance(tp, str):
                        try:
                            tp = _eval_hint(tp, cls.__module__)
                        except Exception:  # noqa: BLE001 - unknown: not type-checked
                            tp = Any
                    hints[f.name] = tp
            Params._hints_cache[cls] = hints
        return hints

    def validate(self) -> None:
        """Check every field's type and ``check``; converts int to float where declared.

        Raises:
            ConfigError: naming the first invalid parameter.
        """
        if not dataclasses.is_dataclass(self):
            raise TypeError(f"{type(self).__name__} must be decorated with @dataclass")
        hints = self._hints()
        owner = type(self).__name__
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            tp = hints.get(f.name, Any)
            ok, converted = _conform(value, tp)
            if not ok:
                raise ConfigError(
                    f"parameter {owner}.{f.name}: expected {_type_name(tp)}, got {value!r}"
                )
            if converted is not value:
                object.__setattr__(self, f.name, converted)
            check = f.metadata.get("check")
            if check is not None:
                try:
                    good = check(converted)
                except (ValueError, TypeError, ArithmeticError) as err:
                    raise ConfigError(
                        f"parameter {owner}.{f.name}: invalid value {converted!r}: {err}"
                    ) from err
                if not good:
                    desc = f.metadata.get("desc") or "its check"
                    raise ConfigError(
                        f"parameter {owner}.{f.name}: invalid value {converted!r} "
                        f"(rejected by the check of: {desc})"
                    )

    @classmethod
    def describe(cls) -> List[Tuple[str, str, Any, str]]:
        """``(name, type, default, description)`` for every parameter."""
        hints = cls._hints()
        rows = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if f.default is not dataclasses.MISSING:
                default: Any = f.default
            elif f.default_factory is not dataclasses.MISSING:
                default = f.default_factory()
            else:
                default = None
            rows.append((f.name, _type_name(hints.get(f.name, Any)), default,
                         str(f.metadata.get("desc", ""))))
        return rows

    def as_dict(self) -> Dict[str, Any]:
        """The parameter values by name (shallow)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _conform(value: Any, tp: Any) -> Tuple[bool, Any]:
    """Whether ``value`` fits ``tp``, and the value to store (int widened to float)."""
    if tp is Any or tp is object:
        return True, value
    origin = typing.get_origin(tp)
    union_type = getattr(types, "UnionType", None)
    if origin is typing.Union or (union_type is not None and isinstance(tp, union_type)):
        for member in typing.get_args(tp):
            ok, converted = _conform(value, member)
            if ok:
                return True, converted
        return False, value
    if origin is typing.Literal:
        return value in typing.get_args(tp), value
    if origin in (list, tuple, List, Tuple):
        if not isinstance(value, (list, tuple)):
            return False, value
        args = typing.get_args(tp)
        item_tp = args[0] if args else Any
        items = []
        for item in value:
            ok, converted = _conform(item, item_tp)
            if not ok:
                return False, value
            items.append(converted)
        return True, (tuple(items) if origin in (tuple, Tuple) else items)
    if origin is not None:
        return isinstance(value, origin), value
    if tp is type(None) or tp is None:
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False, value
        return True, float(value)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        if isinstance(value, tp):
            return True, value
        if isinstance(value, str) and value in tp.__members__:
            return True, tp[value]
        return False, value
    if isinstance(tp, type):
        return isinstance(value, tp), value
    return True, value
