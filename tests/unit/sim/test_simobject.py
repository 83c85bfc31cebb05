"""Params, the SimObject tree, lifecycle phases, drain and checkpoint restore."""

from __future__ import annotations

import enum
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from kvmcpu.errors import CheckpointError, ConfigError, SimulationError
from kvmcpu.sim.checkpoint import (
    CPT_FILE,
    CheckpointIn,
    CheckpointOut,
    UnknownCheckpointKeyWarning,
    reseal,
)
from kvmcpu.sim.eventq import EventFunctionWrapper, EventQueue
from kvmcpu.sim.params import Params, param
from kvmcpu.sim.simobject import (
    DRAIN_DONE_CAUSE,
    ClockedObject,
    DrainState,
    Root,
    SimObject,
    SimObjectParams,
    instantiate,
)
from kvmcpu.sim.stats import Count, Group, Scalar


class Mode(enum.Enum):
    atomic = "atomic"
    timing = "timing"


@dataclass
class DevParams(SimObjectParams):
    size: int = param(4096, "size in bytes", check=lambda v: v > 0 and v % 4096 == 0)
    scale: float = param(1.0, "a factor")
    verbose: bool = param(False, "log more")
    label: Optional[str] = param(None, "an optional label")  # noqa: UP045 - typing spelling
    note: str | None = param(None, "PEP 604 spelling")
    mode: Mode = param(Mode.atomic, "access mode")
    ports: List[int] = param(desc="IO ports", default_factory=lambda: [0x3F8])


Log = List[Tuple[str, str]]


class Dev(SimObject):
    params_class = DevParams

    def __init__(self, name: str, parent: SimObject | None = None, log: Log | None = None,
                 **kw: object) -> None:
        super().__init__(name, parent, **kw)  # type: ignore[arg-type]
        self.log = log if log is not None else []
        self.value = 0
        self.stats = DevStats(self.stats_group)

    def init(self) -> None:
        self.log.append(("init", self.path()))

    def initState(self) -> None:  # gem5 spelling overrides work too
        self.log.append(("initState", self.path()))

    def startup(self) -> None:
        self.log.append(("startup", self.path()))

    def serialize(self, cp: CheckpointOut) -> None:
        cp.param_out("value", self.value)

    def unserialize(self, cp: CheckpointIn) -> None:
        self.log.append(("unserialize", self.path()))
        self.value = cp.current.get_int("value")


class DevStats(Group):
    def __init__(self, owner: Group) -> None:
        super().__init__(owner)
        self.numAccesses = Scalar(self, "numAccesses", "accesses", Count)


# -- params ---------------------------------------------------------------------------
def test_params_defaults_and_conversion() -> None:
    p = DevParams(scale=2)
    assert p.scale == 2.0 and isinstance(p.scale, float)
    assert p.ports == [0x3F8] and p.mode is Mode.atomic and p.label is None
    assert DevParams(mode="timing").mode is Mode.timing  # type: ignore[arg-type]
    assert DevParams(label="x").label == "x"
    rows = {r[0]: r for r in DevParams.describe()}
    assert rows["size"] == ("size", "int", 4096, "size in bytes")
    assert rows["ports"][2] == [0x3F8]
    assert p.as_dict()["verbose"] is False


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"size": "big"}, r"DevParams.size: expected int, got 'big'"),
        ({"size": True}, r"DevParams.size: expected int"),
        ({"size": 100}, r"DevParams.size: invalid value 100"),
        ({"scale": "1"}, r"DevParams.scale: expected float"),
        ({"verbose": 1}, r"DevParams.verbose: expected bool"),
        ({"label": 3}, r"DevParams.label: expected"),
        ({"note": 3}, r"DevParams.note: expected"),
        ({"mode": "fast"}, r"DevParams.mode"),
        ({"ports": [1, "x"]}, r"DevParams.ports"),
    ],
)
def test_params_validation_names_the_parameter(kwargs: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DevParams(**kwargs)


def test_check_raising_valueerror_becomes_configerror() -> None:
    def positive(v: int) -> bool:
        if v < 0:
            raise ValueError("must be >= 0")
        return True

    @dataclass
    class P(Params):
        n: int = param(0, "n", check=positive)

    with pytest.raises(ConfigError, match=r"P.n: invalid value -1: must be >= 0"):
        P(n=-1)


def test_simobject_params_from_overrides_and_errors() -> None:
    q = EventQueue()
    d = Dev("d", eventq=q, size=8192)
    assert d.params.size == 8192
    d2 = Dev("d2", eventq=q, params=DevParams(size=4096), scale=3)  # type: ignore[arg-type]
    assert d2.params.scale == 3.0
    with pytest.raises(ConfigError, match="unexpected keyword"):
        Dev("d3", eventq=q, colour="red")
    with pytest.raises(ConfigError, match="params must be DevParams"):
        Dev("d4", eventq=q, params=SimObjectParams())  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="invalid SimObject name"):
        SimObject("bad.name", eventq=q)


