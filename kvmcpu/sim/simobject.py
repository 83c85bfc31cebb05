"""SimObjects: the object tree, the lifecycle phases, drain, and checkpoints (gem5 ``sim/``).

Objects form a tree with dotted names (``system.cpu0``); each has typed
:class:`~kvmcpu.sim.params.Params`, a stats :class:`~kvmcpu.sim.stats.Group`
and an event queue. :func:`instantiate` runs gem5's phases over the tree in
``descendants()`` order (pre-order, children sorted by name, as gem5)::

    init()  ->  initState()  or  loadState(cp) -> unserialize(cp)  ->  startup()

then :meth:`Root.simulate` runs. Draining follows gem5's DrainManager: every
object's ``drain()`` returns a :class:`DrainState`; objects still Draining call
:meth:`SimObject.signal_drain_done` later; the manager repeats whole passes
until one pass finds every object Drained.

Hooks may be overridden under either spelling (``drain_resume`` or gem5's
``drainResume``, ``init_state`` or ``initState``, ``load_state`` or
``loadState``); both names call the override.
"""

from __future__ import annotations

import dataclasses
import os
import re
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar, Dict, Iterator, List, Union

from kvmcpu.errors import CheckpointError, ConfigError, SimulationError
from kvmcpu.sim.checkpoint import (
    DEFAULT_COMPRESSION,
    GLOBALS_SECTION,
    CheckpointIn,
    CheckpointOut,
    UnknownCheckpointKeyWarning,
    write_checkpoint,
)
from kvmcpu.sim.eventq import (
    Clocked,
    Event,
    EventQueue,
    SimLoopExitEvent,
    exit_sim_loop,
    main_queue,
)
from kvmcpu.sim.params import Params, param
from kvmcpu.sim.stats import Group, Statistics

__all__ = [
    "DrainState",
    "DrainManager",
    "SimObject",
    "SimObjectParams",
    "ClockedObject",
    "ClockedObjectParams",
    "Root",
    "instantiate",
    "DRAIN_DONE_CAUSE",
]

#: The exit cause the drain manager uses when the last object finishes draining (gem5's).
DRAIN_DONE_CAUSE = "Finished drain"

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")

# (snake_case, camelCase) pairs of overridable hooks; see SimObject.__init_subclass__.
_HOOK_ALIASES = (
    ("init_state", "initState"),
    ("load_state", "loadState"),
    ("drain_resume", "drainResume"),
)


class DrainState(Enum):
    """gem5 ``DrainState``."""

    Running = "Running"
    Draining = "Draining"
    Drained = "Drained"


@dataclasses.dataclass
class SimObjectParams(Params):
    """Parameters every SimObject has (none yet; subclasses add theirs)."""


