"""Interrupt delivery without an in-kernel irqchip (X86KvmCPU.ioctlRun), NMIs, HLT wake-up."""

from __future__ import annotations

from typing import Any, List, Tuple

import pytest
from cpu_rig import ENTRY, CpuRig, Recorder

from kvmcpu.cpu.kvm import ThreadStatus
from kvmcpu.sim.eventq import EventFunctionWrapper
from kvmcpu.sim.simobject import DrainState
from kvmcpu.uapi import ExitReason

VECTOR = 0x20

#: Real mode at 0x1000 (nasm -f bin):
#:     cli
#:     mov word [0x20*4], handler  ; IVT entry of vector 0x20 -> 0:handler
#:     mov word [0x20*4+2], 0
#:     mov al, 1
#:     out 0x12, al                ; the test may raise the interrupt here (IF=0)
#:     mov cx, 20
#: .spin: loop .spin               ; IF=0: the interrupt must wait
#:     sti
#:     hlt                         ; IF=1: an interrupt wakes it
#:     out 0x11, al                ; AL as the handler left it
#:     cli
#:     hlt                         ; IF=0: halted for good
#:     jmp $
#: handler:
#:     mov al, 0x99
#:     out 0x10, al
#:     iret
IRQ_HLT = bytes.fromhex(
    "fac70680001e10c70682000000b001e612b91400e2fefbf4e611faf4ebfeb099e610cf")


class FakePic:
    """An interrupt controller for the CPU: vectors waiting for acknowledgement."""

    def __init__(self) -> None:
        self.pending: List[int] = []
        self.acked: List[int] = []

    def has_pending(self) -> bool:
        return bool(self.pending)

    def acknowledge(self) -> int:
        vector = self.pending.pop(0)
        self.acked.append(vector)
        return vector


def irq_rig(make_rig: Any, backend: str) -> Tuple[CpuRig, FakePic, Recorder]:
    pic = FakePic()
    rig: CpuRig = make_rig(backend, None, interrupts=pic)
    rig.ram[ENTRY:ENTRY + len(IRQ_HLT)] = IRQ_HLT
    ports = Recorder(rig.queue)
    rig.io.add(0x10, 3, ports)
    return rig, pic, ports


# ------------------------------------------------------------- ioctlRun's decision
@pytest.fixture
def scripted(make_rig: Any) -> Tuple[CpuRig, FakePic]:
    pic = FakePic()
    rig = make_rig("mock", "spin", interrupts=pic).start()
    rig.cpu.syncKvmState()
    return rig, pic


def enter(rig: CpuRig, *, ready: int, if_flag: int = 1) -> None:
    """One ioctlRun whose KVM_RUN returns a scripted exit, with these run flags."""
    run = rig.vcpu.kvm_run
    run.ready_for_interrupt_injection = ready
    run.if_flag = if_flag
    rig.vcpu.script_exit(ExitReason.IRQ_WINDOW_OPEN)
    rig.cpu.ioctlRun()


def test_interrupt_waits_for_ready_for_interrupt_injection(scripted: Any, mocker: Any) -> None:
    rig, pic = scripted
    # Recorded, not performed: the scripted exits never run the guest to take them.
    inject = mocker.patch.object(rig.vcpu, "interrupt")
    pic.pending = [VECTOR, VECTOR + 1]
    windows: List[int] = []
    original = rig.vcpu.run

    def run() -> Any:
        windows.append(rig.vcpu.kvm_run.request_interrupt_window)
        return original()

    mocker.patch.object(rig.vcpu, "run", side_effect=run)
    enter(rig, ready=0)
    inject.assert_not_called()
    enter(rig, ready=1, if_flag=0)
    inject.assert_not_called()
    enter(rig, ready=1)
    inject.assert_called_once_with(VECTOR)
    enter(rig, ready=1)
    assert [c.args for c in inject.call_args_list] == [(VECTOR,), (VECTOR + 1,)]
    enter(rig, ready=1)  # nothing left: the window request is withdrawn
    # The request seen by each KVM_RUN: window, window, window (one more is
    # pending after the first injection), none, none.
    assert windows == [1, 1, 1, 0, 0]
    assert rig.stats()["numInterrupts"] == 2
    assert pic.acked == [VECTOR, VECTOR + 1]


def test_no_injection_with_an_in_kernel_irqchip(scripted: Any, mocker: Any) -> None:
    rig, pic = scripted
    inject = mocker.spy(rig.vcpu, "interrupt")
    rig.vm.has_irqchip = True
    pic.pending = [VECTOR]
    enter(rig, ready=1)
    inject.assert_not_called()
    assert pic.pending == [VECTOR]


