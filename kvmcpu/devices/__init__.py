"""The PC platform's devices and :func:`pc_devices`, which wires the default set.

Every device implements the bus interface documented in
:mod:`kvmcpu.devices.base` (``read(offset, size)`` / ``write(offset, size,
value)``) and checkpoints its state with ``serialize(cp)`` / ``unserialize(cp)``.

Default PC layout (what :func:`pc_devices` maps):

==========  ============  =========================================  =======
bus         range         device                                     IRQ
==========  ============  =========================================  =======
io          0x20-0x21     8259A master (:class:`PicPair`)
io          0x40-0x43     8254 PIT (:class:`Pit`)                    0
io          0x60, 0x64    8042 keyboard controller (:class:`I8042`)
io          0x70-0x71     CMOS RTC/NVRAM (:class:`Cmos`)             8
io          0x80          POST code (:class:`PostCard`)
io          0xa0-0xa1     8259A slave
io          0xf4-0xf7     isa-debug-exit (:class:`DebugExit`)
io          0x3f8-0x3ff   16550A COM1 (:class:`Uart16550`)           4
io          0x4d0-0x4d1   PIIX3 ELCR, edge/level of IRQ 0-15
                          (:class:`Elcr`; 10 and 11 level at start)
io          0x510-0x511   fw_cfg (:class:`FwCfg`)
io          0x600-0x63f   PIIX4 PM: PM1, PM timer (:class:`AcpiPm`)  9 (SCI)
io          0xcf8-0xcff   PCI config mechanism #1 (:class:`PciHost`);
                          0xcf9: the PIIX3 reset control register
io          0xafe0-0xafe3 PIIX4 GPE0 (:class:`Gpe0Block`)            9 (SCI)
io          0xc000-       PCI IO BARs (assigned at start)
mmio        0xc0000000-   PCI memory BARs (assigned at start)
mmio        0xfec00000    IOAPIC, 24 pins (:class:`IoApic`)
mmio        0xfed00000    HPET, 3 timers (:class:`Hpet`)             0, 8, GSI
mmio        0xfee00000    local APIC page, relocatable (:class:`LocalApic`)
mmio        0xffff0000    gem5 m5ops page, 64 KiB (:class:`M5Ops`)
==========  ============  =========================================  =======

PCI bus 0 (:class:`PciBus`): 00.0 i440FX, 01.0 PIIX3, 01.3 PIIX4 PM, and any
``pci-testdev`` from 02.0 on. ``devices`` adds QEMU's test devices
(:mod:`kvmcpu.devices.testdevs`): ``isa-debug-exit,iobase=,iosize=`` (instead
of the one at 0xf4), ``pc-testdev`` (0xe0-0xeb, 0x2000-0x2017, mmio
0xff000000), ``pci-testdev``. ``hpet=False`` leaves the HPET out.

The IOAPIC and the local APIC are the user-space interrupt architecture
(``apic=True``): every ISA IRQ then goes to the 8259 pair and to the IOAPIC
(:class:`IsaIrqRouter`: IRQ 0 to pin 2, the others to the pin of their number),
and the 8259's INTR reaches the CPU as ExtINT through the local APIC's LINT0.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterator, List, Sequence, Tuple

from kvmcpu.devices import pc_layout
from kvmcpu.devices.acpi_pm import AcpiPm, Gpe0Block
from kvmcpu.devices.base import BusDevice, Device, size_mask
from kvmcpu.devices.cmos import CMOS_PORT, RTC_IRQ, Cmos
from kvmcpu.devices.debug_exit import DEBUG_EXIT_CAUSE, DEBUG_EXIT_PORT, DebugExit
from kvmcpu.devices.fw_cfg import FW_CFG_PORT, FwCfg
from kvmcpu.devices.hpet import Hpet, LegacyGate
from kvmcpu.devices.i8042 import I8042, I8042_DATA_PORT, I8042_STATUS_PORT
from kvmcpu.devices.ioapic import (
    IOAPIC_BASE,
    IOAPIC_SIZE,
    IoApic,
    IsaIrqRouter,
    MsiSink,
    RoutesSink,
)
from kvmcpu.devices.irq import InterruptController, IrqLine, KernelIrqChip
from kvmcpu.devices.lapic import ApicBus, ApicInterrupts, LocalApic
from kvmcpu.devices.m5ops import M5OP_ADDR, M5OP_SIZE, M5Ops, M5OpsHandler
from kvmcpu.devices.pci import (
    PCI_CONFIG_ADDRESS,
    PciBus,
    PciFunction,
    PciHost,
    i440fx,
    piix3,
    piix4_pm,
)
from kvmcpu.devices.pic import ELCR_PORT, I8259, MASTER_PORT, SLAVE_PORT, Elcr, PicPair
from kvmcpu.devices.pit import PIT_PORT, Pit
from kvmcpu.devices.post import POST_PORT, PostCard
from kvmcpu.devices.testdevs import DeviceSpec, PciTestDev, PcTestDev
from kvmcpu.devices.uart import COM1_IRQ, COM1_PORT, Sink, Uart16550
from kvmcpu.sim.eventq import main_queue

if TYPE_CHECKING:
    from kvmcpu.mem.bus import Bus
    from kvmcpu.mem.physmem import PhysicalMemory
    from kvmcpu.sim.eventq import EventQueue

__all__ = [
    "DEBUG_EXIT_CAUSE",
    "AcpiPm",
    "ApicBus",
    "ApicInterrupts",
    "BusDevice",
    "Cmos",
    "DebugExit",
    "Device",
    "FwCfg",
    "Gpe0Block",
    "Hpet",
    "I8042",
    "I8259",
    "InterruptController",
    "IoApic",
    "IrqLine",
    "IsaIrqRouter",
    "KernelIrqChip",
    "LocalApic",
    "M5Ops",
    "M5OpsHandler",
    "PcDevices",
    "PcTestDev",
    "PciBus",
    "PciFunction",
    "PciTestDev",
    "PciHost",
    "PicPair",
    "Pit",
    "PostCard",
    "Uart16550",
    "e820_file",
    "pc_devices",
    "size_mask",
]


def e820_file(memory: PhysicalMemory) -> bytes:
    """QEMU's fw_cfg ``etc/e820`` table: per entry le64 address, le64 length, le32 type."""
    return b"".join(struct.pack("<QQI", e.addr, e.size, e.type) for e in memory.e820())


