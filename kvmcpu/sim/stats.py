"""Statistics: Scalar, Vector, Formula, Value and Average in groups, dumped as gem5 does.

Stats live in :class:`Group` objects that follow the SimObject tree, so names
come out as ``system.cpu.numVMExits``. A stat registers itself with the group
it is created in and becomes an attribute of it::

    class KvmCpuStats(Group):
        def __init__(self, owner: Group) -> None:
            super().__init__(owner)             # nameless: merged into the owner, as gem5
            self.numVMExits = Scalar(self, "numVMExits", "total number of KVM exits", Count)

    stats.numVMExits += 1                       # cheap: one attribute load and one add

:class:`Statistics` owns the simulation-wide stats (``simSeconds``,
``simTicks``, ``finalTick``, ``simFreq``, ``hostSeconds``, ``hostTickRate``,
``hostMemory``) and writes ``stats.txt`` in gem5's text format byte for byte
(``src/base/stats/text.cc``): a blank line and the begin banner, one line per
value laid out as ``'%-40s %12s %10s %10s # %s (%s)'`` (the two ``%10s``
columns are gem5's empty pdf/cdf), a blank line and the end banner. Integers
print without decimals, other values with six (or the stat's precision),
no value as ``nan``. Every dump appends one such block to the file.
:meth:`Statistics.dump_json` writes the same lines as one JSON object per dump
(JSON Lines).

A dump to a file name never leaves a half-written file: the new contents go to
a temporary file in the same directory, which is renamed over the old one
(:func:`write_atomically`), so a run killed during a dump leaves the previous
file whole. :meth:`Statistics.start_file` makes the next dump replace a file
instead of appending to it (the CLI's per-run stats.txt, as gem5 starts one).
"""

from __future__ import annotations

import json
import math
import operator
import os
import re
import resource
import time
from enum import IntFlag
from typing import (
    IO,
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    NamedTuple,
    Sequence,
    Tuple,
    Union,
)

from kvmcpu.sim.atomic import write_atomically
from kvmcpu.sim.eventq import TICKS_PER_SECOND, Event, EventQueue, Priority, main_queue

__all__ = [
    "Unit",
    "Count",
    "Cycle",
    "Tick",
    "Second",
    "Bit",
    "Byte",
    "Ratio",
    "Unspecified",
    "Joule",
    "Watt",
    "Volt",
    "DegreeCelsius",
    "Flags",
    "Stat",
    "Scalar",
    "Vector",
    "Formula",
    "Value",
    "Average",
    "Group",
    "Statistics",
    "StatDumpEvent",
    "value_to_string",
    "write_atomically",
    "BEGIN_BANNER",
    "END_BANNER",
]

BEGIN_BANNER = "---------- Begin Simulation Statistics ----------"
END_BANNER = "---------- End Simulation Statistics   ----------"