class SimObject:
    """A named node of the simulated system with params, stats and lifecycle hooks.

    Args:
        name: this object's name under its parent (``cpu0``).
        parent: the enclosing object (None for a tree root).
        params: a ``params_class`` instance; when omitted it is built from ``overrides``.
        eventq: the event queue (default: the parent's, else :data:`main_queue`).
        **overrides: parameter values (``clock_period=500``).

    Raises:
        ConfigError: a bad name, a duplicate sibling, or an invalid parameter.
    """

    params_class: ClassVar[type[Params]] = SimObjectParams
    eventq: EventQueue
    stats_group: Group

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for snake, camel in _HOOK_ALIASES:
            own = cls.__dict__
            if camel in own and snake not in own:
                setattr(cls, snake, own[camel])
            elif snake in own and camel not in own:
                setattr(cls, camel, own[snake])

    def __init__(
        self,
        name: str,
        parent: SimObject | None = None,
        params: Params | None = None,
        *,
        eventq: EventQueue | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(f"invalid SimObject name {name!r}")
        cls = type(self)
        if params is None:
            try:
                params = cls.params_class(**overrides)
            except TypeError as err:
                raise ConfigError(f"{cls.__name__}({name}): {err}") from err
        else:
            if not isinstance(params, cls.params_class):
                raise ConfigError(
                    f"{cls.__name__}({name}): params must be {cls.params_class.__name__}, "
                    f"got {type(params).__name__}"
                )
            if overrides:
                try:
                    params = dataclasses.replace(params, **overrides)  # type: ignore[type-var]
                except TypeError as err:
                    raise ConfigError(f"{cls.__name__}({name}): {err}") from err
        self.name = name
        self.parent = parent
        self.params = params
        self.children: Dict[str, SimObject] = {}
        if eventq is None:
            eventq = parent.eventq if parent is not None else main_queue
        self.eventq = eventq
        self.drain_state = DrainState.Running
        self._drain_manager: DrainManager | None = None
        parent_group = parent.stats_group if parent is not None else None
        if parent is not None:
            parent._add_child(self)
        #: This object's node in the stats tree; subclass stats groups merge into it.
        self.stats_group = Group(parent_group, name, queue=eventq)
        #: The object's stats (replace with a Group subclass merged into stats_group).
        self.stats: Any = self.stats_group

    # -- the tree ------------------------------------------------------------------
    def _add_child(self, child: SimObject) -> None:
        if child.name in self.children:
            raise ConfigError(f"{self.path()} already has a child named {child.name!r}")
        self.children[child.name] = child

    def path(self) -> str:
        """The dotted name (``system.cpu0``); the Root's children start the path."""
        parent = self.parent
        if parent is None or isinstance(parent, Root):
            return self.name
        return f"{parent.path()}.{self.name}"

    def descendants(self) -> Iterator[SimObject]:
        """This object and everything below it, pre-order, children sorted by name (gem5)."""
        yield self
        for name in sorted(self.children):
            yield from self.children[name].descendants()

    def find(self, path: str) -> SimObject:
        """The descendant at the dotted ``path`` relative to this object.

        Raises:
            KeyError: no such object.
        """
        obj: SimObject = self
        for part in path.split("."):
            obj = obj.children[part]
        return obj

    # -- time ----------------------------------------------------------------------
    def cur_tick(self) -> int:
        """The current tick of this object's event queue."""
        return self.eventq.cur_tick

    curTick = cur_tick

    def schedule(self, event: Event, when: int) -> None:
        """Schedule ``event`` on this object's queue."""
        self.eventq.schedule(event, when)

    def deschedule(self, event: Event) -> None:
        """Deschedule ``event`` from this object's queue."""
        self.eventq.deschedule(event)

    def reschedule(self, event: Event, when: int, always: bool = False) -> None:
        """Reschedule ``event`` on this object's queue."""
        self.eventq.reschedule(event, when, always)

    # -- lifecycle hooks (override) ------------------------------------------------
    def init(self) -> None:
        """Phase 1: every object exists; connect to the others."""

    def init_state(self) -> None:
        """Phase 2 of a fresh start (not called when restoring a checkpoint)."""

    def initState(self) -> None:  # noqa: D401 - gem5 spelling
        """gem5 spelling of :meth:`init_state`."""
        self.init_state()

    def load_state(self, cp: CheckpointIn) -> None:
        """Phase 2 when restoring: by default :meth:`unserialize` from this object's section."""
        self.unserialize(cp)

    def loadState(self, cp: CheckpointIn) -> None:
        """gem5 spelling of :meth:`load_state`."""
        self.load_state(cp)

    def startup(self) -> None:
        """Phase 3: schedule the first events."""

    def serialize(self, cp: CheckpointOut) -> None:
        """Write this object's state into the current section (``cp.param_out``)."""

    def unserialize(self, cp: CheckpointIn) -> None:
        """Read this object's state from the current section (``cp.current``)."""

    def drain(self) -> DrainState:
        """Stop producing state changes; return Drained, or Draining and signal later."""
        return DrainState.Drained

    def drain_resume(self) -> None:
        """Start again after a drain."""

    def drainResume(self) -> None:
        """gem5 spelling of :meth:`drain_resume`."""
        self.drain_resume()

    def signal_drain_done(self) -> None:
        """Tell the drain manager that this object, which returned Draining, is drained."""
        manager = self._drain_manager
        if manager is None:
            raise SimulationError(f"{self.path()}: signal_drain_done() outside a drain")
        manager.signal_drain_done(self)

    signalDrainDone = signal_drain_done

    def drainState(self) -> DrainState:
        """gem5 spelling of :attr:`drain_state`."""
        return self.drain_state

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.path()}>"


@dataclasses.dataclass
class ClockedObjectParams(SimObjectParams):
    """Parameters of a clocked object."""

    clock_period: int = param(1000, "clock period in ticks (1000 = 1 GHz)", check=lambda v: v > 0)


