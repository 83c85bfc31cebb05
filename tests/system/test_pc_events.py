"""PC events and instruction-count events on the bundled ELF guest ``debugme``
(kvmcpu/guests/debugme.asm), on both backends: callbacks at symbols see the
registers before the instruction there, can change them and stop the run; the
mock watches any number of addresses, KVM four (the debug registers) and says
so; instruction-count events are exact on the mock and refused on KVM; events
are not checkpointed and move with the thread on a CPU switch.

The addresses and instruction counts are objdump's reading of debugme.bin:
``_start`` 0x100000 (2 instructions), ``loop_top`` 0x10000c (mov, call),
``compute`` 0x100032 (mov, imul, inc, ret), back at 0x100014 (add, inc, cmp,
jb): 10 instructions a round, 8 rounds, then ``finish`` 0x100022.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, List, Tuple

import pytest

import kvmcpu
from kvmcpu.cpu.thread import ThreadContext
from kvmcpu.errors import DebugUnsupportedError, GuestError
from kvmcpu.sim.eventq import exit_sim_loop
from kvmcpu.system import System

START, LOOP_TOP, AFTER_CALL, FINISH, COMPUTE = 0x100000, 0x10000C, 0x100014, 0x100022, 0x100032
COUNTER = 0x100040
#: exit status of an undisturbed run: counter = sum(i*i + 1, i < 8) = 148; (148 & 0x7f) << 1 | 1
STATUS = 41
#: every instruction address of the loop and of compute (more than four)
LOOP_PCS = [0x10000C, 0x10000F, 0x100014, 0x10001B, 0x10001D, 0x100020,
            0x100032, 0x100035, 0x100039, 0x10003C]

both = pytest.mark.parametrize("backend_name", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])


def _system(make_system: Callable[..., System], backend: str) -> System:
    s = make_system("16M", backend=backend)
    s.load(kvmcpu.guests.path("debugme"))
    return s


def test_symbols_come_from_the_elf_symbol_table(make_system: Callable[..., System]) -> None:
    s = _system(make_system, "mock")
    assert (s.symbol("_start"), s.symbol("loop_top"), s.symbol("compute"),
            s.symbol("finish"), s.symbol("counter")) == (START, LOOP_TOP, COMPUTE, FINISH, COUNTER)
    with pytest.raises(GuestError, match="no symbol 'nope'.*compute"):
        s.symbol("nope")
    flat = make_system("16M", backend="mock")
    flat.load(kvmcpu.guests.path("hello64"))  # hand-written ELF: no section headers
    with pytest.raises(GuestError, match="no symbol table"):
        flat.schedule_pc_event("main", lambda tc: None)


@both
def test_callbacks_at_symbols_see_the_registers(backend_name: str,
                                                make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    seen: List[Tuple[Any, ...]] = []
    s.schedule_pc_event("compute", lambda tc: seen.append(("compute", tc.rip, tc.rdi, tc.rsp)))
    s.schedule_pc_event("finish", lambda tc: seen.append(("finish", tc.rip, tc.rbx, tc.rax)))
    result = s.run(timeout=120)
    assert (result.cause, result.status) == ("isa-debug-exit", STATUS)
    # Before the instruction: at compute, the call has pushed its return address.
    assert seen == [("compute", COMPUTE, i, 0x101048) for i in range(8)] + [
        ("finish", FINISH, 8, 7 * 7 + 1)]


@both
def test_a_callback_changes_the_thread_and_stops_the_run(
        backend_name: str, make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    args: List[int] = []

    def zero_argument(tc: ThreadContext) -> None:
        args.append(tc.rdi)
        tc.rdi = 0  # compute(0) = 1 every round: counter 8, status (8 << 1) | 1

    def stop_once(tc: ThreadContext) -> None:
        exit_sim_loop("stopped at finish", 0, queue=s.eventq)

    s.schedule_pc_event(COMPUTE, zero_argument)
    s.schedule_pc_event(FINISH, stop_once)
    first = s.run(timeout=120)
    assert first.cause == "stopped at finish"
    assert args == list(range(8))
    tc = s.cpu.getContext()
    assert (tc.rip, tc.rbx) == (FINISH, 8)
    assert bytes(s.physmem.read(COUNTER, 8)) == (8).to_bytes(8, "little")
    second = s.run(timeout=120)  # resumes over the breakpoint it stopped at
    assert (second.cause, second.status) == ("isa-debug-exit", 17)


@both
def test_removing_an_event_from_its_callback(backend_name: str,
                                             make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    hits: List[int] = []

    def three_times(tc: ThreadContext) -> None:
        hits.append(tc.rdi)
        if len(hits) == 3:
            ev.remove()

    ev = s.schedule_pc_event("compute", three_times)
    assert s.run(timeout=120).status == STATUS
    assert hits == [0, 1, 2] and not ev.scheduled and s.cpu.pc_events() == []


def test_the_mock_watches_any_number_of_addresses(make_system: Callable[..., System]) -> None:
    s = _system(make_system, "mock")
    hits: List[int] = []
    for pc in LOOP_PCS:
        s.schedule_pc_event(pc, lambda tc: hits.append(tc.rip))
    assert s.run(timeout=120).status == STATUS
    assert hits == (LOOP_PCS[:2] + LOOP_PCS[6:] + LOOP_PCS[2:6]) * 8


def test_pc_event_arguments_are_checked(make_system: Callable[..., System]) -> None:
    s = _system(make_system, "mock")
    with pytest.raises(TypeError, match="addr must be an int"):
        s.cpu.schedule_pc_event("compute", lambda tc: None)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="addr must be in"):
        s.cpu.schedule_pc_event(-1, lambda tc: None)
    with pytest.raises(TypeError, match="callback must be callable"):
        s.schedule_pc_event("compute", 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="count must be >= 1"):
        s.cpu.schedule_inst_event(0, lambda tc: None)


@pytest.mark.parametrize("count, rip, rbx", [(1, 0x10000A, 0), (5, 0x100035, 0),
                                             (32, LOOP_TOP, 3), (84, 0x10002C, 8)])
def test_instruction_events_are_exact_on_the_mock(count: int, rip: int, rbx: int,
                                                  make_system: Callable[..., System]) -> None:
    s = _system(make_system, "mock")
    seen: List[Tuple[int, int, int]] = []

    def at(tc: ThreadContext) -> None:
        seen.append((tc.rip, tc.rbx, s.cpu.totalInsts()))
        exit_sim_loop("instruction count reached", 0, queue=s.eventq)

    s.cpu.schedule_inst_event(count, at)
    assert s.run(timeout=120).cause == "instruction count reached"
    assert seen == [(rip, rbx, count)]
    assert s.run(timeout=120).status == STATUS


def test_instruction_and_pc_events_together_on_the_mock(
        make_system: Callable[..., System]) -> None:
    s = _system(make_system, "mock")
    log: List[Tuple[str, int]] = []
    s.schedule_pc_event("compute", lambda tc: log.append(("pc", s.cpu.totalInsts())))
    s.cpu.schedule_inst_event(15, lambda tc: log.append(("insts", tc.rip)))
    assert s.run(timeout=120).status == STATUS
    # compute is reached after 4 + 10 k instructions; 15 instructions end at 0x100035.
    assert log[:3] == [("pc", 4), ("insts", 0x100035), ("pc", 14)] or \
        log[:3] == [("pc", 4), ("pc", 14), ("insts", 0x100035)]
    assert [n for kind, n in log if kind == "pc"] == [4 + 10 * k for k in range(8)]


@pytest.mark.kvm
def test_kvm_refuses_instruction_events_without_a_counter(
        make_system: Callable[..., System]) -> None:
    from kvmcpu.cpu.kvm.perfevent import inst_counter_probe

    works, finding = inst_counter_probe()
    if works:
        pytest.skip(f"this host has an instruction counter ({finding}): "
                    "tests/system/test_inst_counter.py covers the counter path")
    assert "perf_event_open(PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS" in finding
    s = _system(make_system, "kvm")
    with pytest.raises(DebugUnsupportedError) as err:
        s.cpu.schedule_inst_event(10, lambda tc: None)
    assert f"(probe: {finding})" in str(err.value)
    assert "refuses rather than approximate" in str(err.value)
    assert s.cpu.inst_events() == []


@both
def test_events_are_not_checkpointed(backend_name: str, tmp_path: Path,
                                     make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    hits: List[int] = []

    def stop_at_third(tc: ThreadContext) -> None:
        hits.append(tc.rdi)
        if len(hits) == 3:
            exit_sim_loop("third call", 0, queue=s.eventq)

    s.schedule_pc_event("compute", stop_at_third)
    assert s.run(timeout=120).cause == "third call"
    s.checkpoint(tmp_path / "cpt")
    restored = System.restore(tmp_path / "cpt", backend=backend_name)
    try:
        assert restored.cpu.pc_events() == []
        again: List[int] = []
        restored.cpu.schedule_pc_event(COMPUTE, lambda tc: again.append(tc.rdi))
        assert restored.run(timeout=120).status == STATUS
        assert again == [2, 3, 4, 5, 6, 7]  # the restored thread is about to run compute(2)
    finally:
        restored.close()
    assert s.run(timeout=120).status == STATUS  # the original still has its event
    assert hits == list(range(8))


@pytest.mark.parametrize("first, second", [
    ("mock", "mock"), pytest.param("mock", "kvm", marks=pytest.mark.kvm),
    pytest.param("kvm", "mock", marks=pytest.mark.kvm)])
def test_events_move_with_the_thread_on_a_cpu_switch(
        first: str, second: str, make_system: Callable[..., System]) -> None:
    s = _system(make_system, first)
    hits: List[Tuple[str, int]] = []

    def record(tc: ThreadContext) -> None:
        hits.append((s.backend.name, tc.rdi))
        if tc.rdi == 2:
            exit_sim_loop("switch now", 0, queue=s.eventq)

    s.schedule_pc_event("compute", record)
    assert s.run(timeout=120).cause == "switch now"
    old = s.cpu
    s.switch_cpu(second)
    assert old.pc_events() == [] and len(s.cpu.pc_events()) == 1
    assert s.run(timeout=120).status == STATUS
    assert hits == [(first, i) for i in range(3)] + [(second, i) for i in range(3, 8)]


@both
def test_a_callback_that_moves_the_thread_away_sees_its_next_arrival(
        backend_name: str, make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    hits: List[int] = []

    def once_more(tc: ThreadContext) -> None:
        hits.append(tc.rbx)
        if hits.count(8) == 1:
            tc.rip, tc.rbx = LOOP_TOP, 7  # one more round: compute(7) again
    s.schedule_pc_event("finish", once_more)
    s.schedule_pc_event("compute", lambda tc: hits.append(-tc.rdi))
    assert s.run(timeout=120).status == ((148 + 50) & 0x7F) << 1 | 1
    assert hits == [-i for i in range(8)] + [8, -7, 8]