Number = Union[int, float]
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Unit:
    """A stat unit as gem5 prints it; ``Count / Second`` is ``(Count/Second)``."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def of(cls, unit: Union[Unit, str]) -> Unit:
        """``unit`` as a Unit; ``"Count/Second"`` becomes the rate ``(Count/Second)``."""
        if isinstance(unit, Unit):
            return unit
        if "/" in unit and not unit.startswith("("):
            num, _, den = unit.partition("/")
            return cls.of(num.strip()) / cls.of(den.strip())
        return cls(unit)

    def __truediv__(self, other: Union[Unit, str]) -> Unit:
        return Unit(f"({self.name}/{Unit.of(other).name})")

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"Unit({self.name!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unit) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)


Count = Unit("Count")
Cycle = Unit("Cycle")
Tick = Unit("Tick")
Second = Unit("Second")
Bit = Unit("Bit")
Byte = Unit("Byte")
Ratio = Unit("Ratio")
Unspecified = Unit("Unspecified")
Joule = Unit("Joule")
Watt = Unit("Watt")
Volt = Unit("Volt")
DegreeCelsius = Unit("Celsius")


class Flags(IntFlag):
    """gem5 stat flags that change printing."""

    none = 0
    total = 1  #: print ``name::total`` after a vector's elements
    nozero = 2  #: skip values that are zero
    nonan = 4  #: skip values that are nan


def _div(a: Number, b: Number) -> Number:
    # IEEE semantics as in gem5's C++ (x/0 is inf, 0/0 is nan), not ZeroDivisionError.
    if b == 0:
        if a == 0 or (isinstance(a, float) and math.isnan(a)):
            return math.nan
        return math.copysign(math.inf, a)
    if isinstance(a, int) and isinstance(b, int) and a % b == 0:
        return a // b
    return a / b


_OPS: Dict[str, Callable[[Number, Number], Number]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": _div,
}


class _Operand:
    """Arithmetic on stats builds a lazy expression for :class:`Formula`.

    The operators are typed ``Any`` so that the in-place ``+=`` of Scalar can
    return the Scalar itself.
    """

    def values(self) -> List[Number]:
        raise NotImplementedError

    def total(self) -> Number:
        raise NotImplementedError

    def _op(self, op: str, other: Any, reverse: bool = False) -> _Expr:
        rhs = other if isinstance(other, _Operand) else _Const(other)
        return _Expr(op, rhs, self) if reverse else _Expr(op, self, rhs)

    def __add__(self, other: Any) -> Any:
        return self._op("+", other)

    def __radd__(self, other: Any) -> Any:
        return self._op("+", other, True)

    def __sub__(self, other: Any) -> Any:
        return self._op("-", other)

    def __rsub__(self, other: Any) -> Any:
        return self._op("-", other, True)

    def __mul__(self, other: Any) -> Any:
        return self._op("*", other)

    def __rmul__(self, other: Any) -> Any:
        return self._op("*", other, True)

    def __truediv__(self, other: Any) -> Any:
        return self._op("/", other)

    def __rtruediv__(self, other: Any) -> Any:
        return self._op("/", other, True)


class _Const(_Operand):
    def __init__(self, value: Number) -> None:
        if not isinstance(value, (int, float)):
            raise TypeError(f"cannot use {value!r} in a stat formula")
        self.value = value

    def values(self) -> List[Number]:
        return [self.value]

    def total(self) -> Number:
        return self.value


class _Expr(_Operand):
    def __init__(self, op: str, lhs: _Operand, rhs: _Operand) -> None:
        self.fn = _OPS[op]
        self.lhs = lhs
        self.rhs = rhs

    def values(self) -> List[Number]:
        a, b = self.lhs.values(), self.rhs.values()
        if len(a) == 1 and len(b) != 1:
            a = a * len(b)
        elif len(b) == 1 and len(a) != 1:
            b = b * len(a)
        elif len(a) != len(b):
            raise ValueError(f"stat formula mixes vectors of sizes {len(a)} and {len(b)}")
        fn = self.fn
        return [fn(x, y) for x, y in zip(a, b)]

    def total(self) -> Number:
        return self.fn(self.lhs.total(), self.rhs.total())


class Stat(_Operand):
    """Base of every stat: a name, a description, a unit, a precision and flags."""

    kind = "Stat"

    def __init__(
        self,
        parent: Group | None,
        name: str,
        desc: str = "",
        unit: Union[Unit, str] = Unspecified,
        *,
        precision: int = -1,
        flags: int = Flags.none,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"invalid stat name {name!r}")
        self.name = name
        self.desc = desc
        self.unit = Unit.of(unit)
        self.precision = precision
        self.flags = Flags(flags)
        if parent is not None:
            parent.add_stat(self)

    def reset(self) -> None:
        """Zero the stat (gem5 ``reset``)."""

    def __iadd__(self, n: Any) -> Stat:
        # Without this, ``group.formula += 1`` would silently rebind the attribute
        # to an expression.
        raise TypeError(f"cannot add to {self.kind} {self.name!r}; only Scalar and Average count")

    def _rows(self, full: str) -> Iterator[_Row]:
        """The printed lines of this stat under the full name ``full``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{self.kind} {self.name} = {self.values()!r}>"


class _Row(NamedTuple):
    name: str
    value: Number
    precision: int
    desc: str
    unit: str


def _skip(value: Number, flags: Flags) -> bool:
    if flags & Flags.nozero and value == 0:
        return True
    return bool(flags & Flags.nonan and isinstance(value, float) and math.isnan(value))