@dataclass
class PcDevices:
    """The devices :func:`pc_devices` created (``pic``/``pit`` are None when left out)."""

    uart: Uart16550
    debug_exit: DebugExit
    fw_cfg: FwCfg
    pci: PciHost
    post: PostCard
    cmos: Cmos
    m5ops: M5Ops
    pic: PicPair | None
    pit: Pit | None
    #: Where device interrupts go: the PIC pair, the ISA router, or the controller passed in.
    irqchip: InterruptController
    #: The user-space IOAPIC and the BSP's local APIC (None without ``apic``).
    ioapic: IoApic | None = None
    lapic: LocalApic | None = None
    #: The PIIX4 PM function's IO blocks and the keyboard controller.
    acpi_pm: AcpiPm | None = None
    gpe0: Gpe0Block | None = None
    i8042: I8042 | None = None
    #: The HPET (None when left out: ``pc_devices(hpet=False)``).
    hpet: Hpet | None = None
    #: PCI bus 0 (the host bridge, PIIX3, PIIX4 PM and any pci-testdev).
    pci_bus: PciBus | None = None
    #: --device pc-testdev (None without).
    pc_testdev: PcTestDev | None = None
    #: Every CPU's local APIC, by CPU index (APIC ID = index; empty without ``apic``).
    lapics: List[LocalApic] = field(default_factory=list)

    @property
    def interrupts(self) -> object:
        """What the BSP asks for interrupts: the APIC (with the PIC behind
        LINT0), the PIC pair alone, or None (an in-kernel irqchip)."""
        return self.interrupts_for(0)

    def interrupts_for(self, cpu: int) -> object:
        """What CPU ``cpu`` asks for interrupts (its own local APIC, the PIC behind
        its LINT0); without user-space APICs the PIC pair (BSP) or None."""
        if self.lapics:
            return ApicInterrupts(self.lapics[cpu], self.pic)
        if self.lapic is not None:
            return ApicInterrupts(self.lapic, self.pic)
        return self.pic if cpu == 0 else None

    def named(self) -> Iterator[Tuple[str, object]]:
        """(name, device) for every device present, in a stable order (for checkpoints):
        the BSP's APIC is ``lapic`` (as with one CPU), the APs' ``lapic1``, ``lapic2``..."""
        for name in ("uart", "debug_exit", "fw_cfg", "pci", "post", "cmos", "m5ops", "pic",
                     "pit", "ioapic", "lapic", "acpi_pm", "gpe0", "i8042", "hpet", "pc_testdev"):
            dev = getattr(self, name)
            if dev is not None:
                yield name, dev
        for index, apic in enumerate(self.lapics[1:], start=1):
            yield f"lapic{index}", apic

    def all(self) -> List[object]:
        return [dev for _, dev in self.named()]


