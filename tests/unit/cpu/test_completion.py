"""IN / MMIO-read completion and coalesced MMIO through the CPU model, on both backends.

``io_real.bin`` reads port 0x3fd and the MMIO word at 0x20020 and writes the
values back out (see guests/io_real.asm); the fake devices here answer those
reads, so the guest's later OUTs and its final registers show that the value
a device returned reached the guest register.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, List, Tuple

import pytest
from cpu_rig import IN_VALUE, MMIO_VALUE, CpuRig, Recorder, guest

from kvmcpu.cpu.kvm import Status, ThreadStatus, long_mode_context, long_mode_tables
from kvmcpu.sim.eventq import EventFunctionWrapper, exit_sim_loop

REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip")


def run_io_real(rig: CpuRig) -> Tuple[Recorder, Recorder, Recorder]:
    uart = Recorder(rig.queue, {5: IN_VALUE})
    ports = Recorder(rig.queue)
    mmio = Recorder(rig.queue, {0x20: MMIO_VALUE})
    rig.io.add(0x3F8, 8, uart)
    rig.io.add(0x400, 8, ports)
    rig.mmio.add(0x20000, 0x100, mmio)
    rig.start()
    rig.simulate(10**12)
    return uart, ports, mmio


def final_state(rig: CpuRig) -> Dict[str, Any]:
    tc = rig.cpu.getContext()
    out: Dict[str, Any] = {r: getattr(tc, r) for r in REGS}
    out["es"] = tc.es.selector
    out["cs"] = tc.cs.selector
    out["if"] = bool(tc.rflags & 0x200)
    return out


def test_in_and_mmio_read_values_reach_the_guest(make_rig: Any, backend_name: str) -> None:
    rig = make_rig(backend_name, "io_real")
    uart, ports, mmio = run_io_real(rig)
    # The IN's value came back out through the next OUT (the guest's AL).
    assert uart.writes() == [(0, 1, ord("4")), (0, 1, IN_VALUE)]
    assert [(k, o, s, v) for _, k, o, s, v in uart.log if k == "r"] == [("r", 5, 1, IN_VALUE)]
    # The MMIO read's value came back out through OUT 0x404 (the guest's EAX) ...
    assert ports.writes() == [(2, 2, 0x1234), (4, 4, 0xDEADBEEF), (4, 4, MMIO_VALUE)]
    assert mmio.writes() == [(0x10, 4, 0xCAFEF00D)]
    # ... and is still in EAX after the HLT.
    state = final_state(rig)
    assert state["rax"] & 0xFFFFFFFF == MMIO_VALUE
    assert state["rdx"] & 0xFFFF == 0x404
    assert state["es"] == 0x2000
    assert state["rip"] == 0x1000 + 0x3E  # just past the HLT
    assert rig.cpu.thread_status is ThreadStatus.Suspended
    stats = rig.stats()
    assert (stats["numIO"], stats["numMMIO"], stats["numHalt"]) == (6, 2, 1)
    assert stats["numVMExits"] == 9 + stats["numExitSignal"]


@pytest.mark.kvm
def test_io_real_ends_in_the_same_state_on_both_backends(make_rig: Any) -> None:
    states = []
    logs: List[Any] = []
    for name in ("mock", "kvm"):
        rig = make_rig(name, "io_real")
        devices = run_io_real(rig)
        states.append(final_state(rig))
        logs.append([[(k, o, s, v) for _, k, o, s, v in d.log] for d in devices])
    assert states[0] == states[1]
    assert logs[0] == logs[1]


def test_mmio_read_completes_by_a_half_entry_before_an_event(make_rig: Any,
                                                            backend_name: str) -> None:
    """When an event is due before a full entry is possible (closer than the run
    timer's resolution) the completion is a zero-length entry (immediate_exit):
    at that event the guest register already holds the value."""
    rig = make_rig(backend_name, "io_real")
    value = 0x11223344
    mmio = Recorder(rig.queue, {0x20: value})
    rig.io.add(0x3F8, 8, Recorder(rig.queue, {5: 1}))
    rig.io.add(0x400, 8, Recorder(rig.queue))
    rig.mmio.add(0x20000, 0x100, mmio)
    rig.start()
    seen: List[Tuple[Status, int, int]] = []
    probe = EventFunctionWrapper(
        lambda: seen.append((rig.cpu.status, rig.vcpu.get_regs().rax & 0xFFFFFFFF,
                             rig.stats()["numVMHalfEntries"])), "probe")
    original = mmio.read

    def read(offset: int, size: int) -> int:
        if offset == 0x20:
            rig.queue.schedule(probe, rig.queue.cur_tick + 1)
        return original(offset, size)

    mmio.read = read  # type: ignore[method-assign]
    rig.simulate(10**12)
    assert seen == [(Status.Running, value, 1)]
    assert final_state(rig)["rax"] & 0xFFFFFFFF == value


def test_coalesced_writes_are_serviced_in_order(make_rig: Any, backend_name: str) -> None:
    """coalesced.bin's four stores land in the ring (no exits) and are sent to the
    MMIO bus, in order, after the run that made them; the VM's zones alone make
    the CPU drain the ring (useCoalescedMMIO is left at its default, False)."""
    rig = make_rig(backend_name, "coalesced", vm={"coalesced_mmio": [(0x40000, 0x1000)]})
    zone = Recorder(rig.queue)
    uart = Recorder(rig.queue)
    rig.mmio.add(0x40000, 0x1000, zone)
    rig.io.add(0x3F8, 8, uart)
    rig.start()
    assert rig.vm.coalesced_zones == [(0x40000, 0x1000, False)]
    rig.simulate(10**12)
    assert zone.writes() == [(0, 1, 0x11), (2, 2, 0x2222), (4, 4, 0x44444444), (8, 1, 0x88)]
    assert uart.writes() == [(0, 1, ord("c"))]
    # The stores were in the ring before the OUT was serviced.
    assert zone.log[-1][0] <= uart.log[0][0]
    stats = rig.stats()
    assert stats["numCoalescedMMIO"] == 4
    assert stats["numMMIO"] == 0
    assert stats["numIO"] == 1 and stats["numHalt"] == 1


def test_flush_coalesced_mmio_services_pio_entries_too(make_rig: Any, mocker: Any) -> None:
    rig = make_rig("mock", "spin", useCoalescedMMIO=True).start()
    port = Recorder(rig.queue)
    rig.io.add(0x80, 1, port)
    mem = Recorder(rig.queue)
    rig.mmio.add(0x50000, 0x10, mem)
    from kvmcpu.backends.base import CoalescedMmio

    entries = [CoalescedMmio(0x50004, struct.pack("<I", 7), False),
               CoalescedMmio(0x80, b"\x42", True)]
    mocker.patch.object(rig.vcpu, "drain_coalesced_mmio", return_value=entries)
    ticks = rig.cpu.flushCoalescedMMIO()
    assert ticks == 0
    assert mem.writes() == [(4, 4, 7)]
    assert port.writes() == [(0, 1, 0x42)]
    assert rig.stats()["numCoalescedMMIO"] == 2


@pytest.mark.parametrize("cpl", [0, 3])
def test_long_mode_io_completion(make_rig: Any, backend_name: str, cpl: int) -> None:
    """io_long.bin in 64-bit mode (CPL3 with IOPL=3: KVM runs it natively on hosts
    that emulate CPL0): the same exits and completed values as in real mode."""
    tables = long_mode_tables(0x9000)
    tc = long_mode_context(0x2010 if cpl else 0x2000, cpl=cpl, iopl=3 if cpl else 0,
                           cr3=tables["cr3"], gdt_base=tables["gdt_base"])
    rig: CpuRig = make_rig(backend_name, None, tc=tc)
    rig.ram[0x9000:0x9000 + len(tables["blob"])] = tables["blob"]
    code = guest("io_long")
    rig.ram[0x2000:0x2000 + len(code)] = code
    uart = Recorder(rig.queue, {5: IN_VALUE})
    ports = Recorder(rig.queue)
    mmio = Recorder(rig.queue, {0x20: MMIO_VALUE})
    rig.io.add(0x3F8, 6, uart)
    rig.io.add(0x400, 8, ports)
    rig.mmio.add(0x20000, 0x100, mmio)
    done = Recorder(rig.queue)
    done.write = lambda o, s, v: exit_sim_loop("done", queue=rig.queue)  # type: ignore
    rig.io.add(0x3FF, 1, done)  # CPL3 ends with OUT 0x3ff instead of HLT
    rig.start()
    assert rig.simulate(10**13).cause == ("done" if cpl else "simulate() limit reached")
    assert uart.writes() == [(0, 1, ord("4")), (0, 1, IN_VALUE)]
    assert ports.writes() == [(2, 2, 0x1234), (4, 4, 0xDEADBEEF), (4, 4, MMIO_VALUE)]
    assert mmio.writes() == [(0x10, 4, 0xCAFEF00D)]
    tc = rig.cpu.getContext()
    assert tc.cpl() == cpl
    if not cpl:
        assert tc.rax & 0xFFFFFFFF == MMIO_VALUE
        assert rig.cpu.thread_status is ThreadStatus.Suspended
