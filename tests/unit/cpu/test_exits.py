"""Every exit handler of BaseKvmCPU/X86KvmCPU, reached through the mock's scripted exits.

A scripted exit is returned by the next KVM_RUN without running guest code
(``MockVcpu.script_exit``), exactly as KVM fills the run page. The guest
behind it is ``spin.bin``, so once the script is used up the CPU runs on its
instruction budget until the simulate() limit.
"""

from __future__ import annotations

import struct
from collections import Counter
from typing import Any, Callable, Dict, List, Tuple

import pytest
from cpu_rig import CpuRig, Recorder, trace_calls

from kvmcpu.backends.exits import (
    DebugExit,
    ExceptionExit,
    FailEntryExit,
    HltExit,
    HypercallExit,
    InternalErrorExit,
    IntrExit,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
)
from kvmcpu.cpu.kvm import GuestTripleFault, Status, ThreadStatus
from kvmcpu.errors import VcpuRunError
from kvmcpu.uapi import ExitReason

LIMIT = 200_000  # ticks: 200 cycles of the 1 GHz CPU clock

#: The stat each exit class increments (besides numVMExits).
EXIT_STAT = {IoExit: "numIO", MmioExit: "numMMIO", HltExit: "numHalt",
             HypercallExit: "numHypercalls", IntrExit: "numExitSignal"}


