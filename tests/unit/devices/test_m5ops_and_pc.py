"""m5ops dispatch through the MMIO bus, pc_devices wiring, device checkpoints."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator, List, Tuple

import pytest

from kvmcpu.devices import KernelIrqChip, M5Ops, pc_devices
from kvmcpu.devices.m5ops import M5OP_ADDR, m5op_offset
from kvmcpu.mem import IoBus, MmioBus, PhysicalMemory
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut, write_checkpoint
from kvmcpu.sim.eventq import EventQueue


class FakeCpu:
    """The requestor: the guest's argument registers."""

    def __init__(self, *args: int) -> None:
        self.args = list(args)

    def m5op_args(self, n: int) -> List[int]:
        return self.args[:n]


class Handler:
    def __init__(self) -> None:
        self.calls: List[Tuple[Any, ...]] = []

    def m5_exit(self, code: int, delay: int) -> None:
        self.calls.append(("exit", code, delay))

    def m5_dump_stats(self, delay: int, period: int) -> None:
        self.calls.append(("dump", delay, period))

    def m5_reset_stats(self, delay: int, period: int) -> None:
        self.calls.append(("reset", delay, period))

    def m5_checkpoint(self, delay: int, period: int) -> int:
        self.calls.append(("checkpoint", delay, period))
        return 0x1234

    def m5_work_begin(self, work_id: int, thread_id: int) -> None:
        self.calls.append(("work_begin", work_id, thread_id))

    def m5_work_end(self, work_id: int, thread_id: int) -> None:
        self.calls.append(("work_end", work_id, thread_id))


@pytest.fixture
def m5() -> Tuple[MmioBus, Handler]:
    bus = MmioBus()
    h = Handler()
    bus.add(M5OP_ADDR, 0x10000, M5Ops(handler=h))
    return bus, h


def call(bus: MmioBus, func: int, *args: int) -> int:
    return bus.read(M5OP_ADDR + m5op_offset(func), 8, requestor=FakeCpu(*args))


def test_m5ops_dispatch(m5: Tuple[MmioBus, Handler]) -> None:
    bus, h = m5
    assert call(bus, 0x21, 100) == 0
    call(bus, 0x22, 5, 3)  # m5_fail(delay, code)
    call(bus, 0x40, 1, 2)
    call(bus, 0x41, 3, 4)
    call(bus, 0x42, 0, 0)  # dump + reset when the handler has no dump_reset
    assert call(bus, 0x43, 7, 8) == 0x1234  # result in rax
    call(bus, 0x5A, 1, 2)
    call(bus, 0x5B, 1, 2)
    assert h.calls == [
        ("exit", 0, 100), ("exit", 3, 5), ("reset", 1, 2), ("dump", 3, 4), ("dump", 0, 0),
        ("reset", 0, 0), ("checkpoint", 7, 8), ("work_begin", 1, 2), ("work_end", 1, 2),
    ]
    bus.write(M5OP_ADDR + m5op_offset(0x21), 8, 0, requestor=FakeCpu(9))  # writes dispatch too
    assert h.calls[-1] == ("exit", 0, 9)
    # Only bits 8-15 of the offset select the function.
    bus.read(M5OP_ADDR + m5op_offset(0x41) + 0x10, 4, requestor=FakeCpu(1, 1))
    assert h.calls[-1] == ("dump", 1, 1)


def test_m5ops_unknown_function_and_missing_requestor(
        m5: Tuple[MmioBus, Handler], caplog: pytest.LogCaptureFixture) -> None:
    bus, h = m5
    with caplog.at_level(logging.WARNING, logger="kvmcpu.devices.m5ops"):
        assert call(bus, 0x99) == 0
        assert call(bus, 0x99) == 0
    assert len([r for r in caplog.records if "0x99" in r.getMessage()]) == 1
    bus.read(M5OP_ADDR + m5op_offset(0x21), 8)  # no requestor: arguments read as 0
    assert h.calls == [("exit", 0, 0)]
    m5dev = bus.device_at(M5OP_ADDR)
    assert m5dev.counts[0x99] == 2
    assert M5Ops().call(0x21, FakeCpu(1)) == 0  # no handler: logged, returns 0


@pytest.fixture
def memory() -> Iterator[PhysicalMemory]:
    with PhysicalMemory("128M") as m:
        yield m