class ClockedObject(SimObject, Clocked):
    """A SimObject with a clock (gem5 ``ClockedObject``)."""

    params_class: ClassVar[type[Params]] = ClockedObjectParams

    def __init__(self, name: str, parent: SimObject | None = None,
                 params: Params | None = None, *, eventq: EventQueue | None = None,
                 **overrides: Any) -> None:
        SimObject.__init__(self, name, parent, params, eventq=eventq, **overrides)
        Clocked.__init__(self, getattr(self.params, "clock_period", 1000), self.eventq)


class DrainManager:
    """Drains a set of objects as gem5's DrainManager (instance-based, one per Root).

    Args:
        root: the tree to drain (every descendant).
        eventq: where the "Finished drain" exit event is scheduled.
    """

    def __init__(self, root: SimObject, eventq: EventQueue | None = None) -> None:
        self.root = root
        self.eventq = eventq if eventq is not None else root.eventq
        self.state = DrainState.Running
        self._pending: Dict[int, SimObject] = {}
        #: Exit events that fired while draining (gem5 drops them with a warning).
        self.swallowed_exits: List[SimLoopExitEvent] = []

    def try_drain(self) -> bool:
        """Ask every object to drain once; True when all of them answered Drained."""
        self.state = DrainState.Draining
        self._pending = {}
        for obj in self.root.descendants():
            obj._drain_manager = self
            obj.drain_state = DrainState.Draining
            state = obj.drain()
            if not isinstance(state, DrainState) or state is DrainState.Running:
                raise SimulationError(f"{obj.path()}.drain() returned {state!r}")
            obj.drain_state = state
            if state is DrainState.Draining:
                self._pending[id(obj)] = obj
        if not self._pending:
            self.state = DrainState.Drained
            return True
        return False

    tryDrain = try_drain

    def signal_drain_done(self, obj: SimObject) -> None:
        """``obj`` finished draining; the last one ends the simulation loop."""
        if self._pending.pop(id(obj), None) is None:
            raise SimulationError(f"{obj.path()} signalled drain done but was not draining")
        obj.drain_state = DrainState.Drained
        if not self._pending:
            exit_sim_loop(DRAIN_DONE_CAUSE, 0, queue=self.eventq)

    def pending(self) -> List[SimObject]:
        """Objects still Draining in the current pass."""
        return list(self._pending.values())

    def drain(self) -> None:
        """Drain completely (gem5 ``m5.drain()``): passes until one finds all Drained.

        Runs the event queue while objects are draining.

        Raises:
            SimulationError: the queue ran dry while objects were still draining.
        """
        while not self.try_drain():
            while True:
                ev = self.eventq.simulate(async_exits=False)  # an interrupt waits for the run
                if ev.cause == DRAIN_DONE_CAUSE:
                    break
                if not self._pending:
                    break
                if self.eventq.empty():
                    names = ", ".join(o.path() for o in self._pending.values())
                    raise SimulationError(f"drain cannot finish: still draining: {names}")
                self.swallowed_exits.append(ev)

    def is_drained(self) -> bool:
        """True after a drain completed and before :meth:`resume`."""
        return self.state is DrainState.Drained

    isDrained = is_drained

    def resume(self) -> None:
        """Resume every object after a drain (gem5 ``drainResume``)."""
        if self.state is not DrainState.Drained:
            raise SimulationError(f"resume() while the system is {self.state.value}")
        for obj in self.root.descendants():
            obj.drain_state = DrainState.Running
            obj._drain_manager = None
            obj.drain_resume()
        self.state = DrainState.Running


