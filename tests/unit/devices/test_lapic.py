"""The user-space local APIC against the SDM's rules (vol. 3, ch. 11)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Tuple

import pytest

from kvmcpu.devices import ApicInterrupts, PicPair
from kvmcpu.devices.lapic import (
    APIC_BASE_ENABLE,
    APIC_BASE_X2APIC,
    DEFAULT_APIC_BASE,
    MSR_IA32_TSC_DEADLINE,
    REG_EOI,
    REG_ICR_HI,
    REG_ICR_LO,
    REG_ISR,
    REG_LVT_ERROR,
    REG_LVT_LINT0,
    REG_LVT_TIMER,
    REG_PPR,
    REG_SVR,
    REG_TIMER_CCR,
    REG_TIMER_DCR,
    REG_TIMER_ICR,
    REG_TMR,
    REG_TPR,
    ApicBus,
    LocalApic,
    timer_divisor,
)
from kvmcpu.errors import GuestError
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut, write_checkpoint
from kvmcpu.sim.eventq import EventFunctionWrapper, EventQueue

NS = 1000  # ticks


class FakeCpu:
    """Records what the APIC asks of the CPU."""

    def __init__(self) -> None:
        self.calls: List[Tuple[str, int]] = []

    def post_nmi(self) -> None:
        self.calls.append(("nmi", 0))

    def post_init(self) -> None:
        self.calls.append(("init", 0))

    def post_sipi(self, vector: int) -> None:
        self.calls.append(("sipi", vector))

    def wakeup(self) -> None:
        self.calls.append(("wakeup", 0))


def advance(q: EventQueue, tick: int) -> None:
    """Run every event up to ``tick`` and stop the clock there."""
    q.schedule(EventFunctionWrapper(lambda: None, "stop"), tick)
    while q.cur_tick < tick or q.next_tick() <= tick:
        if q.service_one() is None:
            break


def make(apic_id: int = 0) -> Tuple[LocalApic, EventQueue, FakeCpu]:
    q = EventQueue("t")
    apic = LocalApic("lapic0", apic_id=apic_id, queue=q)
    cpu = FakeCpu()
    apic.attach_cpu(cpu)
    apic.write(REG_SVR, 4, 0x1FF)  # software enable, spurious vector 0xff
    return apic, q, cpu


def self_ipi(apic: LocalApic, vector: int) -> None:
    apic.write(REG_ICR_LO, 4, (1 << 18) | vector)  # shorthand self, fixed


def test_reset_state() -> None:
    apic = LocalApic("lapic0", queue=EventQueue("t"))
    assert apic.base_msr == DEFAULT_APIC_BASE | APIC_BASE_ENABLE | 0x100  # BSP
    assert apic.read(0x30, 4) == 0x50014
    assert apic.read(REG_SVR, 4) == 0xFF and not apic.sw_enabled
    assert apic.read(0xE0, 4) == 0xFFFFFFFF  # DFR: flat
    # LINT0 is ExtINT on the BSP (the 8259 goes through), the other LVTs are masked.
    assert apic.read(REG_LVT_LINT0, 4) == 0x700 and apic.accepts_pic()
    assert apic.read(REG_LVT_TIMER, 4) == 0x10000


def test_highest_vector_first_and_ppr_from_isr() -> None:
    apic, _, _ = make()
    self_ipi(apic, 0x41)
    self_ipi(apic, 0x63)
    self_ipi(apic, 0x52)
    assert apic.acknowledge() == 0x63
    assert apic.read(REG_PPR, 4) == 0x60
    # 0x52 is a lower class than the one in service: held until the EOI.
    assert not apic.has_pending()
    self_ipi(apic, 0x6F)  # same class as in service: held too
    assert not apic.has_pending()
    self_ipi(apic, 0x70)  # a higher class preempts
    assert apic.acknowledge() == 0x70
    apic.write(REG_EOI, 4, 0)  # ends 0x70, the highest in service
    assert apic.read(REG_ISR + 0x30, 4) == 1 << 3  # 0x63 still in service (ISR dword 3)
    apic.write(REG_EOI, 4, 0)
    assert apic.acknowledge() == 0x6F
    apic.write(REG_EOI, 4, 0)
    assert apic.acknowledge() == 0x52
    assert apic.acknowledge() == 0xFF  # 0x41 waits for 0x52's EOI: the spurious vector
    apic.write(REG_EOI, 4, 0)
    assert apic.acknowledge() == 0x41


def test_tpr_masks_classes_at_or_below_it() -> None:
    apic, _, cpu = make()
    apic.write(REG_TPR, 4, 0x55)
    self_ipi(apic, 0x5F)
    assert not apic.has_pending() and apic.read(REG_PPR, 4) == 0x55
    self_ipi(apic, 0x60)
    assert apic.acknowledge() == 0x60
    apic.write(REG_EOI, 4, 0)
    cpu.calls.clear()
    apic.write(REG_TPR, 4, 0x40)  # lowering the TPR releases 0x5f and wakes the CPU
    assert ("wakeup", 0) in cpu.calls
    assert apic.acknowledge() == 0x5F


def test_spurious_vector_when_nothing_is_deliverable() -> None:
    apic, _, _ = make()
    apic.write(REG_SVR, 4, 0x1EF)
    assert apic.acknowledge() == 0xEF


def test_software_disabled_holds_interrupts_and_masks_lvts() -> None:
    apic, _, _ = make()
    apic.write(REG_LVT_TIMER, 4, 0x30)
    apic.write(REG_SVR, 4, 0xFF)  # software disable
    assert apic.read(REG_LVT_TIMER, 4) == 0x10030
    apic.write(REG_LVT_TIMER, 4, 0x31)  # stays masked while disabled
    assert apic.read(REG_LVT_TIMER, 4) == 0x10031
    self_ipi(apic, 0x40)
    assert not apic.has_pending()
    apic.write(REG_SVR, 4, 0x1FF)
    assert apic.acknowledge() == 0x40


def test_illegal_vectors_set_esr_and_raise_the_error_lvt() -> None:
    apic, _, _ = make()
    apic.write(REG_LVT_ERROR, 4, 0xFE)
    self_ipi(apic, 0x05)  # vectors 0-15 are illegal
    apic.write(0x280, 4, 0)  # a write latches the ESR
    assert apic.read(0x280, 4) == 1 << 5  # send illegal vector
    assert apic.acknowledge() == 0xFE


def test_level_triggered_eoi_is_broadcast() -> None:
    apic, _, _ = make()
    seen: List[int] = []
    apic.eoi_listeners.append(seen.append)
    apic.accept_fixed(0x33, trigger_level=True)
    assert apic.read(REG_TMR + 0x10, 4) == 1 << 0x13
    assert apic.acknowledge() == 0x33
    apic.write(REG_EOI, 4, 0)
    apic.accept_fixed(0x34)  # edge: no broadcast
    apic.acknowledge()
    apic.write(REG_EOI, 4, 0)
    assert seen == [0x33]


@pytest.mark.parametrize("dfr,ldr,dest,hit", [
    (0xFFFFFFFF, 0x01000000, 0x01, True),    # flat: bit mask
    (0xFFFFFFFF, 0x02000000, 0x05, False),
    (0xFFFFFFFF, 0x02000000, 0xFF, True),    # broadcast
    (0x0FFFFFFF, 0x21000000, 0x21, True),    # cluster 2, member 1
    (0x0FFFFFFF, 0x21000000, 0x31, False),   # another cluster
    (0x0FFFFFFF, 0x22000000, 0x2D, False),   # right cluster, other members
    (0x0FFFFFFF, 0x24000000, 0xF4, True),    # cluster 15: every cluster
])
def test_logical_destinations(dfr: int, ldr: int, dest: int, hit: bool) -> None:
    apic, _, _ = make()
    apic.write(0xE0, 4, dfr)
    apic.write(0xD0, 4, ldr)
    assert apic.matches(dest, logical=True) is hit


def test_physical_destinations_and_ipis_on_the_bus() -> None:
    bus = ApicBus()
    apic, _, _ = make(apic_id=3)
    bus.attach(apic)
    assert apic.matches(3, logical=False) and apic.matches(0xFF, logical=False)
    assert not apic.matches(2, logical=False)
    apic.write(REG_ICR_HI, 4, 2 << 24)
    apic.write(REG_ICR_LO, 4, 0x45)  # fixed to APIC 2: nobody
    assert not apic.has_pending()
    apic.write(REG_ICR_HI, 4, 3 << 24)
    apic.write(REG_ICR_LO, 4, 0x145)  # lowest priority to APIC 3
    assert apic.acknowledge() == 0x45
    apic.write(REG_ICR_LO, 4, (3 << 18) | 0x46)  # all excluding self
    assert not apic.irr
    apic.write(REG_ICR_LO, 4, (2 << 18) | 0x47)  # all including self
    assert apic.irr == 1 << 0x47
    assert apic.read(REG_ICR_LO, 4) & (1 << 12) == 0  # delivery status: idle


def test_nmi_init_startup_and_smi() -> None:
    apic, _, cpu = make()
    apic.write(REG_ICR_LO, 4, (1 << 18) | 0x400)  # NMI to self
    apic.write(REG_TPR, 4, 0x20)
    apic.write(REG_ICR_LO, 4, (1 << 18) | (1 << 14) | 0x500)  # INIT assert
    assert apic.tpr == 0 and not apic.sw_enabled  # the INIT reset
    apic.write(REG_ICR_LO, 4, (1 << 18) | (1 << 15) | 0x500)  # INIT de-assert: ignored
    apic.write(REG_ICR_LO, 4, (1 << 18) | 0x608)  # STARTUP, vector 8
    assert [c for c in cpu.calls if c[0] != "wakeup"] == [("nmi", 0), ("init", 0), ("sipi", 8)]
    with pytest.raises(GuestError, match="SMI"):
        apic.write(REG_ICR_LO, 4, (1 << 18) | 0x200)


def test_divide_configuration() -> None:
    assert [timer_divisor(v) for v in (0, 1, 2, 3, 8, 9, 0xA, 0xB)] == \
        [2, 4, 8, 16, 32, 64, 128, 1]


def test_one_shot_counts_down_and_fires_once() -> None:
    apic, q, _ = make()
    apic.write(REG_LVT_TIMER, 4, 0x30)
    apic.write(REG_TIMER_DCR, 4, 0x3)  # divide by 16
    apic.write(REG_TIMER_ICR, 4, 1000)  # 16,000 ns
    advance(q, 160 * NS)  # 10 counts of 16 ns
    assert apic.read(REG_TIMER_CCR, 4) == 990
    advance(q, 15_999 * NS)
    assert not apic.irr and apic.read(REG_TIMER_CCR, 4) == 1
    advance(q, 16_000 * NS)
    assert apic.irr == 1 << 0x30 and apic.read(REG_TIMER_CCR, 4) == 0
    apic.acknowledge()
    apic.write(REG_EOI, 4, 0)
    advance(q, 100_000 * NS)
    assert not apic.irr and apic.read(REG_TIMER_CCR, 4) == 0


def test_periodic_reloads_without_drift_and_masked_counts_on() -> None:
    apic, q, _ = make()
    apic.write(REG_LVT_TIMER, 4, (1 << 17) | 0x31)
    apic.write(REG_TIMER_DCR, 4, 0xB)  # divide by 1
    apic.write(REG_TIMER_ICR, 4, 500)
    fired: List[int] = []
    for period in range(1, 4):
        advance(q, period * 500 * NS)
        if apic.irr:
            fired.append(q.cur_tick)
            apic.acknowledge()
            apic.write(REG_EOI, 4, 0)
    assert fired == [500 * NS, 1000 * NS, 1500 * NS]
    advance(q, 1700 * NS)
    assert apic.read(REG_TIMER_CCR, 4) == 300
    apic.write(REG_LVT_TIMER, 4, (1 << 17) | LVT_MASKED_BIT | 0x31)
    advance(q, 2100 * NS)
    assert not apic.irr and apic.read(REG_TIMER_CCR, 4) == 400  # still counting
    apic.write(REG_TIMER_ICR, 4, 0)  # a zero count stops it
    assert apic.timer_next_tick == -1 and apic.read(REG_TIMER_CCR, 4) == 0


LVT_MASKED_BIT = 1 << 16


def test_tsc_deadline_mode() -> None:
    apic, q, _ = make()
    assert apic.tsc_hz == 10**9  # the default: simulated cycles of 1 ns
    apic.write_msr(MSR_IA32_TSC_DEADLINE, 500)  # ignored outside TSC-deadline mode
    assert apic.tsc_deadline == 0
    apic.write(REG_LVT_TIMER, 4, (2 << 17) | 0x32)
    apic.write(REG_TIMER_ICR, 4, 1234)  # ignored in TSC-deadline mode
    assert apic.read(REG_TIMER_ICR, 4) == 0
    apic.write_msr(MSR_IA32_TSC_DEADLINE, 2000)
    advance(q, 1999 * NS)
    assert not apic.irr and apic.read_msr(MSR_IA32_TSC_DEADLINE) == 2000
    advance(q, 2000 * NS)
    assert apic.irr == 1 << 0x32 and apic.read_msr(MSR_IA32_TSC_DEADLINE) == 0
    apic.write_msr(MSR_IA32_TSC_DEADLINE, 1)  # in the past: fires at once
    advance(q, 2000 * NS)
    assert apic.timer_next_tick == -1
    # Another TSC source (KVM's guest TSC): 2.5 GHz, reading 10,000 now.
    apic.set_tsc_source(lambda: 10_000, 2_500_000_000)
    apic.write_msr(MSR_IA32_TSC_DEADLINE, 12_500)  # 2,500 cycles = 1 us from now
    assert apic.timer_next_tick == q.cur_tick + 1000 * NS
    with pytest.raises(ValueError, match="positive"):
        apic.set_tsc_source(lambda: 0, 0)


def test_x2apic_msrs() -> None:
    apic, _, _ = make(apic_id=0x13)
    with pytest.raises(GuestError, match="outside x2APIC mode"):
        apic.read_msr(0x802)
    remaps: List[Tuple[object, object]] = []
    apic.on_remap = lambda old, new: remaps.append((old, new))
    apic.write_msr(0x1B, apic.base_msr | APIC_BASE_X2APIC)
    assert remaps == [(DEFAULT_APIC_BASE, None)]  # no xAPIC page in x2APIC mode
    assert apic.read_msr(0x802) == 0x13  # the full 32-bit ID
    assert apic.read_msr(0x80D) == (1 << 16) | (1 << 3)  # LDR from the ID
    apic.write_msr(0x83F, 0x44)  # SELF IPI
    assert apic.acknowledge() == 0x44
    apic.write_msr(0x80B, 0)  # EOI
    apic.write_msr(0x830, (0x13 << 32) | 0x45)  # ICR (one 64-bit MSR) to ourselves
    assert apic.acknowledge() == 0x45


def test_relocation_and_global_disable() -> None:
    apic, _, _ = make()
    remaps: List[Tuple[object, object]] = []
    apic.on_remap = lambda old, new: remaps.append((old, new))
    apic.set_base(0xFED00000 | APIC_BASE_ENABLE)
    self_ipi(apic, 0x40)
    apic.set_base(0xFED00000)  # global disable: reset, the 8259 goes straight to the CPU
    assert remaps == [(DEFAULT_APIC_BASE, 0xFED00000), (0xFED00000, None)]
    assert not apic.irr and apic.accepts_pic() and not apic.has_pending()


def test_apic_first_then_extint_through_lint0() -> None:
    apic, _, _ = make()
    pic = PicPair("pic")
    for port, value in ((0, 0x11), (1, 0x20), (1, 4), (1, 1), (1, 0xFE)):
        pic.master.write(port, 1, value)
    src = ApicInterrupts(apic, pic)
    pic.set_irq(0, True)
    self_ipi(apic, 0x80)
    assert src.has_pending() and src.acknowledge() == 0x80
    assert src.acknowledge() == 0x20  # then the 8259's vector (ExtINT ignores the PPR)
    pic.set_irq(0, False)
    pic.master.write(0, 1, 0x20)
    apic.write(REG_LVT_LINT0, 4, 0x10700)  # mask LINT0: the 8259 no longer reaches the CPU
    pic.set_irq(0, True)
    apic.write(REG_EOI, 4, 0)
    assert not src.has_pending()


def test_checkpoint_keeps_registers_and_the_timer(tmp_path: object) -> None:
    apic, q, _ = make()
    apic.write(REG_LVT_TIMER, 4, (1 << 17) | 0x31)
    apic.write(REG_TIMER_DCR, 4, 0xB)
    apic.write(REG_TIMER_ICR, 4, 700)
    self_ipi(apic, 0x90)
    apic.acknowledge()
    advance(q, 200 * NS)
    cp = CheckpointOut()
    with cp.subsection("lapic"):
        apic.serialize(cp)
    path = write_checkpoint(Path(str(tmp_path)) / "cpt", cp)
    q2 = EventQueue("t2")
    q2.set_cur_tick(200 * NS)
    other = LocalApic("lapic0", queue=q2)
    cin = CheckpointIn.load(path)
    with cin.subsection("lapic"):
        other.unserialize(cin)
    assert other.isr == 1 << 0x90 and other.read(REG_TIMER_CCR, 4) == 500
    advance(q2, 700 * NS)
    assert other.irr == 1 << 0x31
