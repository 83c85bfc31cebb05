"""16550A UART register behaviour with real values."""

from __future__ import annotations

import io
from typing import List

import pytest

from kvmcpu.devices import IrqLine, Uart16550
from kvmcpu.devices.irq import NullInterruptController

THR, IER, IIR, LCR, MCR, LSR, MSR, SCR = range(8)


def test_reset_values_and_transmit() -> None:
    u = Uart16550()
    assert u.read(LSR, 1) == 0x60  # THRE | TEMT
    assert u.read(IIR, 1) == 0x01  # no interrupt, FIFOs off
    assert u.read(MSR, 1) == 0xB0  # DCD | DSR | CTS
    for c in b"Hi\n":
        u.write(THR, 1, c)
    assert u.output == b"Hi\n"
    assert u.read(LSR, 1) & 0x60 == 0x60


def test_fifo_enable_shows_in_iir() -> None:
    u = Uart16550()
    u.write(IIR, 1, 0x07)  # FCR: enable + clear both FIFOs
    assert u.read(IIR, 1) == 0xC1
    u.write(IIR, 1, 0x00)
    assert u.read(IIR, 1) == 0x01


def test_dlab_divisor_latch() -> None:
    u = Uart16550()
    u.write(LCR, 1, 0x80)
    u.write(THR, 1, 0x01)  # DLL
    u.write(IER, 1, 0x00)  # DLM
    assert (u.read(THR, 1), u.read(IER, 1)) == (0x01, 0x00)
    assert u.divider == 1
    u.write(LCR, 1, 0x03)  # 8N1, DLAB off
    assert u.read(LCR, 1) == 0x03
    u.write(THR, 1, ord("x"))
    assert u.output == b"x" and u.divider == 1


def test_scratch_register() -> None:
    u = Uart16550()
    u.write(SCR, 1, 0x5A)
    assert u.read(SCR, 1) == 0x5A


def test_receive_sets_dr_and_reads_in_order() -> None:
    u = Uart16550(input=b"ab")
    assert u.read(LSR, 1) & 0x01
    assert u.read(THR, 1) == ord("a")
    assert u.rx_pending == 1
    assert u.read(THR, 1) == ord("b")
    assert u.read(LSR, 1) == 0x60
    assert u.read(THR, 1) == 0


def test_loopback_receives_and_mirrors_mcr() -> None:
    u = Uart16550()
    u.write(MCR, 1, 0x10 | 0x0F)  # loop + DTR RTS OUT1 OUT2
    assert u.read(MSR, 1) == 0xF0
    u.write(MCR, 1, 0x10 | 0x02)  # loop + RTS -> CTS only
    assert u.read(MSR, 1) == 0x10
    u.write(THR, 1, 0x55)
    assert u.output == b""
    assert u.read(LSR, 1) & 0x01
    assert u.read(THR, 1) == 0x55
    u.write(MCR, 1, 0x0B)
    assert u.read(MSR, 1) == 0xB0


def test_interrupts_on_irq_line() -> None:
    pic = NullInterruptController()
    u = Uart16550(irq=IrqLine(pic, 4))
    assert pic.levels == {}
    u.write(IER, 1, 0x02)  # THRE interrupt: THR is empty, so it fires at once
    assert pic.levels[4] is True
    assert u.read(IIR, 1) == 0x02  # reading IIR acknowledges THRE
    assert pic.levels[4] is False
    assert u.read(IIR, 1) == 0x01
    u.write(THR, 1, ord("z"))  # transmitted at once: THRE again
    assert pic.levels[4] is True
    u.write(IER, 1, 0x01)  # received-data only
    assert pic.levels[4] is False
    u.feed(b"q")
    assert pic.levels[4] is True and u.read(IIR, 1) == 0x04
    u.read(THR, 1)
    assert pic.levels[4] is False


def test_sinks() -> None:
    got: List[bytes] = []
    u = Uart16550(sink=got.append)
    u.write(THR, 1, 0x41)
    assert got == [b"A"]
    buf = io.BytesIO()
    u2 = Uart16550(sink=buf, keep_output=False)
    u2.write(THR, 1, 0x42)
    assert buf.getvalue() == b"B" and u2.output == b""
    text = io.StringIO()
    Uart16550(sink=text).write(THR, 1, 0x43)
    assert text.getvalue() == "C"
    with pytest.raises(ValueError):
        Uart16550(sink="stderr")


def test_stdout_sink(capfd: pytest.CaptureFixture[str]) -> None:
    Uart16550(sink="stdout").write(THR, 1, ord("!"))
    assert capfd.readouterr().out == "!"