def _vector_rows(
    stat: Stat,
    full: str,
    vec: Sequence[Number],
    total: Number,
    subnames: Sequence[str],
    subdescs: Sequence[str],
) -> Iterator[_Row]:
    # gem5 VectorPrint: a one-element vector prints under the bare name.
    unit = stat.unit.name
    if len(vec) == 1:
        if not _skip(vec[0], stat.flags):
            yield _Row(full, vec[0], stat.precision, stat.desc, unit)
        return
    if not (stat.flags & Flags.nozero) or total != 0:
        havesub = any(subnames)
        for i, value in enumerate(vec):
            sub = subnames[i] if i < len(subnames) else ""
            if havesub and not sub:
                continue
            desc = (subdescs[i] if i < len(subdescs) else "") if any(subdescs) else stat.desc
            if not _skip(value, stat.flags):
                yield _Row(f"{full}::{sub or i}", value, stat.precision, desc, unit)
    if stat.flags & Flags.total and not _skip(total, stat.flags):
        yield _Row(f"{full}::total", total, stat.precision, stat.desc, unit)


class Scalar(Stat):
    """A counter. ``s += n`` and ``s.inc(n)`` are the cheap increments."""

    kind = "Scalar"

    def __init__(self, parent: Group | None, name: str, desc: str = "",
                 unit: Union[Unit, str] = Unspecified, **kw: Any) -> None:
        self.value: Number = 0
        super().__init__(parent, name, desc, unit, **kw)

    def __iadd__(self, n: Any) -> Scalar:
        self.value += n
        return self

    def __isub__(self, n: Any) -> Scalar:
        self.value -= n
        return self

    def inc(self, n: Number = 1) -> None:
        """Add ``n``."""
        self.value += n

    def set(self, value: Number) -> None:
        """Overwrite the value."""
        self.value = value

    def result(self) -> Number:
        """The value."""
        return self.value

    def values(self) -> List[Number]:
        return [self.value]

    def total(self) -> Number:
        return self.value

    def reset(self) -> None:
        self.value = 0

    def __int__(self) -> int:
        return int(self.value)

    def __float__(self) -> float:
        return float(self.value)

    def _rows(self, full: str) -> Iterator[_Row]:
        if not _skip(self.value, self.flags):
            yield _Row(full, self.value, self.precision, self.desc, self.unit.name)


class Value(Stat):
    """A value read at dump time from a callable or a constant (gem5 ``Value``)."""

    kind = "Value"

    def __init__(self, parent: Group | None, name: str, desc: str = "",
                 unit: Union[Unit, str] = Unspecified, *,
                 functor: Union[Callable[[], Number], Number] = 0, **kw: Any) -> None:
        self._functor = functor
        super().__init__(parent, name, desc, unit, **kw)

    def functor(self, fn: Union[Callable[[], Number], Number]) -> Value:
        """Read the value from ``fn()`` (or the constant ``fn``); returns self."""
        self._functor = fn
        return self

    def result(self) -> Number:
        """The current value."""
        fn = self._functor
        return fn() if callable(fn) else fn

    def values(self) -> List[Number]:
        return [self.result()]

    def total(self) -> Number:
        return self.result()

    def _rows(self, full: str) -> Iterator[_Row]:
        value = self.result()
        if not _skip(value, self.flags):
            yield _Row(full, value, self.precision, self.desc, self.unit.name)


class Average(Stat):
    """The time-weighted average of a level (gem5 ``Average``): set it, read the mean per tick."""

    kind = "Average"

    def __init__(self, parent: Group | None, name: str, desc: str = "",
                 unit: Union[Unit, str] = Unspecified, *,
                 queue: EventQueue | None = None, **kw: Any) -> None:
        q = queue if queue is not None else (parent.queue if parent is not None else None)
        self._queue = q if q is not None else main_queue
        now = self._queue.cur_tick
        self._current: Number = 0
        self._sum: Number = 0
        self._last = now
        self._reset_tick = now
        super().__init__(parent, name, desc, unit, **kw)

    def set(self, value: Number) -> None:
        """The level from now on."""
        now = self._queue.cur_tick
        self._sum += self._current * (now - self._last)
        self._last = now
        self._current = value

    def __iadd__(self, n: Any) -> Average:
        self.set(self._current + n)
        return self

    def __isub__(self, n: Any) -> Average:
        self.set(self._current - n)
        return self

    def result(self) -> Number:
        """The mean level since the last reset."""
        now = self._queue.cur_tick
        return _div(self._sum + self._current * (now - self._last), now - self._reset_tick)

    def values(self) -> List[Number]:
        return [self.result()]

    def total(self) -> Number:
        return self.result()

    def reset(self) -> None:
        now = self._queue.cur_tick
        self._sum = 0
        self._last = now
        self._reset_tick = now

    def _rows(self, full: str) -> Iterator[_Row]:
        value = self.result()
        if not _skip(value, self.flags):
            yield _Row(full, value, self.precision, self.desc, self.unit.name)


