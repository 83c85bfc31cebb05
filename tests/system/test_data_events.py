"""Data events (gdb's watchpoints as a library API) on debugme's ``counter``
(0x100040, 8 bytes): write, read and access events after the instruction,
ranges by the debug registers' rules (1/2/4/8 bytes, aligned), the four
registers shared with hardware PC events, the typed refusals, and a CPU switch.

debugme adds compute(i) = i*i + 1 to counter with ``add [counter], rax`` at
0x100014 (read and write; next instruction 0x10001b) in each of 8 rounds, then
reads it with ``mov rax, [counter]`` at finish 0x100022 (next 0x100029)."""

from __future__ import annotations

from typing import Callable, List, Tuple

import pytest

import kvmcpu
from kvmcpu.backends import get_backend
from kvmcpu.cpu.kvm import debug_probe
from kvmcpu.errors import DebugUnsupportedError
from kvmcpu.sim.eventq import exit_sim_loop
from kvmcpu.system import System

COUNTER, AFTER_ADD, AFTER_READ, COMPUTE = 0x100040, 0x10001B, 0x100029, 0x100032
STATUS = 41
both = pytest.mark.parametrize("backend_name", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])


def _delivered(backend: str) -> Tuple[bool, str]:
    with get_backend(backend) as b:
        return debug_probe.probe(b, debug_probe.DATA, "long cpl0")


def _system(make_system: Callable[..., System], backend: str, need: bool = True) -> System:
    if need and not _delivered(backend)[0]:
        pytest.skip(f"{backend}: no data breakpoints on this host ({_delivered(backend)[1]})")
    s = make_system("16M", backend=backend)
    s.load(kvmcpu.guests.path("debugme"))
    return s


@both
def test_write_read_and_access_events(backend_name: str,
                                      make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    log: List[Tuple[str, int, int]] = []
    for kind in ("write", "read", "access"):
        s.cpu.schedule_data_event(COUNTER, 8, lambda tc, k=kind: log.append(
            (k, tc.rip, s.physmem.read_u64(COUNTER))), kind)
    assert s.run(timeout=120).status == STATUS
    sums = [sum(i * i + 1 for i in range(n + 1)) for n in range(8)]
    # each add reads and writes (the value changes: a write, not a read); finish reads
    assert log == [e for v in sums for e in (("write", AFTER_ADD, v), ("access", AFTER_ADD, v))] \
        + [("read", AFTER_READ, 148), ("access", AFTER_READ, 148)]


@both
def test_ranges_follow_the_debug_registers(backend_name: str,
                                           make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    hits: List[Tuple[int, int]] = []
    # the high half of counter (the 8-byte add and mov cover it), a 2-byte piece of
    # it, and the 8 bytes after it, which nothing touches
    for addr, length in ((COUNTER + 4, 4), (COUNTER + 6, 2), (COUNTER + 8, 8)):
        s.cpu.schedule_data_event(addr, length, lambda tc, a=addr: hits.append((a, tc.rip)),
                                  "access")
    assert s.run(timeout=120).status == STATUS
    assert hits == [(a, pc) for pc in [AFTER_ADD] * 8 + [AFTER_READ]
                    for a in (COUNTER + 4, COUNTER + 6)]


@both
def test_data_event_arguments_are_checked(backend_name: str,
                                          make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name, need=False)
    cpu = s.cpu
    with pytest.raises(ValueError, match="length must be 1, 2, 4 or 8"):
        cpu.schedule_data_event(COUNTER, 3, lambda tc: None)
    with pytest.raises(ValueError, match="aligned to its length 8"):
        cpu.schedule_data_event(COUNTER + 4, 8, lambda tc: None)
    with pytest.raises(ValueError, match="kind must be one of write, read, access"):
        cpu.schedule_data_event(COUNTER, 8, lambda tc: None, "execute")
    with pytest.raises(TypeError, match="length must be an int"):
        cpu.schedule_data_event(COUNTER, "8", lambda tc: None)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="callback must be callable"):
        cpu.schedule_data_event(COUNTER, 8, None)  # type: ignore[arg-type]
    assert cpu.data_events() == []


@both
def test_the_four_debug_registers_are_shared(backend_name: str,
                                             make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    cpu = s.cpu
    evs = [cpu.schedule_data_event(COUNTER + 8 * i, 8, lambda tc: None) for i in range(3)]
    # a read and an access event on one range share its R/W=11 register
    cpu.schedule_data_event(COUNTER, 8, lambda tc: None, "read")
    cpu.schedule_data_event(COUNTER, 8, lambda tc: None, "access")
    with pytest.raises(DebugUnsupportedError, match=r"no debug register left.*hold 4 data"):
        cpu.schedule_data_event(COUNTER + 32, 8, lambda tc: None)
    evs[2].remove()
    hits: List[int] = []
    cpu.schedule_pc_event(COMPUTE, lambda tc: hits.append(tc.rdi))  # the last register
    if cpu.exact_stepping():
        cpu.schedule_pc_event(AFTER_ADD, lambda tc: None)  # the mock steps instead
    else:
        with pytest.raises(DebugUnsupportedError, match="4 of them taken by data breakpoints"):
            cpu.schedule_pc_event(AFTER_ADD, lambda tc: None)
        with pytest.raises(DebugUnsupportedError, match="1 hardware PC event"):
            cpu.schedule_data_event(COUNTER + 16, 8, lambda tc: None)
    assert s.run(timeout=120).status == STATUS
    assert hits == list(range(8))


@pytest.mark.kvm
def test_kvm_without_data_breakpoints_refuses_naming_the_probe(
        make_system: Callable[..., System]) -> None:
    works, seen = _delivered("kvm")
    if works:
        pytest.skip("this host's KVM delivers data breakpoints")
    s = _system(make_system, "kvm", need=False)
    with pytest.raises(DebugUnsupportedError, match="does not deliver data breakpoints in "
                                                    "long cpl0 mode.*the watched write gave"):
        s.cpu.schedule_data_event(COUNTER, 8, lambda tc: None)
    assert s.run(timeout=120).status == STATUS


def test_data_events_move_with_the_thread_on_a_cpu_switch(
        make_system: Callable[..., System]) -> None:
    s = _system(make_system, "mock")
    seen: List[Tuple[str, int]] = []

    def record(tc: object) -> None:
        seen.append((s.backend.name, s.physmem.read_u64(COUNTER)))
        if len(seen) == 3:
            exit_sim_loop("switch now", 0, queue=s.eventq)

    s.cpu.schedule_data_event(COUNTER, 8, record, "write")
    assert s.run(timeout=120).cause == "switch now"
    old = s.cpu
    s.switch_cpu("mock")
    assert old.data_events() == [] and len(s.cpu.data_events()) == 1
    assert s.run(timeout=120).status == STATUS
    assert [v for _, v in seen] == [sum(i * i + 1 for i in range(n + 1)) for n in range(8)]