def test_no_injection_while_draining(scripted: Any, mocker: Any) -> None:
    rig, pic = scripted
    inject = mocker.spy(rig.vcpu, "interrupt")
    pic.pending = [VECTOR]
    rig.vcpu.kvm_run.request_interrupt_window = 1
    rig.cpu.drain_state = DrainState.Draining
    try:
        enter(rig, ready=1)
    finally:
        rig.cpu.drain_state = DrainState.Running
    inject.assert_not_called()
    assert rig.vcpu.kvm_run.request_interrupt_window == 1  # kvmRunDrain's request is kept


def test_nmi_is_injected_at_the_next_entry(scripted: Any, mocker: Any) -> None:
    rig, _ = scripted
    nmi = mocker.spy(rig.vcpu, "nmi")
    rig.cpu.post_nmi()
    assert rig.cpu.pending_nmi
    enter(rig, ready=0)
    nmi.assert_called_once_with()
    assert not rig.cpu.pending_nmi
    assert rig.stats()["numInterrupts"] == 1


def test_hlt_with_an_interrupt_pending_does_not_suspend(scripted: Any) -> None:
    rig, pic = scripted
    pic.pending = [VECTOR]
    rig.vcpu.script_exit(ExitReason.HLT)
    rig.simulate(20_000)
    assert rig.cpu.thread_status is ThreadStatus.Active
    assert rig.stats()["numHalt"] == 1


# ------------------------------------------------------------------ real guests
def test_hlt_with_if_set_wakes_on_an_interrupt(make_rig: Any, backend_name: str,
                                               mocker: Any) -> None:
    rig, pic, ports = irq_rig(make_rig, backend_name)
    raised: List[int] = []

    def raise_irq() -> None:
        raised.append(rig.queue.cur_tick)
        pic.pending.append(VECTOR)
        rig.cpu.wakeup()

    event = EventFunctionWrapper(raise_irq, "raise")

    def on_halt() -> None:
        if not event.scheduled() and not raised:
            rig.queue.schedule(event, rig.queue.cur_tick + 5_000)

    rig.cpu.on_halt = on_halt
    rig.start()
    rig.simulate(10**13)  # ends when the guest halts for good (the queue runs dry)
    assert raised, "the guest never halted"
    writes = [(t, o, v) for t, k, o, s, v in ports.log if k == "w"]
    # OUT 0x12 (1), the handler's OUT 0x10 (0x99) after the wake-up, OUT 0x11 (0x99).
    assert [(o, v) for _, o, v in writes] == [(2, 1), (0, 0x99), (1, 0x99)]
    assert writes[1][0] >= raised[0]
    assert pic.acked == [VECTOR]
    assert rig.cpu.thread_status is ThreadStatus.Suspended  # the final cli; hlt
    stats = rig.stats()
    assert stats["numHalt"] == 2 and stats["numInterrupts"] == 1
    tc = rig.cpu.getContext()
    assert not tc.rflags & 0x200
    assert tc.rip == ENTRY + 0x1C


def test_interrupt_raised_with_if_clear_waits_for_the_window(make_rig: Any, backend_name: str,
                                                             mocker: Any) -> None:
    rig, pic, ports = irq_rig(make_rig, backend_name)
    original = ports.write

    def write(offset: int, size: int, value: int) -> None:
        original(offset, size, value)
        if offset == 2:  # OUT 0x12, with IF clear
            pic.pending.append(VECTOR)

    ports.write = write  # type: ignore[method-assign]
    injected: List[Tuple[int, int]] = []
    inject = rig.cpu.kvmInterrupt

    def kvm_interrupt(vector: int) -> None:
        run = rig.vcpu.kvm_run
        injected.append((run.ready_for_interrupt_injection, run.if_flag))
        inject(vector)

    mocker.patch.object(rig.cpu, "kvmInterrupt", side_effect=kvm_interrupt)
    entries: List[Tuple[int, int, bool]] = []
    vcpu_run = None

    def run() -> Any:
        run = rig.vcpu.kvm_run
        entries.append((run.request_interrupt_window, run.if_flag, pic.has_pending()))
        assert vcpu_run is not None
        return vcpu_run()

    rig.start()
    vcpu_run = rig.vcpu.run
    mocker.patch.object(rig.vcpu, "run", side_effect=run)
    rig.simulate(10**13)  # ends when the guest halts for good (the queue runs dry)
    assert injected == [(1, 1)]  # only once the guest could take it
    # While it was pending with IF clear, the CPU asked KVM for an interrupt window.
    assert (1, 0, True) in entries
    # Taken at the HLT that follows STI (HLT runs in STI's interrupt shadow and
    # exits first; the handler returns past it): OUT 0x10, then OUT 0x11.
    assert [(o, v) for _, k, o, s, v in ports.log if k == "w"] == [(2, 1), (0, 0x99),
                                                                     (1, 0x99)]
    assert rig.cpu.thread_status is ThreadStatus.Suspended
    assert rig.stats()["numHalt"] == 2