def pc_devices(
    io: Bus,
    mmio: Bus,
    *,
    memory: PhysicalMemory | None = None,
    nb_cpus: int = 1,
    uart_sink: Sink = None,
    uart_input: bytes = b"",
    on_exit: Callable[[int, str], object] | None = None,
    m5_handler: M5OpsHandler | None = None,
    irqchip: InterruptController | None = None,
    pit: bool = True,
    queue: EventQueue | None = None,
    clock: Callable[[], float] | None = None,
    on_interrupt: Callable[[bool], None] | None = None,
    apic: bool = False,
    tsc_period: int = 1000,
    on_sleep: Callable[[int], object] | None = None,
    on_reset: Callable[[], object] | None = None,
    hpet: bool = True,
    devices: Sequence[DeviceSpec] = (),
    msi: MsiSink | None = None,
    on_routes: RoutesSink | None = None,
) -> PcDevices:
    """Create the default PC devices and map them on ``io`` and ``mmio``.

    Args:
        io: the IO-port bus.
        mmio: the MMIO bus.
        memory: guest RAM (fw_cfg RAM size and ``etc/e820``, CMOS memory bytes).
        nb_cpus: CPUs: reported by fw_cfg, and one local APIC each with ``apic``
            (APIC IDs 0..nb_cpus-1, the first the BSP).
        uart_sink: where COM1 output goes besides ``uart.output``.
        uart_input: bytes COM1 will receive.
        on_exit: isa-debug-exit's ``on_exit(status, cause)``.
        m5_handler: receives m5ops (exit, stats, checkpoint, work items).
        irqchip: an external interrupt controller (e.g. :class:`KernelIrqChip`
            for KVM's in-kernel irqchip); None creates the userspace 8259A pair.
        pit: create the 8254 PIT (leave it out when KVM's in-kernel PIT is used).
        queue: the event queue the PIT schedules on (default: the main queue).
        clock: the CMOS clock (seconds since the epoch); default host time.
        on_interrupt: the PIC pair's INTR output callback (see :class:`PicPair`).
        apic: add the user-space IOAPIC and local APIC (with the PIC; not with an
            external ``irqchip``).
        tsc_period: ticks per guest TSC cycle (the local APIC's TSC-deadline mode).
        on_sleep: the PM function's ``on_sleep(state)`` (3: S3, 5: S5 soft-off).
        on_reset: called on a platform reset request (0xcf9, the 8042's pulse).
        hpet: map the HPET at pc_layout.HPET_BASE (its legacy replacement route
            then gates the PIT's and the RTC's interrupts).
        devices: QEMU's test devices to add, parsed by
            :func:`kvmcpu.devices.testdevs.device_spec` (``--device``).
        msi: with ``apic``, the local APICs are KVM's (irqchip "split"): no
            user-space LocalApic, and the IOAPIC sends its messages as MSIs
            through ``msi(address, data)`` (and its routes to ``on_routes``).
    """
    if apic and irqchip is not None:
        raise ValueError("pc_devices: apic=True needs the user-space PIC (irqchip=None)")
    ram_size = memory.ram_size if memory is not None else 0
    below = memory.below_hole if memory is not None else 0
    above = memory.above_hole if memory is not None else 0

    pic: PicPair | None = None
    if irqchip is None:
        # The ELCR as SeaBIOS leaves it: the PCI interrupt lines level-triggered.
        pic = PicPair("pic", on_output=on_interrupt,
                      elcr=sum(1 << irq for irq in set(pc_layout.PCI_PIRQ_IRQS)))
        irqchip = pic
        io.add(MASTER_PORT, 2, pic.master, name="pic.master")
        io.add(SLAVE_PORT, 2, pic.slave, name="pic.slave")
        io.add(ELCR_PORT, 2, Elcr(pic), name="elcr")

    ioapic: IoApic | None = None
    lapic: LocalApic | None = None
    lapics: List[LocalApic] = []
    if apic and msi is not None:
        ioapic = IoApic("ioapic", msi=msi, on_routes=on_routes)
        mmio.add(IOAPIC_BASE, IOAPIC_SIZE, ioapic)
        irqchip = IsaIrqRouter(pic, ioapic)
    elif apic:
        apic_bus = ApicBus()
        for index in range(nb_cpus):
            apic_dev = LocalApic(f"lapic{index}", apic_id=index, bsp=index == 0,
                                 queue=main_queue if queue is None else queue,
                                 tsc_period=tsc_period)
            apic_bus.attach(apic_dev)
            lapics.append(apic_dev)
        lapic = lapics[0]
        ioapic = IoApic("ioapic", bus=apic_bus)
        for apic_dev in lapics:
            ioapic.connect_eoi(apic_dev)
        mmio.add(IOAPIC_BASE, IOAPIC_SIZE, ioapic)
        # One page on the bus (the BSP's); an access reaches the requesting CPU's own
        # APIC (LocalApic.read/write forward by requestor), as each CPU sees its own.
        lapic.on_remap = _lapic_remapper(mmio, lapic)
        base = lapic.base_address
        if base is not None:
            mmio.add(base, 0x1000, lapic, name="lapic0")
        irqchip = IsaIrqRouter(pic, ioapic)

    gate = LegacyGate(irqchip) if hpet else None
    legacy: InterruptController = irqchip if gate is None else gate
    pit_dev: Pit | None = None
    if pit:
        pit_dev = Pit("pit", irq=IrqLine(legacy, 0), queue=queue)
        io.add(PIT_PORT, 4, pit_dev)

    uart = Uart16550("uart0", sink=uart_sink, irq=IrqLine(irqchip, COM1_IRQ), input=uart_input)
    io.add(COM1_PORT, 8, uart)
    debug_exit = DebugExit("debug_exit", on_exit=on_exit)
    exit_range = (DEBUG_EXIT_PORT, 4)
    for name, keys in devices:
        if name == "isa-debug-exit":
            exit_range = (keys.get("iobase", 0x501), keys.get("iosize", 2))
    io.add(exit_range[0], exit_range[1], debug_exit)
    fw_cfg = FwCfg("fw_cfg", ram_size=ram_size, nb_cpus=nb_cpus)
    if memory is not None:
        fw_cfg.add_file("etc/e820", e820_file(memory))
    io.add(FW_CFG_PORT, 2, fw_cfg)
    acpi_pm = AcpiPm("acpi_pm", sci=IrqLine(irqchip, pc_layout.SCI_IRQ), queue=queue,
                     on_sleep=on_sleep)
    pci_bus = PciBus(io, mmio, irqchip)
    pci_bus.add(i440fx(), pc_layout.HOST_BRIDGE_DEVFN)
    pci_bus.add(piix3(), pc_layout.ISA_BRIDGE_DEVFN)
    pci_bus.add(piix4_pm(acpi_pm, io), pc_layout.PIIX4_PM_DEVFN)
    for n, (_, keys) in enumerate(d for d in devices if d[0] == "pci-testdev"):
        addr = keys.get("addr")
        devfn = (pci_bus.free_slot(2), 0) if addr is None else (addr >> 3, addr & 7)
        pci_bus.add(PciTestDev(f"pci_testdev{n}" if n else "pci_testdev"), devfn)
    pci_bus.firmware_setup()  # BARs, PIRQs and the PM base as SeaBIOS leaves them
    pci = PciHost("pci", bus=pci_bus, on_reset=on_reset)
    io.add(PCI_CONFIG_ADDRESS, 8, pci)
    gpe0 = Gpe0Block("gpe0", pm=acpi_pm)
    io.add(pc_layout.GPE0_BLK, pc_layout.GPE0_LEN, gpe0)
    i8042 = I8042("i8042", on_reset=on_reset)
    io.add(I8042_DATA_PORT, 1, i8042)
    io.add(I8042_STATUS_PORT, 1, i8042.command_port)
    post = PostCard("post")
    io.add(POST_PORT, 1, post)
    cmos = Cmos("cmos", ram_below_4g=below, ram_above_4g=above, clock=clock, queue=queue,
                irq=IrqLine(legacy, RTC_IRQ))
    io.add(CMOS_PORT, 2, cmos)
    hpet_dev: Hpet | None = None
    if hpet:
        hpet_dev = Hpet("hpet", irqchip=irqchip, queue=queue, legacy_gate=gate)
        mmio.add(pc_layout.HPET_BASE, pc_layout.HPET_SIZE, hpet_dev)
    pc_testdev: PcTestDev | None = None
    if any(name == "pc-testdev" for name, _ in devices):
        pc_testdev = PcTestDev("pc_testdev", irqchip=irqchip)
        pc_testdev.map(io, mmio)
    m5ops = M5Ops("m5ops", handler=m5_handler)
    mmio.add(M5OP_ADDR, M5OP_SIZE, m5ops)
    return PcDevices(uart=uart, debug_exit=debug_exit, fw_cfg=fw_cfg, pci=pci, post=post,
                     cmos=cmos, m5ops=m5ops, pic=pic, pit=pit_dev, irqchip=irqchip,
                     ioapic=ioapic, lapic=lapic, acpi_pm=acpi_pm, gpe0=gpe0, i8042=i8042,
                     hpet=hpet_dev, pci_bus=pci_bus, pc_testdev=pc_testdev, lapics=lapics)


def _lapic_remapper(mmio: Bus, lapic: LocalApic) -> Callable[[int | None, int | None], None]:
    """Move the local APIC's page on ``mmio`` when IA32_APIC_BASE moves or disables it."""
    def remap(old: int | None, new: int | None) -> None:
        if old is not None:
            mmio.remove(lapic)
        if new is not None:
            mmio.add(new, 0x1000, lapic, name=lapic.name)
    return remap