class Vector(Stat):
    """A fixed-size array of counters: ``v[i] += 1``; prints ``name::i`` (or subnames).

    ``name::total`` follows the elements unless ``flags`` drops :attr:`Flags.total`.
    """

    kind = "Vector"

    def __init__(self, parent: Group | None, name: str, size: int, desc: str = "",
                 unit: Union[Unit, str] = Unspecified, *,
                 subnames: Sequence[str] = (), subdescs: Sequence[str] = (),
                 flags: int = Flags.total, **kw: Any) -> None:
        if size < 1:
            raise ValueError(f"vector {name!r} needs at least one element")
        self.data: List[Number] = [0] * size
        self.subnames: List[str] = list(subnames) + [""] * (size - len(subnames))
        self.subdescs: List[str] = list(subdescs) + [""] * (size - len(subdescs))
        super().__init__(parent, name, desc, unit, flags=flags, **kw)

    def __getitem__(self, i: int) -> Number:
        return self.data[i]

    def __setitem__(self, i: int, value: Number) -> None:
        self.data[i] = value

    def __len__(self) -> int:
        return len(self.data)

    def inc(self, i: int, n: Number = 1) -> None:
        """Add ``n`` to element ``i``."""
        self.data[i] += n

    def subname(self, i: int, name: str, desc: str = "") -> Vector:
        """Name element ``i`` (and optionally describe it); returns self."""
        self.subnames[i] = name
        if desc:
            self.subdescs[i] = desc
        return self

    def result(self) -> List[Number]:
        """A copy of the elements."""
        return list(self.data)

    def values(self) -> List[Number]:
        return list(self.data)

    def total(self) -> Number:
        return sum(self.data)

    def reset(self) -> None:
        self.data = [0] * len(self.data)

    def _rows(self, full: str) -> Iterator[_Row]:
        return _vector_rows(self, full, self.data, sum(self.data), self.subnames, self.subdescs)


class Formula(Stat):
    """A value computed at dump time from other stats or a callable.

    ``formula`` is an expression of stats (``insts / cycles``), a stat, or a
    callable returning a number or a sequence of numbers.
    """

    kind = "Formula"

    def __init__(self, parent: Group | None, name: str, desc: str = "",
                 unit: Union[Unit, str] = Unspecified, *,
                 formula: Union[_Operand, Callable[[], Union[Number, Sequence[Number]]], None]
                 = None, subnames: Sequence[str] = (), **kw: Any) -> None:
        self._formula = formula
        self.subnames = list(subnames)
        super().__init__(parent, name, desc, unit, **kw)

    def set_formula(
        self, formula: Union[_Operand, Callable[[], Union[Number, Sequence[Number]]]]
    ) -> Formula:
        """Set the expression (gem5 ``formula = a / b``); returns self."""
        self._formula = formula
        return self

    def values(self) -> List[Number]:
        f = self._formula
        if f is None:
            return [math.nan]
        if isinstance(f, _Operand):
            return f.values()
        out = f()
        if isinstance(out, (int, float)):
            return [out]
        return list(out)

    def result(self) -> List[Number]:
        """The evaluated values."""
        return self.values()

    def total(self) -> Number:
        f = self._formula
        if isinstance(f, _Operand):
            return f.total()
        return sum(self.values())

    def _rows(self, full: str) -> Iterator[_Row]:
        vals = self.values()
        total = self.total() if (self.flags & Flags.total or self.flags & Flags.nozero) else 0
        return _vector_rows(self, full, vals, total, self.subnames, ())