# -- tree -----------------------------------------------------------------------------
def test_tree_paths_and_order() -> None:
    q = EventQueue()
    root = Root(eventq=q)
    system = SimObject("system", root)
    cpu1 = SimObject("cpu1", system)
    cpu0 = SimObject("cpu0", system)
    SimObject("mem", system)
    assert system.path() == "system" and cpu0.path() == "system.cpu0"
    assert root.path() == "root"
    assert [o.path() for o in root.descendants()] == [
        "root", "system", "system.cpu0", "system.cpu1", "system.mem"]
    assert root.find("system.cpu1") is cpu1
    assert cpu0.eventq is q and cpu0.cur_tick() == 0
    with pytest.raises(ConfigError, match="already has a child named 'cpu0'"):
        SimObject("cpu0", system)
    standalone = SimObject("board", eventq=q)
    assert SimObject("cpu", standalone).path() == "board.cpu"


def test_stats_follow_tree() -> None:
    q = EventQueue()
    root = Root(eventq=q)
    system = SimObject("system", root)
    dev = Dev("uart", system)
    dev.stats.numAccesses += 3
    text = root.statistics.format_text()
    assert "system.uart.numAccesses                             3 " in text
    assert root.statistics.walk().__next__()[0] == "simSeconds"


# -- lifecycle ------------------------------------------------------------------------
def build(q: EventQueue, log: Log) -> Tuple[Root, Dev, Dev]:
    root = Root(eventq=q)
    system = SimObject("system", root)
    a = Dev("a", system, log)
    b = Dev("b", system, log)
    return root, a, b


def test_instantiate_fresh_phase_order() -> None:
    q = EventQueue()
    log: Log = []
    root, a, b = build(q, log)
    instantiate(root)
    assert log == [
        ("init", "system.a"), ("init", "system.b"),
        ("initState", "system.a"), ("initState", "system.b"),
        ("startup", "system.a"), ("startup", "system.b"),
    ]
    with pytest.raises(SimulationError, match="twice"):
        root.instantiate()


