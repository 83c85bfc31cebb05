"""Statistics: values, groups, gem5 text format (golden file), JSON, reset, periodic dumps."""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path
from typing import List

import pytest

from kvmcpu.sim.eventq import EventFunctionWrapper, EventQueue, Priority
from kvmcpu.sim.stats import (
    BEGIN_BANNER,
    END_BANNER,
    Average,
    Byte,
    Count,
    Cycle,
    Flags,
    Formula,
    Group,
    Ratio,
    Scalar,
    Second,
    Statistics,
    Tick,
    Unit,
    Value,
    Vector,
    value_to_string,
)

GOLDEN = Path(__file__).parent / "golden" / "stats.txt"


class FakeHost:
    def __init__(self) -> None:
        self.now = 100.0

    def clock(self) -> float:
        return self.now


class CpuStats(Group):
    """A gem5-style stats struct merged into its owner's group."""

    def __init__(self, owner: Group) -> None:
        super().__init__(owner)
        self.numVMExits = Scalar(self, "numVMExits", "total number of KVM exits", Count)
        self.numCycles = Scalar(self, "numCycles", "Number of cpu cycles simulated", Cycle)
        self.numInsts = Scalar(self, "numInsts", "Number of instructions committed", Count)
        self.exitsByReason = Vector(
            self, "exitsByReason", 3, "KVM exits by reason", Count,
            subnames=["io", "mmio", "hlt"],
        )
        self.ipc = Formula(self, "ipc", "IPC: instructions per cycle", Count / Cycle,
                           formula=self.numInsts / self.numCycles)


def build(queue: EventQueue, host: FakeHost) -> tuple[Statistics, CpuStats, Group]:
    statistics = Statistics(queue, host_clock=host.clock, host_memory=lambda: 3_145_728)
    system = Group(None, "system", queue=queue)
    cpu = Group(system, "cpu")
    cs = CpuStats(cpu)
    mem = Group(system, "mem_ctrl")
    mem.bytesRead = Vector(mem, "bytesRead", 2, "Bytes read per requestor", Byte)
    mem.single = Vector(mem, "single", 1, "A one-element vector prints bare", Count)
    mem.bw = Formula(mem, "avgRdBW", "Average read bandwidth", "Byte/Second",
                     formula=mem.bytesRead / statistics.simSeconds)
    mem.noValue = Formula(mem, "missRate", "Miss rate with no accesses", Ratio,
                          formula=lambda: math.nan)
    mem.skipped = Scalar(mem, "zeroAndHidden", "nozero stats print nothing at zero", Count,
                         flags=Flags.nozero)
    mem.precise = Value(mem, "clockPeriodSeconds", "a value with precision 3", Second,
                        functor=lambda: 0.0012345, precision=3)
    mem.occupancy = Average(mem, "avgQueueLen", "Average queue length per tick", Count)
    mem.a_rather_long_statistic_name_that_overflows = Scalar(
        mem, "a_rather_long_statistic_name_that_overflows", "", Count)
    statistics.add_root(system)
    return statistics, cs, mem


def run_golden_scenario() -> str:
    queue = EventQueue()
    host = FakeHost()
    statistics, cs, mem = build(queue, host)
    out = io.StringIO()
    queue.cur_tick = 1_000_000
    cs.numVMExits += 1234
    cs.numCycles += 4000
    cs.numInsts.inc(1000)
    cs.exitsByReason[0] += 1200
    cs.exitsByReason.inc(2, 34)
    mem.bytesRead[1] += 4096
    mem.single[0] = 5
    mem.occupancy.set(4)
    queue.cur_tick = 3_000_000
    mem.occupancy.set(1)
    queue.cur_tick = 5_000_000  # average: (4 * 2M + 1 * 2M) / 5M = 2
    mem.a_rather_long_statistic_name_that_overflows += 7
    host.now = 100.25
    statistics.dump(out)
    statistics.reset()
    queue.cur_tick = 7_500_000
    host.now = 101.0
    cs.numVMExits += 1
    statistics.dump(out)
    return out.getvalue()


def test_golden_stats_txt() -> None:
    text = run_golden_scenario()
    if os.environ.get("KVMCPU_REGEN_GOLDEN") == "1":  # pragma: no cover - maintainer tool
        GOLDEN.write_text(text, encoding="utf-8")
    assert text == GOLDEN.read_text(encoding="utf-8")


def test_golden_is_gem5_layout() -> None:
    # Independent of the golden file: the format rules of gem5's text.cc.
    text = run_golden_scenario()
    blocks = text.split(f"\n{BEGIN_BANNER}\n")
    assert blocks[0] == "" and len(blocks) == 3
    for block in blocks[1:]:
        assert block.endswith(f"\n\n{END_BANNER}\n")
    line = next(ln for ln in text.splitlines() if ln.startswith("system.cpu.numVMExits"))
    expected = "%-40s %12s %10s %10s # %s (%s)" % (  # noqa: UP031 - gem5 format string
        "system.cpu.numVMExits", "1234", "", "", "total number of KVM exits", "Count")
    assert line == expected
    assert "simFreq                                  1000000000000" in text
    assert "system.mem_ctrl.zeroAndHidden" not in text


def test_value_to_string_rules() -> None:
    assert value_to_string(5) == "5"
    assert value_to_string(5.0) == "5"
    assert value_to_string(0.5) == "0.500000"
    assert value_to_string(math.nan) == "nan"
    assert value_to_string(math.inf) == "inf"
    assert value_to_string(1.23456, 2) == "1.23"
    assert value_to_string(7, 2) == "7.00"
    assert value_to_string(2.5, 0) == "2"  # printf rounding (half to even), as iostream
    assert value_to_string(10**20) == "100000000000000000000"