def test_pc_devices_layout(memory: PhysicalMemory) -> None:
    io, mmio = IoBus(unclaimed="raise"), MmioBus(unclaimed="raise")
    exits: List[Tuple[int, str]] = []
    devs = pc_devices(io, mmio, memory=memory, nb_cpus=2, queue=EventQueue(),
                      on_exit=lambda s, c: exits.append((s, c)), clock=lambda: 0)
    layout = {(m.start, m.end): m.name for m in io.mappings}
    assert layout == {
        (0x20, 0x22): "pic.master", (0x40, 0x44): "pit", (0x70, 0x72): "cmos",
        (0x80, 0x81): "post", (0xA0, 0xA2): "pic.slave", (0xF4, 0xF8): "debug_exit",
        (0x3F8, 0x400): "uart0", (0x510, 0x512): "fw_cfg", (0xCF8, 0xD00): "pci",
        (0x60, 0x61): "i8042", (0x64, 0x65): "i8042.cmd", (0x600, 0x640): "acpi_pm",
        (0xAFE0, 0xAFE4): "gpe0", (0x4D0, 0x4D2): "elcr",
    }
    assert [(m.start, m.end) for m in mmio.mappings] == [(0xFED00000, 0xFED00400),
                                                         (0xFFFF0000, 0x1_0000_0000)]
    for c in b"ok":
        io.write(0x3F8, 1, c)
    assert devs.uart.output == b"ok"
    io.write(0xF4, 1, 0)
    assert exits == [(1, "isa-debug-exit")]
    io.write(0x510, 2, 5)
    assert io.read(0x511, 1) == 2
    assert "etc/e820" in devs.fw_cfg.files
    io.write(0x70, 1, 0x34)
    assert io.read(0x71, 1) == 0x00 and devs.cmos.nvram[0x35] == 0x07
    assert devs.irqchip is devs.pic
    # The UART's interrupt reaches the PIC on IRQ 4.
    io.write(0x3F9, 1, 0x02)
    assert devs.pic is not None and devs.pic.master.irr & 0x10
    assert [n for n, _ in devs.named()] == [
        "uart", "debug_exit", "fw_cfg", "pci", "post", "cmos", "m5ops", "pic", "pit",
        "acpi_pm", "gpe0", "i8042", "hpet"]


def test_pc_devices_with_kernel_irqchip() -> None:
    lines: List[Tuple[int, int]] = []
    io, mmio = IoBus(), MmioBus()
    chip = KernelIrqChip(lambda irq, level: lines.append((irq, level)))
    devs = pc_devices(io, mmio, irqchip=chip, pit=False)
    assert devs.pic is None and devs.pit is None and devs.irqchip is chip
    assert io.device_at(0x20) is None and io.device_at(0x40) is None
    io.write(0x3F9, 1, 0x02)  # THRE interrupt -> KVM_IRQ_LINE(4, 1)
    io.read(0x3FA, 1)  # acknowledged -> (4, 0)
    assert lines == [(4, 1), (4, 0)]


def test_device_checkpoint_round_trip(tmp_path: Path, memory: PhysicalMemory) -> None:
    q = EventQueue()
    io, mmio = IoBus(), MmioBus()
    devs = pc_devices(io, mmio, memory=memory, queue=q, clock=lambda: 1_000_000)
    # Put every device in a non-reset state.
    for port, icw in ((0x20, 0x11), (0x21, 0x20), (0x21, 0x04), (0x21, 0x01), (0x21, 0xFE)):
        io.write(port, 1, icw)
    io.write(0x43, 1, 0x34)
    io.write(0x40, 1, 0xA9)
    io.write(0x40, 1, 0x04)
    q.simulate(1_500_000_000)  # 1.5 ms: one timer interrupt
    assert devs.pic is not None and devs.pic.has_pending()
    io.write(0x3FB, 1, 0x83)
    io.write(0x3F8, 1, 0x01)
    io.write(0x3FB, 1, 0x03)
    io.write(0x3FF, 1, 0x77)
    devs.uart.feed(b"in")
    io.write(0x510, 2, 0)
    io.read(0x511, 1)
    io.write(0xCF8, 4, 0x80000010)
    io.write(0x70, 1, 0x40)
    io.write(0x71, 1, 0x99)
    io.write(0x80, 1, 0x42)

    cp = CheckpointOut()
    for name, dev in devs.named():
        with cp.scope(f"system.{name}"):
            dev.serialize(cp)  # type: ignore[attr-defined]
    write_checkpoint(tmp_path / "cpt", cp)

    q2 = EventQueue()
    q2.set_cur_tick(q.cur_tick)
    with PhysicalMemory("128M") as mem2:
        devs2 = pc_devices(IoBus(), MmioBus(), memory=mem2, queue=q2, clock=lambda: 1_000_000)
        cin = CheckpointIn.load(tmp_path / "cpt")
        for name, dev in devs2.named():
            with cin.scope(f"system.{name}"):
                dev.unserialize(cin)  # type: ignore[attr-defined]
        assert cin.unused_keys() == []
        assert devs2.pic is not None and devs2.pic.has_pending()
        assert devs2.pic.master.imr == 0xFE and devs2.pic.master.irq_base == 0x20
        assert devs2.uart.divider == 1 and devs2.uart.scr == 0x77 and devs2.uart.rx_pending == 2
        assert devs2.fw_cfg.offset == 1
        assert devs2.pci.address == 0x80000010
        assert devs2.cmos.nvram[0x40] == 0x99
        assert devs2.post.count == 1 and devs2.post.last == 0x42
        # The PIT's next interrupt is re-armed at the same tick as in the original.
        assert devs2.pit is not None and devs.pit is not None
        assert q2.next_tick() == q.next_tick() == devs.pit.channels[0].next_irq_tick()
        assert devs2.pit.channels[0].current_count() == devs.pit.channels[0].current_count()
