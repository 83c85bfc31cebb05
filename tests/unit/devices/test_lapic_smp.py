"""Several local APICs on one ApicBus: every CPU sees its own APIC at the one xAPIC
page (the access's requestor picks it), and IPIs reach the APIC they name."""

from __future__ import annotations

from typing import List

from kvmcpu.devices.lapic import ApicBus, LocalApic
from kvmcpu.sim.eventq import EventQueue

REG_ID, REG_SVR, REG_ICR_LO, REG_ICR_HI = 0x20, 0xF0, 0x300, 0x310


class Cpu:
    def __init__(self, lapic: LocalApic) -> None:
        self.lapic = lapic
        self.events: List[str] = []
        lapic.attach_cpu(self)

    def post_nmi(self) -> None:
        self.events.append("nmi")

    def post_init(self) -> None:
        self.events.append("init")

    def post_sipi(self, vector: int) -> None:
        self.events.append(f"sipi {vector:#x}")

    def wakeup(self) -> None:
        self.events.append("wakeup")


def _two() -> List[LocalApic]:
    q = EventQueue()
    bus = ApicBus()
    apics = [LocalApic(f"lapic{i}", apic_id=i, bsp=i == 0, queue=q) for i in range(2)]
    for a in apics:
        bus.attach(a)
    return apics


def test_the_page_reaches_the_requesting_cpus_apic() -> None:
    apics = _two()
    cpus = [Cpu(a) for a in apics]
    page = apics[0]  # the one mapped on the MMIO bus
    assert page.read(REG_ID, 4, requestor=cpus[0]) == 0 << 24
    assert page.read(REG_ID, 4, requestor=cpus[1]) == 1 << 24
    page.write(REG_SVR, 4, 0x1FF, requestor=cpus[1])
    assert apics[1].svr == 0x1FF and apics[0].svr == 0xFF
    assert page.read(REG_ID, 4) == 0  # no requestor: the page's own APIC


def test_init_sipi_from_the_bsp_reaches_the_ap_only() -> None:
    apics = _two()
    cpus = [Cpu(a) for a in apics]
    page = apics[0]
    page.write(REG_ICR_HI, 4, 1 << 24, requestor=cpus[0])
    page.write(REG_ICR_LO, 4, 0x4500, requestor=cpus[0])  # INIT, assert
    page.write(REG_ICR_LO, 4, 0x4608, requestor=cpus[0])  # STARTUP, vector 8
    assert cpus[1].events == ["init", "sipi 0x8"]
    assert cpus[0].events == []
    page.write(REG_ICR_LO, 4, (3 << 18) | 0x400, requestor=cpus[1])  # NMI, all but self
    assert cpus[0].events == ["nmi"]