def test_units() -> None:
    assert str(Count / Second) == "(Count/Second)"
    assert Unit.of("Count/Second") == Count / Second
    assert Unit.of("Byte").name == "Byte"
    assert Tick / Second == Unit("(Tick/Second)")
    assert len({Count, Unit("Count")}) == 1


def test_scalar_increment_is_in_place() -> None:
    g = Group(None, "g")
    s = Scalar(g, "n", "n", Count)
    g.n += 2
    g.n += 3
    g.n -= 1
    assert g.n is s and s.value == 4 and int(s) == 4 and float(s) == 4.0
    s.set(10)
    assert s.result() == 10
    with pytest.raises(TypeError):
        g.f = Formula(g, "f", formula=s * 2)
        g.f += 1
    assert g.resolve("n") is s


def test_group_names_and_duplicates() -> None:
    root = Group(None, "system")
    cpu = Group(root, "cpu")
    Scalar(cpu, "a")
    with pytest.raises(ValueError):
        Scalar(cpu, "a")
    with pytest.raises(ValueError):
        Group(root, "cpu")
    with pytest.raises(ValueError):
        Scalar(cpu, "bad.name")
    merged = Group(cpu)
    Scalar(merged, "b")
    assert [n for n, _ in root.walk("system")] == ["system.cpu.a", "system.cpu.b"]
    Group(root, "aaa")
    Scalar(root.stat_groups["aaa"], "z")
    # subgroups are dumped in name order, as gem5's std::map
    assert [n for n, _ in root.walk("system")][0] == "system.aaa.z"


def test_formula_arithmetic_and_total() -> None:
    g = Group(None, "g")
    a = Vector(g, "a", 2)
    b = Vector(g, "b", 2)
    a[0], a[1], b[0], b[1] = 1, 3, 2, 0
    ratio = Formula(g, "ratio", formula=a / b, flags=Flags.total)
    assert ratio.values()[0] == 0.5 and math.isinf(ratio.values()[1])
    assert ratio.total() == 2  # sum(a) / sum(b), as gem5's formula total
    c = Formula(g, "c", formula=10 - a * 2 + 1)
    assert c.values() == [9, 5]
    d = Formula(g, "d", formula=lambda: [1, 2, 3])
    assert d.values() == [1, 2, 3] and d.total() == 6
    assert math.isnan(Formula(g, "e").values()[0])
    z = Scalar(g, "z")
    assert math.isnan(Formula(g, "zz", formula=z / z).values()[0])


def test_average_is_time_weighted() -> None:
    q = EventQueue()
    g = Group(None, "g", queue=q)
    avg = Average(g, "avg")
    avg.set(10)
    q.cur_tick = 100
    avg += 10  # 20 from tick 100
    q.cur_tick = 300
    assert avg.result() == pytest.approx((10 * 100 + 20 * 200) / 300)
    avg.reset()
    q.cur_tick = 400
    assert avg.result() == 20


def test_reset_and_sim_ticks() -> None:
    q = EventQueue()
    host = FakeHost()
    statistics, cs, _ = build(q, host)
    cs.numVMExits += 5
    q.cur_tick = 2 * 10**12
    assert statistics.simTicks.result() == 2 * 10**12
    assert statistics.simSeconds.values() == [2]
    statistics.reset()
    q.cur_tick = 3 * 10**12
    assert cs.numVMExits.value == 0
    assert statistics.simTicks.result() == 10**12
    assert statistics.finalTick.result() == 3 * 10**12


def test_dump_json_same_lines(tmp_path: Path) -> None:
    q = EventQueue()
    host = FakeHost()
    statistics, cs, _ = build(q, host)
    cs.numVMExits += 3
    q.cur_tick = 1000
    path = tmp_path / "stats.json"
    doc = statistics.dump_json(str(path))
    statistics.dump_json(str(path))
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[0]) == doc
    text_names = [ln.split()[0] for ln in statistics.format_text().splitlines()
                  if ln and not ln.startswith("-")]
    assert list(doc["stats"]) == text_names
    assert doc["stats"]["system.cpu.numVMExits"] == {
        "value": 3, "unit": "Count", "description": "total number of KVM exits"}
    assert doc["stats"]["system.mem_ctrl.missRate"]["value"] is None


def test_periodic_dump_appends_blocks(tmp_path: Path) -> None:
    q = EventQueue()
    host = FakeHost()
    statistics, cs, _ = build(q, host)
    path = tmp_path / "stats.txt"
    event = statistics.schedule_stat_dump(1000, str(path))
    values: List[float] = []

    def bump() -> None:
        cs.numVMExits += 1
        values.append(q.cur_tick)
        q.schedule(tick, q.cur_tick + 250)

    tick = EventFunctionWrapper(bump, "bump", Priority.CPU_Tick)
    q.schedule(tick, 0)
    q.simulate(max_ticks=3500)
    text = path.read_text()
    assert text.count(BEGIN_BANNER) == 3 and text.count(END_BANNER) == 3
    # each period counts its own exits (dump then reset, as gem5's periodicStatDump);
    # the dump at a period boundary runs after the CPU tick of the same tick (priority 90 > 50)
    counts = [ln.split()[1] for ln in text.splitlines() if ln.startswith("system.cpu.numVMExits")]
    assert counts == ["5", "4", "4"]
    assert event.scheduled() and event.when() == 4000
    q.deschedule(event)