class Fifo:
    """A port device answering reads from a list, in order."""

    def __init__(self, values: List[int]) -> None:
        self.values = list(values)
        self.reads: List[Tuple[int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.reads.append((offset, size))
        return self.values.pop(0)

    def write(self, offset: int, size: int, value: int) -> None:
        raise AssertionError("no writes expected")


def started(make_rig: Callable[..., CpuRig], **kw: Any) -> CpuRig:
    return make_rig("mock", "spin", **kw).start()


def record_exits(mocker: Any, rig: CpuRig) -> List[Tuple[str, int, Any]]:
    log: List[Tuple[str, int, Any]] = []
    trace_calls(mocker, rig.cpu, "ioctlRun", log, rig.queue)
    return log


def expected_stats(exits: List[Any]) -> Dict[str, int]:
    counts: Dict[str, int] = Counter()
    for ex in exits:
        counts["numVMExits"] += 1
        stat = EXIT_STAT.get(type(ex))
        if stat:
            counts[stat] += 1
    return counts


def check_stats(rig: CpuRig, exits: List[Any]) -> None:
    got = rig.stats()
    want = expected_stats(exits)
    for name in ("numVMExits", "numIO", "numMMIO", "numHalt", "numHypercalls", "numExitSignal"):
        assert got[name] == want.get(name, 0), name


# ----------------------------------------------------------------------------- IO
def test_string_out_sends_every_element_in_order(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    dev = Recorder(rig.queue)
    rig.io.add(0x400, 4, dev)
    values = (0x1111, 0x2222, 0x3333)
    rig.vcpu.script_exit(ExitReason.IO, port=0x402, size=2, count=3, is_write=True,
                         data=struct.pack("<3H", *values))
    log = record_exits(mocker, rig)
    rig.simulate(LIMIT)
    assert dev.writes() == [(2, 2, v) for v in values]
    exits = [r for _, _, r in log]
    assert isinstance(exits[0], IoExit) and exits[0].count == 3
    check_stats(rig, exits)
    assert rig.stats()["numIO"] == 1


def test_string_in_fills_the_run_page_for_the_guest(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    fifo = Fifo([0xA1, 0xB2, 0xC3, 0xD4])
    rig.io.add(0x60, 1, fifo)
    rig.vcpu.script_exit(ExitReason.IO, port=0x60, size=1, count=4, is_write=False)
    handler = mocker.spy(rig.cpu, "handleKvmExitIO")
    rig.simulate(LIMIT)
    assert fifo.reads == [(0, 1)] * 4
    (ex,), _ = handler.call_args
    # The data the next KVM_RUN gives the guest: the run page at io.data_offset.
    off = rig.vcpu.kvm_run.io.data_offset
    assert bytes(rig.vcpu.run_page[off:off + 4]) == bytes([0xA1, 0xB2, 0xC3, 0xD4])
    assert ex.data_offset == off
    assert rig.stats()["numIO"] == 1


def test_single_in_is_completed_through_exit_data(make_rig: Any) -> None:
    rig = started(make_rig)
    rig.io.add(0x71, 1, Fifo([0x3C]))
    rig.vcpu.script_exit(ExitReason.IO, port=0x71, size=1, count=1, is_write=False)
    rig.simulate(LIMIT)
    off = rig.vcpu.kvm_run.io.data_offset
    assert rig.vcpu.run_page[off] == 0x3C


def test_io_without_a_bus_is_a_vcpu_run_error(make_rig: Any) -> None:
    rig = started(make_rig)
    rig.cpu.io_bus = None
    rig.vcpu.script_exit(ExitReason.IO, port=0x80, size=1, is_write=True, data=b"\x01")
    with pytest.raises(VcpuRunError) as info:
        rig.simulate(LIMIT)
    assert "port 0x80" in str(info.value)
    assert isinstance(info.value.exit, IoExit)


# --------------------------------------------------------------------------- MMIO
def test_mmio_write_and_read(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    dev = Recorder(rig.queue, {0x20: 0x8877665544332211})
    rig.mmio.add(0xFED00000, 0x100, dev)
    rig.vcpu.script_exit(ExitReason.MMIO, phys_addr=0xFED00010, len=4, is_write=True,
                         data=struct.pack("<I", 0xCAFEF00D))
    rig.vcpu.script_exit(ExitReason.MMIO, phys_addr=0xFED00020, len=8, is_write=False)
    log = record_exits(mocker, rig)
    rig.simulate(LIMIT)
    assert [(k, o, s, v) for _, k, o, s, v in dev.log] == [
        ("w", 0x10, 4, 0xCAFEF00D), ("r", 0x20, 8, 0x8877665544332211)]
    assert bytes(rig.vcpu.kvm_run.mmio.data) == struct.pack("<Q", 0x8877665544332211)
    check_stats(rig, [r for _, _, r in log])
    assert rig.stats()["numMMIO"] == 2


def test_mmio_completion_state_then_full_run(make_rig: Any, mocker: Any) -> None:
    """After an MMIO exit the CPU is in RunningServiceCompletion and the next entry
    (a full one here: the next event is far away) completes the access."""
    rig = started(make_rig)
    rig.mmio.add(0x30000, 0x10, Recorder(rig.queue, {0: 7}))
    rig.vcpu.script_exit(ExitReason.MMIO, phys_addr=0x30000, len=1, is_write=False)
    states: List[Status] = []
    original = rig.cpu.handleKvmExit

    def handle() -> int:
        ticks = original()
        states.append(rig.cpu.status)
        return ticks

    mocker.patch.object(rig.cpu, "handleKvmExit", side_effect=handle)
    rig.simulate(LIMIT)
    assert states[0] is Status.RunningServiceCompletion
    assert rig.stats()["numVMHalfEntries"] == 1  # only the one at the limit tick


# --------------------------------------------------------------------- HLT, IRQ window
def test_hlt_suspends_the_thread(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    on_halt = mocker.Mock()
    rig.cpu.on_halt = on_halt
    rig.vcpu.script_exit(ExitReason.HLT)
    log = record_exits(mocker, rig)
    ev = rig.simulate(LIMIT)
    assert rig.cpu.thread_status is ThreadStatus.Suspended
    assert rig.cpu.status is Status.Idle
    assert not rig.cpu.tick_event.scheduled()
    on_halt.assert_called_once_with()
    assert [type(r) for _, _, r in log] == [HltExit]  # nothing ran after the HLT
    assert ev.cause == "simulate() limit reached"
    check_stats(rig, [r for _, _, r in log])
    assert rig.stats()["numHalt"] == 1


def test_irq_window_open_keeps_running(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    rig.vcpu.script_exit(ExitReason.IRQ_WINDOW_OPEN)
    handler = mocker.spy(rig.cpu, "handleKvmExitIRQWindowOpen")
    log = record_exits(mocker, rig)
    rig.simulate(LIMIT)
    handler.assert_called_once()
    assert isinstance(handler.call_args.args[0], IrqWindowOpenExit)
    assert rig.cpu.thread_status is ThreadStatus.Active
    assert len(log) >= 2 and isinstance(log[1][2], IntrExit)  # it went back into the guest
    check_stats(rig, [r for _, _, r in log])


# ---------------------------------------------------------------------- hypercalls
def test_hypercall_with_a_handler_returns_its_value(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    seen: List[Tuple[int, Tuple[int, ...]]] = []

    def handler(ex: HypercallExit) -> int:
        seen.append((ex.nr, ex.args))
        return -2

    rig.cpu.hypercall_handler = handler
    rig.vcpu.script_exit(ExitReason.HYPERCALL, nr=12, args=[1, 2, 3, 4, 5, 6], longmode=1)
    log = record_exits(mocker, rig)
    rig.simulate(LIMIT)
    assert seen == [(12, (1, 2, 3, 4, 5, 6))]
    assert rig.vcpu.kvm_run.hypercall.ret == (1 << 64) - 2
    assert rig.stats()["numHypercalls"] == 1
    check_stats(rig, [r for _, _, r in log])


def test_hypercall_without_a_handler_is_an_error(make_rig: Any) -> None:
    rig = started(make_rig)
    rig.vcpu.script_exit(ExitReason.HYPERCALL, nr=0x42, args=[9])
    with pytest.raises(VcpuRunError) as info:
        rig.simulate(LIMIT)
    err = info.value
    assert isinstance(err.exit, HypercallExit) and err.exit.nr == 0x42
    assert "nr=0x42" in err.message
    assert rig.stats()["numHypercalls"] == 1


# ------------------------------------------------------------------- INTR
def test_scripted_intr_counts_as_a_signal_exit(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    rig.vcpu.script_exit(ExitReason.INTR)
    rig.vcpu.script_exit(ExitReason.INTR)
    log = record_exits(mocker, rig)
    handler = mocker.spy(rig.cpu, "handleKvmExit")
    rig.simulate(LIMIT)
    exits = [r for _, _, r in log]
    assert [type(e) for e in exits[:2]] == [IntrExit, IntrExit]
    handler.assert_not_called()  # an INTR is never "serviced"
    check_stats(rig, exits)
    assert rig.stats()["numExitSignal"] >= 3


# -------------------------------------------------------------- fatal exits
def fatal(make_rig: Any, reason: int, **fields: Any) -> VcpuRunError:
    rig = started(make_rig)
    rig.vcpu.script_exit(reason, **fields)
    with pytest.raises(VcpuRunError) as info:
        rig.simulate(LIMIT)
    err = info.value
    assert err.regs_dump and "rip" in err.regs_dump
    assert err.regs_dump in str(err)
    return err


def test_shutdown_is_a_guest_triple_fault(make_rig: Any) -> None:
    err = fatal(make_rig, ExitReason.SHUTDOWN)
    assert isinstance(err, GuestTripleFault)
    assert isinstance(err.exit, ShutdownExit)
    assert "triple fault" in err.message


def test_fail_entry_carries_the_hardware_reason(make_rig: Any) -> None:
    err = fatal(make_rig, ExitReason.FAIL_ENTRY, hardware_entry_failure_reason=0x80000021,
                cpu=3)
    assert not isinstance(err, GuestTripleFault)
    assert isinstance(err.exit, FailEntryExit)
    assert err.exit.fields() == {"hardware_entry_failure_reason": 0x80000021, "cpu": 3}
    assert "0x80000021" in err.message and "cpu 3" in err.message


def test_internal_error_carries_suberror_data_and_instruction(make_rig: Any) -> None:
    err = fatal(make_rig, ExitReason.INTERNAL_ERROR, suberror=1, insn_bytes=b"\xf3\x0f\xb8\xc0")
    assert isinstance(err.exit, InternalErrorExit)
    assert err.exit.suberror == 1
    assert err.exit.insn_bytes == b"\xf3\x0f\xb8\xc0"
    assert "f3 0f b8 c0" in err.message and "suberror 1" in err.message


def test_internal_error_without_instruction_bytes(make_rig: Any) -> None:
    err = fatal(make_rig, ExitReason.INTERNAL_ERROR, suberror=3, data=[0x11, 0x22])
    assert isinstance(err.exit, InternalErrorExit)
    assert err.exit.data == (0x11, 0x22)
    assert "0x22" in err.message


def test_exception_exit(make_rig: Any) -> None:
    err = fatal(make_rig, ExitReason.EXCEPTION, exception=13, error_code=0x18)
    assert isinstance(err.exit, ExceptionExit)
    assert err.exit.fields() == {"exception": 13, "error_code": 0x18}
    assert "exception 13" in err.message and "0x18" in err.message


@pytest.mark.parametrize("reason,name", [(ExitReason.UNKNOWN, "UNKNOWN"), (99, "unknown")])
def test_unknown_exit(make_rig: Any, reason: int, name: str) -> None:
    fields = {"hardware_exit_reason": 0x7B} if reason == ExitReason.UNKNOWN else {}
    err = fatal(make_rig, reason, **fields)
    assert isinstance(err.exit, UnknownExit)
    assert err.exit.reason == reason
    assert f"reason {reason} ({name})" in err.message
    if fields:
        assert "0x7b" in err.message


# -------------------------------------------------------- exits that end the loop
@pytest.mark.parametrize("kind,cause,code", [
    (1, "guest system event: shutdown", 0),
    (2, "guest system event: reset", 1),
    (3, "guest system event: crash", 1),
    (7, "guest system event: type 7", 1),
])
def test_system_event_ends_the_simulation(make_rig: Any, kind: int, cause: str,
                                          code: int) -> None:
    rig = started(make_rig)
    rig.vcpu.script_exit(ExitReason.SYSTEM_EVENT, type=kind, data=[0])
    ev = rig.simulate(LIMIT)
    assert (ev.cause, ev.code) == (cause, code)
    assert ev.tick < LIMIT
    assert rig.cpu.thread_status is ThreadStatus.Suspended
    assert isinstance(rig.cpu.last_exit, SystemEventExit)


def test_debug_exit_ends_the_simulation(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    rig.vcpu.script_exit(ExitReason.DEBUG, exception=1, pc=0x1234, dr6=0xFFFF0FF0, dr7=0x400)
    handler = mocker.spy(rig.cpu, "handleKvmExitDebug")
    ev = rig.simulate(LIMIT)
    assert ev.cause == "debug exit at 0x1234 (exception 1)"
    assert ev.tick == 0
    (ex,), _ = handler.call_args
    assert isinstance(ex, DebugExit) and ex.dr6 == 0xFFFF0FF0 and ex.dr7 == 0x400
    # Before the exit event (Sim_Exit priority) the CPU only made a half entry.
    assert rig.stats()["numInsts"] == 0
    # The loop can be resumed: the CPU kept running after the debug exit.
    assert rig.cpu.tick_event.scheduled()
    ev = rig.simulate(LIMIT)
    assert ev.cause == "simulate() limit reached"


# ------------------------------------------------------------------- dispatch
def test_dispatch_order_and_stats(make_rig: Any, mocker: Any) -> None:
    rig = started(make_rig)
    rig.io.add(0x400, 8, Recorder(rig.queue))
    rig.mmio.add(0x20000, 0x100, Recorder(rig.queue))
    rig.cpu.hypercall_handler = lambda ex: 0
    v = rig.vcpu
    v.script_exit(ExitReason.IO, port=0x401, size=1, is_write=True, data=b"a")
    v.script_exit(ExitReason.MMIO, phys_addr=0x20004, len=2, is_write=True, data=b"xy")
    v.script_exit(ExitReason.IRQ_WINDOW_OPEN)
    v.script_exit(ExitReason.INTR)
    v.script_exit(ExitReason.HYPERCALL, nr=1)
    v.script_exit(ExitReason.IO, port=0x402, size=1, is_write=False)
    v.script_exit(ExitReason.HLT)
    order: List[str] = []
    for name in ("handleKvmExitIO", "doMMIOAccess", "handleKvmExitIRQWindowOpen",
                 "handleKvmExitHypercall", "handleKvmExitHalt"):
        original = getattr(rig.cpu, name)

        def make(name: str = name, original: Any = original) -> Any:
            return lambda *a: (order.append(name), original(*a))[1]

        mocker.patch.object(rig.cpu, name, side_effect=make())
    log = record_exits(mocker, rig)
    rig.simulate(LIMIT)
    assert order == ["handleKvmExitIO", "doMMIOAccess", "handleKvmExitIRQWindowOpen",
                     "handleKvmExitHypercall", "handleKvmExitIO", "handleKvmExitHalt"]
    exits = [r for _, _, r in log]
    assert [type(e) for e in exits] == [IoExit, MmioExit, IrqWindowOpenExit, IntrExit,
                                        HypercallExit, IoExit, HltExit]
    check_stats(rig, exits)
    assert rig.stats()["numVMExits"] == 7


def test_exit_is_serviced_on_the_tick_after_the_run(make_rig: Any, mocker: Any) -> None:
    """io_real on the mock: every handleKvmExit runs at the clock edge at or after
    the tick its kvmRun started plus the ticks that run executed."""
    rig = make_rig("mock", "io_real")
    rig.io.add(0x3F8, 8, Recorder(rig.queue, {5: 0x5A}))
    rig.io.add(0x400, 8, Recorder(rig.queue))
    rig.mmio.add(0x20000, 0x100, Recorder(rig.queue))
    rig.start()
    log: List[Tuple[str, int, Any]] = []
    trace_calls(mocker, rig.cpu, "kvmRun", log, rig.queue)
    trace_calls(mocker, rig.cpu, "handleKvmExit", log, rig.queue)
    rig.simulate(10**9)
    names = [n for n, _, _ in log]
    assert names == ["kvmRun", "handleKvmExit"] * 9
    assert sum(r for n, _, r in log if n == "kvmRun") > 0
    period = rig.cpu.clock_period()
    for (_, run_tick, executed), (_, service_tick, _) in zip(log[::2], log[1::2]):
        edge = -(-(run_tick + executed) // period) * period
        assert service_tick == edge
    # Time moved by exactly the instructions executed (one cycle each).
    assert rig.stats()["numCycles"] == sum(r for n, _, r in log if n == "kvmRun") // period