class Group:
    """A node of the stats tree.

    Args:
        parent: the enclosing group (None for a root).
        name: this group's name under ``parent``; None merges the group into
            ``parent`` (its stats print as the parent's, as gem5's nameless groups).
        queue: the event queue time-based stats read (default: the parent's).
    """

    def __init__(self, parent: Group | None = None, name: str | None = None, *,
                 queue: EventQueue | None = None) -> None:
        if name is not None and not _NAME.match(name):
            raise ValueError(f"invalid stats group name {name!r}")
        self.stat_group_name = name
        self.stat_list: List[Stat] = []
        self.stat_groups: Dict[str, Group] = {}
        self.merged_into: Group | None = None
        q = queue if queue is not None else (parent.queue if parent is not None else None)
        self.queue: EventQueue = q if q is not None else main_queue
        if parent is not None:
            if name is None:
                self.merged_into = parent
            else:
                parent.add_group(name, self)

    def _owner(self) -> Group:
        g = self
        while g.merged_into is not None:
            g = g.merged_into
        return g

    def add_stat(self, stat: Stat) -> None:
        """Register ``stat`` here (and make it an attribute when the name is free)."""
        owner = self._owner()
        if any(s.name == stat.name for s in owner.stat_list) or stat.name in owner.stat_groups:
            raise ValueError(f"duplicate stat name {stat.name!r}")
        owner.stat_list.append(stat)
        if not hasattr(self, stat.name):
            object.__setattr__(self, stat.name, stat)

    def add_group(self, name: str, group: Group) -> None:
        """Attach ``group`` as the subgroup ``name``."""
        owner = self._owner()
        if name in owner.stat_groups or any(s.name == name for s in owner.stat_list):
            raise ValueError(f"duplicate stats group name {name!r}")
        owner.stat_groups[name] = group

    def remove_group(self, name: str) -> None:
        """Detach the subgroup ``name``."""
        del self._owner().stat_groups[name]

    def walk(self, prefix: str = "") -> Iterator[Tuple[str, Stat]]:
        """``(full name, stat)`` in dump order: own stats, then subgroups by name (gem5)."""
        owner = self._owner()
        for stat in owner.stat_list:
            yield (f"{prefix}.{stat.name}" if prefix else stat.name), stat
        for name in sorted(owner.stat_groups):
            sub = f"{prefix}.{name}" if prefix else name
            yield from owner.stat_groups[name].walk(sub)

    def resolve(self, path: str) -> Stat:
        """The stat at the dotted ``path`` below this group (KeyError when absent)."""
        for full, stat in self.walk():
            if full == path:
                return stat
        raise KeyError(path)

    def reset(self) -> None:
        """Reset every stat in this subtree."""
        for _, stat in self.walk():
            stat.reset()