def test_checkpoint_and_restore(tmp_path: Path) -> None:
    q = EventQueue()
    log: Log = []
    root, a, b = build(q, log)
    root.instantiate()
    a.value, b.value = 11, 22
    q.schedule(EventFunctionWrapper(lambda: None, "tick"), 5000)
    assert root.simulate(max_ticks=1234).tick == 1234
    root.checkpoint(tmp_path / "cpt")
    assert root.drain_manager.is_drained()
    text = (tmp_path / "cpt" / CPT_FILE).read_text()
    assert "[Globals]\ncurTick=1234\n" in text and "[system.a]\nvalue=11\n" in text

    q2 = EventQueue()
    log2: Log = []
    root2, a2, b2 = build(q2, log2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean restore warns about nothing
        root2.instantiate(tmp_path / "cpt")
    assert (a2.value, b2.value) == (11, 22)
    assert q2.cur_tick == 1234
    assert log2 == [
        ("init", "system.a"), ("init", "system.b"),
        ("unserialize", "system.a"), ("unserialize", "system.b"),
        ("startup", "system.a"), ("startup", "system.b"),
    ]
    # simulate() resumes the drained original (gem5's behaviour)
    assert root.simulate(max_ticks=10).tick == 1244
    assert not root.drain_manager.is_drained()


def test_restore_missing_object_section_touches_nothing(tmp_path: Path) -> None:
    q = EventQueue()
    root, a, b = build(q, [])
    root.instantiate()
    root.checkpoint(tmp_path / "cpt")
    q2 = EventQueue()
    log2: Log = []
    root2, a2, b2 = build(q2, log2)
    Dev("c", root2.find("system"), log2)
    with pytest.raises(CheckpointError, match=r"no section for \[system.c\]"):
        root2.instantiate(tmp_path / "cpt")
    assert ("unserialize", "system.a") not in log2 and q2.cur_tick == 0


def test_restore_unknown_section_and_key_warn(tmp_path: Path) -> None:
    q = EventQueue()
    root, a, b = build(q, [])
    SimObject("gone", root.find("system"))
    root.instantiate()
    root.checkpoint(tmp_path / "cpt")
    f = tmp_path / "cpt" / CPT_FILE
    f.write_text(f.read_text().replace("[system.a]\n", "[system.a]\nextra=1\n"))
    reseal(tmp_path / "cpt")  # a deliberate edit
    q2 = EventQueue()
    root2, a2, b2 = build(q2, [])
    with pytest.warns(UnknownCheckpointKeyWarning) as record:
        root2.instantiate(tmp_path / "cpt")
    messages = " ".join(str(w.message) for w in record)
    assert "[system.gone] matches no object" in messages
    assert "[system.a] extra" in messages


def test_restore_bad_value_raises_checkpointerror(tmp_path: Path) -> None:
    q = EventQueue()
    root, a, b = build(q, [])
    root.instantiate()
    root.checkpoint(tmp_path / "cpt")
    f = tmp_path / "cpt" / CPT_FILE
    f.write_text(f.read_text().replace("[system.b]\nvalue=0", "[system.b]\nvalue=zero"))
    reseal(tmp_path / "cpt")  # a deliberate edit
    root2, _, _ = build(EventQueue(), [])
    with pytest.raises(CheckpointError, match=r"\[system.b\] value: cannot parse 'zero'"):
        root2.instantiate(tmp_path / "cpt")


# -- drain ----------------------------------------------------------------------------
class SlowDrainer(SimObject):
    """Needs `delay` ticks to drain; drains in `passes` passes (re-dirties once)."""

    def __init__(self, name: str, parent: SimObject, delay: int, redirty: bool = False) -> None:
        super().__init__(name, parent)
        self.delay = delay
        self.redirty = redirty
        self.drain_calls = 0
        self.resumed = 0
        self.busy = True
        self.event = EventFunctionWrapper(self._done, f"{name}.drain")

    def _done(self) -> None:
        self.busy = False
        self.signal_drain_done()

    def drain(self) -> DrainState:
        self.drain_calls += 1
        if self.redirty and self.drain_calls == 2:
            self.busy = True  # something else woke us: needs another pass
        if not self.busy:
            return DrainState.Drained
        self.schedule(self.event, self.cur_tick() + self.delay)
        return DrainState.Draining

    def drain_resume(self) -> None:
        self.resumed += 1
        self.busy = True


def test_drain_repeats_until_all_drained() -> None:
    q = EventQueue()
    root = Root(eventq=q)
    system = SimObject("system", root)
    fast = SlowDrainer("fast", system, 10)
    slow = SlowDrainer("slow", system, 100, redirty=True)
    root.instantiate()
    root.drain_all()
    assert root.drain_manager.is_drained()
    assert fast.drain_state is DrainState.Drained and slow.drainState() is DrainState.Drained
    assert slow.drain_calls == 3 and fast.drain_calls == 3
    assert q.cur_tick == 200  # two rounds of the slow object's 100-tick drain
    root.resume()
    assert (fast.resumed, slow.resumed) == (1, 1)
    assert fast.drain_state is DrainState.Running
    with pytest.raises(SimulationError, match="resume"):
        root.resume()


def test_drain_gives_up_when_queue_runs_dry() -> None:
    class Stuck(SimObject):
        def drain(self) -> DrainState:
            return DrainState.Draining

    root = Root(eventq=EventQueue())
    Stuck("stuck", root)
    root.instantiate()
    with pytest.raises(SimulationError, match="still draining: stuck"):
        root.drain_all()


def test_signal_drain_done_outside_drain() -> None:
    obj = SimObject("x", eventq=EventQueue())
    with pytest.raises(SimulationError):
        obj.signal_drain_done()


def test_try_drain_single_pass_and_exit_cause() -> None:
    q = EventQueue()
    root = Root(eventq=q)
    s = SlowDrainer("s", root, 7)
    assert root.drain_manager.try_drain() is False
    assert root.drain_manager.pending() == [s]
    ex = q.simulate()
    assert ex.cause == DRAIN_DONE_CAUSE and ex.tick == 7
    assert root.drain_manager.try_drain() is True


def test_camelcase_and_snakecase_hooks_both_work() -> None:
    calls: List[str] = []

    class Camel(SimObject):
        def drainResume(self) -> None:
            calls.append("camel")

    class Snake(SimObject):
        def init_state(self) -> None:
            calls.append("snake")

    q = EventQueue()
    Camel("c", eventq=q).drain_resume()
    Snake("s", eventq=q).initState()
    assert calls == ["camel", "snake"]


def test_clocked_object() -> None:
    q = EventQueue()
    cpu = ClockedObject("cpu", eventq=q, clock_period=500)
    assert cpu.clockEdge(2) == 1000 and cpu.frequency() == 2e9
    q.cur_tick = 501
    assert cpu.nextCycle() == 1500 and cpu.curTick() == 501
    with pytest.raises(ConfigError, match="clock_period"):
        ClockedObject("bad", eventq=q, clock_period=0)


def test_simulate_before_instantiate() -> None:
    with pytest.raises(SimulationError):
        Root(eventq=EventQueue()).simulate()