class Root(SimObject):
    """The top of the tree: owns the drain manager and the statistics.

    Its children's paths start at their own name (``system``), as in gem5.
    """

    def __init__(self, name: str = "root", *, eventq: EventQueue | None = None,
                 statistics: Statistics | None = None, **overrides: Any) -> None:
        super().__init__(name, None, eventq=eventq, **overrides)
        # The root's group is nameless so that stat names start at its children.
        self.stats_group.stat_group_name = None
        self.drain_manager = DrainManager(self)
        self.statistics = statistics if statistics is not None else Statistics(self.eventq)
        self.statistics.add_root(self.stats_group)
        self.instantiated = False

    def instantiate(self, ckpt_dir: Union[str, os.PathLike[str], CheckpointIn, None] = None
                    ) -> None:
        """Run init, then initState or (restoring ``ckpt_dir``) loadState, then startup.

        A checkpoint is loaded and fully validated, and every object's section is
        checked to exist, before any object's ``unserialize`` is called; an
        already loaded :class:`CheckpointIn` is used as it is (not validated
        again). Keys no object read produce an UnknownCheckpointKeyWarning
        (they are ignored, as gem5).

        Raises:
            CheckpointError: the checkpoint is invalid or does not match the tree.
            SimulationError: already instantiated.
        """
        if self.instantiated:
            raise SimulationError("instantiate() called twice")
        objs = list(self.descendants())
        for obj in objs:
            obj.init()
        if ckpt_dir is None:
            for obj in objs:
                obj.init_state()
        else:
            cp = ckpt_dir if isinstance(ckpt_dir, CheckpointIn) else CheckpointIn.load(ckpt_dir)
            missing = [o.path() for o in objs if not cp.has_section(o.path())]
            if missing:
                raise CheckpointError(
                    f"checkpoint {cp.directory}: no section for "
                    + ", ".join(f"[{p}]" for p in missing)
                )
            tick = cp.section(GLOBALS_SECTION).get_int("curTick")
            if tick < 0:
                raise CheckpointError(f"checkpoint {cp.directory}: [Globals] curTick < 0")
            self.eventq.set_cur_tick(tick)
            for obj in objs:
                cp.section(obj.path())  # opened: not reported as an unknown section
                with cp.scope(obj.path()):
                    obj.load_state(cp)
            for path in cp.unopened_sections():
                section = cp.section(path)
                for key in section.keys():
                    section.raw(key)  # reported here once, as a whole section
                warnings.warn(
                    f"checkpoint {cp.directory}: section [{path}] matches no object; ignored",
                    UnknownCheckpointKeyWarning,
                    stacklevel=2,
                )
            cp.warn_unused()
        self.statistics.reset()
        for obj in objs:
            obj.startup()
        self.instantiated = True

    def serialize_all(self, compression: str = DEFAULT_COMPRESSION) -> CheckpointOut:
        """Every object's state (and ``[Globals] curTick``) as a CheckpointOut whose
        memory images are compressed with ``compression``."""
        cp = CheckpointOut(compression)
        with cp.scope(GLOBALS_SECTION):
            cp.param_out("curTick", self.eventq.cur_tick)
        for obj in self.descendants():
            with cp.scope(obj.path()):
                obj.serialize(cp)
        return cp

    def checkpoint(self, directory: Union[str, os.PathLike[str]], *,
                   overwrite: bool = False, compression: str = DEFAULT_COMPRESSION) -> Path:
        """Drain (if needed) and write a checkpoint (gem5 ``m5.checkpoint``).

        The system stays drained; the next :meth:`simulate` resumes it.

        Raises:
            ValueError: an unknown ``compression`` (before anything is drained).
            CheckpointError: ``zstd`` without its package, or writing failed.
        """
        CheckpointOut(compression)  # refuses a bad compression up front
        if not self.drain_manager.is_drained():
            self.drain_manager.drain()
        return write_checkpoint(directory, self.serialize_all(compression), overwrite=overwrite)

    def drain(self) -> DrainState:
        """Root's own drain hook (it has no state); see :meth:`drain_all`."""
        return DrainState.Drained

    def drain_all(self) -> None:
        """Drain the whole tree (gem5 ``m5.drain()``)."""
        self.drain_manager.drain()

    def resume(self) -> None:
        """Resume the tree after a drain."""
        self.drain_manager.resume()

    def simulate(self, max_ticks: int | None = None) -> SimLoopExitEvent:
        """Run the event queue (resuming a drained tree first, as gem5's ``simulate``)."""
        if not self.instantiated:
            raise SimulationError("simulate() before instantiate()")
        if self.drain_manager.is_drained():
            self.drain_manager.resume()
        return self.eventq.simulate(max_ticks)


def instantiate(root: Root, ckpt_dir: Union[str, os.PathLike[str], None] = None) -> None:
    """Run the lifecycle phases over ``root``'s tree (see :meth:`Root.instantiate`)."""
    root.instantiate(ckpt_dir)