def value_to_string(value: Number, precision: int = -1) -> str:
    """gem5 ``ValueToString``: integers without decimals, others with six, nan as ``nan``."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value) if precision <= 0 else f"{value:.{precision}f}"
    if math.isnan(value):
        return "nan"
    if precision != -1:
        return f"{value:.{precision}f}"
    if math.isinf(value) or value == math.floor(value):
        return f"{value:.0f}"
    return f"{value:.6f}"


def _format_row(row: _Row) -> str:
    line = f"{row.name:<40} {value_to_string(row.value, row.precision):>12} {'':>10} {'':>10}"
    if row.desc:
        line += f" # {row.desc}"
    if row.unit:
        line += f" ({row.unit})"
    return line + "\n"


def _json_value(value: Number) -> Union[Number, str, None]:
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def _host_memory() -> int:
    # Peak resident set size; ru_maxrss is in KiB on Linux.
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class Statistics:
    """The stats of one simulation: the global stats, the roots, dump and reset.

    Args:
        queue: whose current tick the global stats read.
        host_clock: seconds on the host (for ``hostSeconds``; tests inject a fake).
        host_memory: bytes of host memory in use (for ``hostMemory``).
    """

    def __init__(self, queue: EventQueue | None = None, *,
                 host_clock: Callable[[], float] = time.monotonic,
                 host_memory: Callable[[], int] = _host_memory) -> None:
        self.queue = queue if queue is not None else main_queue
        self._host_clock = host_clock
        self._start_tick = self.queue.cur_tick
        self._start_host = host_clock()
        self.roots: List[Group] = []
        self._replace_next: set[str] = set()
        g = self.global_group = Group(queue=self.queue)
        self.simTicks = Value(None, "simTicks", "Number of ticks simulated", Tick,
                              functor=lambda: self.queue.cur_tick - self._start_tick)
        self.simFreq = Value(None, "simFreq", "The number of ticks per simulated second",
                             Tick / Second, functor=TICKS_PER_SECOND)
        self.hostSeconds = Value(None, "hostSeconds", "Real time elapsed on the host", Second,
                                 functor=lambda: self._host_clock() - self._start_host,
                                 precision=2)
        self.simSeconds = Formula(None, "simSeconds", "Number of seconds simulated", Second,
                                  formula=self.simTicks / self.simFreq)
        self.finalTick = Value(
            None, "finalTick",
            "Number of ticks from beginning of simulation "
            "(restored from checkpoints and never reset)",
            Tick, functor=lambda: self.queue.cur_tick)
        self.hostTickRate = Formula(
            None, "hostTickRate", "The number of ticks simulated per host second",
            Tick / Second, formula=self.simTicks / self.hostSeconds, precision=0)
        self.hostMemory = Value(None, "hostMemory", "Number of bytes of host memory used", Byte,
                                functor=host_memory, flags=Flags.nozero)
        for stat in (self.simSeconds, self.simTicks, self.finalTick, self.simFreq,
                     self.hostSeconds, self.hostTickRate, self.hostMemory):
            g.add_stat(stat)

    def add_root(self, group: Group) -> None:
        """Dump ``group`` (named: prefixed with its name) after the global stats."""
        if group not in self.roots:
            self.roots.append(group)

    def walk(self) -> Iterator[Tuple[str, Stat]]:
        """Every ``(full name, stat)`` in dump order."""
        yield from self.global_group.walk()
        for root in self.roots:
            yield from root.walk(root.stat_group_name or "")

    def _rows(self) -> List[_Row]:
        return [row for full, stat in self.walk() for row in stat._rows(full)]

    def format_text(self) -> str:
        """One gem5 ``stats.txt`` block (begin banner to end banner) for now."""
        body = "".join(_format_row(row) for row in self._rows())
        return f"\n{BEGIN_BANNER}\n{body}\n{END_BANNER}\n"

    def start_file(self, path: str) -> None:
        """Make the next dump (text or JSON) to ``path`` replace the file instead of
        appending to it; until then a file an earlier run left stays as it is."""
        self._replace_next.add(os.path.abspath(path))

    def _write(self, path: str, text: str) -> None:
        key = os.path.abspath(path)
        write_atomically(path, text, append=key not in self._replace_next)
        self._replace_next.discard(key)

    def dump(self, path: Union[str, IO[str], None] = None) -> str:
        """Append one gem5-format block to ``path`` (a file name or stream); returns it.

        A file name is written with :func:`write_atomically`.
        """
        text = self.format_text()
        if path is not None:
            if isinstance(path, str):
                self._write(path, text)
            else:
                path.write(text)
                path.flush()
        return text

    def as_json(self) -> Dict[str, Any]:
        """The lines of a dump as a JSON-ready dict (nan as null)."""
        stats: Dict[str, Any] = {}
        for row in self._rows():
            stats[row.name] = {
                "value": _json_value(row.value),
                "unit": row.unit,
                "description": row.desc,
            }
        return {"tick": self.queue.cur_tick, "stats": stats}

    def dump_json(self, path: Union[str, IO[str], None] = None) -> Dict[str, Any]:
        """Append the dump as one JSON line to ``path``; returns the dict."""
        doc = self.as_json()
        if path is not None:
            line = json.dumps(doc, sort_keys=False) + "\n"
            if isinstance(path, str):
                self._write(path, line)
            else:
                path.write(line)
                path.flush()
        return doc

    def reset(self) -> None:
        """Reset every stat and restart ``simTicks``/``hostSeconds`` from now."""
        self._start_tick = self.queue.cur_tick
        self._start_host = self._host_clock()
        for root in self.roots:
            root.reset()

    def schedule_stat_dump(self, period: int, path: str | None = None, *,
                           json_path: str | None = None, reset: bool = True) -> StatDumpEvent:
        """Dump (and, as gem5's periodicStatDump, reset) every ``period`` ticks.

        The first dump is at tick ``period`` (or ``cur_tick + period`` when that
        is already past). Deschedule the returned event to stop.
        """
        if period <= 0:
            raise ValueError(f"stat dump period must be positive, got {period}")
        event = StatDumpEvent(self, period, path, json_path, reset)
        now = self.queue.cur_tick
        self.queue.schedule(event, period if period >= now else now + period)
        return event


class StatDumpEvent(Event):
    """Dumps (and resets) the stats, then reschedules itself (Stat_Event priority)."""

    __slots__ = ("statistics", "period", "path", "json_path", "do_reset")

    def __init__(self, statistics: Statistics, period: int, path: str | None,
                 json_path: str | None, reset: bool) -> None:
        super().__init__(Priority.Stat_Event, "StatDumpEvent")
        self.statistics = statistics
        self.period = period
        self.path = path
        self.json_path = json_path
        self.do_reset = reset

    def process(self) -> None:
        if self.path is not None:
            self.statistics.dump(self.path)
        if self.json_path is not None:
            self.statistics.dump_json(self.json_path)
        if self.do_reset:
            self.statistics.reset()
        queue = self.statistics.queue
        queue.schedule(self, queue.cur_tick + self.period)
