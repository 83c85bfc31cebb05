"""A 16550A UART (COM1 at 0x3f8, IRQ 4) with the register behaviour of QEMU's ``serial``.

Registers (offset from the base port; DLAB is LCR bit 7):

===  ===================  ====================
off  read                 write
===  ===================  ====================
0    RBR (DLAB: DLL)      THR (DLAB: DLL)
1    IER (DLAB: DLM)      IER (DLAB: DLM)
2    IIR                  FCR
3    LCR                  LCR
4    MCR                  MCR
5    LSR                  (ignored)
6    MSR                  (ignored)
7    SCR                  SCR
===  ===================  ====================

Transmission is instantaneous: THRE and TEMT are always set in LSR and every
byte written to THR goes to the output sink at once (and into :attr:`output`).
Received bytes come from :meth:`Uart16550.feed`; DR is set while any wait.
The interrupt output (THRE and received-data interrupts, enabled by IER) is
driven on an :class:`~kvmcpu.devices.irq.IrqLine`. In loopback mode (MCR bit
4) transmitted bytes are received back and MSR mirrors the MCR outputs.
"""

from __future__ import annotations

import sys
from collections import deque
from typing import IO, TYPE_CHECKING, Any, Callable, Deque, Union

from kvmcpu.devices.base import Device
from kvmcpu.devices.irq import IrqLine

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["COM1_PORT", "COM1_IRQ", "Uart16550", "Sink"]

#: Base port of COM1.
COM1_PORT = 0x3F8
#: ISA IRQ of COM1.
COM1_IRQ = 4

# Register bits.
IER_RDI = 0x01  # received data available
IER_THRI = 0x02  # transmitter holding register empty
IER_RLSI = 0x04  # receiver line status
IER_MSI = 0x08  # modem status
IIR_NO_INT = 0x01
IIR_MSI = 0x00
IIR_THRI = 0x02
IIR_RDI = 0x04
IIR_RLSI = 0x06
IIR_FIFO_ENABLED = 0xC0
LCR_DLAB = 0x80
MCR_DTR = 0x01
MCR_RTS = 0x02
MCR_OUT1 = 0x04
MCR_OUT2 = 0x08
MCR_LOOP = 0x10
LSR_DR = 0x01
LSR_OE = 0x02
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40
MSR_CTS = 0x10
MSR_DSR = 0x20
MSR_RI = 0x40
MSR_DCD = 0x80
FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02

#: Where transmitted bytes go: None (only :attr:`Uart16550.output`), ``"stdout"``,
#: a callable taking bytes, or a binary (or text) file object.
Sink = Union[None, str, Callable[[bytes], Any], IO[bytes], IO[str]]


class Uart16550(Device):
    """The 16550A UART. Map at 0x3f8 with 8 ports.

    Args:
        name: device name.
        sink: where transmitted bytes go besides :attr:`output` (see :data:`Sink`).
        irq: the interrupt line (IRQ 4 on COM1); None leaves it unconnected.
        input: bytes the guest will receive, as if typed.
        keep_output: record transmitted bytes in :attr:`output`.
    """

    _checkpoint_fields = ("divider", "ier", "iir", "lcr", "mcr", "lsr", "msr", "scr", "fcr",
                          "thr_ipending")

    def __init__(self, name: str = "uart0", *, sink: Sink = None, irq: IrqLine | None = None,
                 input: bytes = b"", keep_output: bool = True) -> None:
        super().__init__(name)
        self.irq = irq
        self.keep_output = keep_output
        self._output = bytearray()
        self._write_sink = self._make_sink(sink)
        self._rx: Deque[int] = deque()
        self.reset()
        if input:
            self.feed(input)

    @staticmethod
    def _make_sink(sink: Sink) -> Callable[[bytes], Any] | None:
        if sink is None:
            return None
        if sink == "stdout":
            def to_stdout(data: bytes) -> None:
                buf = getattr(sys.stdout, "buffer", None)
                if buf is not None:
                    buf.write(data)
                    buf.flush()
                else:
                    sys.stdout.write(data.decode("latin-1"))
                    sys.stdout.flush()
            return to_stdout
        if isinstance(sink, str):
            raise ValueError(f"unknown UART sink {sink!r} (use 'stdout', a callable or a file)")
        write = getattr(sink, "write", None)
        if write is not None:
            f = sink

            def to_file(data: bytes) -> None:
                try:
                    write(data)
                except TypeError:  # a text file
                    write(data.decode("latin-1"))
                flush = getattr(f, "flush", None)
                if flush is not None:
                    flush()
            return to_file
        if callable(sink):
            return sink
        raise TypeError(f"UART sink must be None, 'stdout', a callable or a file, got {sink!r}")

    def reset(self) -> None:
        self.divider = 12  # 9600 baud
        self.ier = 0
        self.iir = IIR_NO_INT
        self.lcr = 0
        self.mcr = MCR_OUT2
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        self.scr = 0
        self.fcr = 0
        self.thr_ipending = 0
        self._rx.clear()
        self._update_irq()

    # -- host side --------------------------------------------------------------------
    @property
    def output(self) -> bytes:
        """Every byte the guest transmitted (loopback excluded)."""
        return bytes(self._output)

    def clear_output(self) -> None:
        """Forget :attr:`output`."""
        self._output.clear()

    def feed(self, data: bytes) -> None:
        """Queue ``data`` for the guest to receive."""
        self._rx.extend(data)
        self.lsr |= LSR_DR
        self._update_irq()

    @property
    def rx_pending(self) -> int:
        """Number of received bytes the guest has not read yet."""
        return len(self._rx)

    # -- interrupt logic ----------------------------------------------------------------
    def _update_irq(self) -> None:
        ier = self.ier
        if ier & IER_RLSI and self.lsr & (LSR_OE | LSR_BI):
            iir = IIR_RLSI
        elif ier & IER_RDI and self.lsr & LSR_DR:
            iir = IIR_RDI
        elif ier & IER_THRI and self.thr_ipending:
            iir = IIR_THRI
        elif ier & IER_MSI and self.msr & 0x0F:
            iir = IIR_MSI
        else:
            iir = IIR_NO_INT
        self.iir = iir
        if self.irq is not None:
            self.irq.set(iir != IIR_NO_INT)

    def _transmit(self, byte: int) -> None:
        if self.mcr & MCR_LOOP:
            self._rx.append(byte)
            self.lsr |= LSR_DR
        else:
            if self.keep_output:
                self._output.append(byte)
            if self._write_sink is not None:
                self._write_sink(bytes((byte,)))
        # The byte left at once: THR empty again, which may interrupt.
        self.thr_ipending = 1
        self.lsr |= LSR_THRE | LSR_TEMT

    # -- registers ----------------------------------------------------------------------
    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0xFF00) | value
            else:
                self.thr_ipending = 0
                self._transmit(value)
                self._update_irq()
        elif offset == 1:
            if self.lcr & LCR_DLAB:
                self.divider = (self.divider & 0x00FF) | (value << 8)
            else:
                old = self.ier
                self.ier = value & 0x0F
                # Enabling the THRE interrupt with THR empty raises it (as QEMU does).
                if not old & IER_THRI and self.ier & IER_THRI and self.lsr & LSR_THRE:
                    self.thr_ipending = 1
                self._update_irq()
        elif offset == 2:
            self.fcr = value & 0xC9  # enable, DMA mode, trigger level; clear bits self-reset
            if value & FCR_CLEAR_RX:
                self._rx.clear()
                self.lsr &= ~LSR_DR
                self._update_irq()
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self.mcr = value & 0x1F
            if self.mcr & MCR_LOOP:
                self._loopback_msr()
            else:
                self.msr = MSR_DCD | MSR_DSR | MSR_CTS
        elif offset == 7:
            self.scr = value
        # LSR and MSR are read-only.

    def _loopback_msr(self) -> None:
        mcr = self.mcr
        msr = 0
        if mcr & MCR_RTS:
            msr |= MSR_CTS
        if mcr & MCR_DTR:
            msr |= MSR_DSR
        if mcr & MCR_OUT1:
            msr |= MSR_RI
        if mcr & MCR_OUT2:
            msr |= MSR_DCD
        self.msr = msr

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            if self.lcr & LCR_DLAB:
                return self.divider & 0xFF
            value = self._rx.popleft() if self._rx else 0
            if not self._rx:
                self.lsr &= ~LSR_DR
            self._update_irq()
            return value
        if offset == 1:
            if self.lcr & LCR_DLAB:
                return (self.divider >> 8) & 0xFF
            return self.ier
        if offset == 2:
            iir = self.iir
            if iir == IIR_THRI:  # reading IIR acknowledges a THRE interrupt
                self.thr_ipending = 0
                self._update_irq()
            return iir | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE else 0)
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            lsr = self.lsr
            if lsr & (LSR_OE | LSR_BI):
                self.lsr &= ~(LSR_OE | LSR_BI)
                self._update_irq()
            return lsr
        if offset == 6:
            return self.msr
        return self.scr

    # -- checkpoints ----------------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        """The registers and the bytes received but not yet read."""
        super().serialize(cp)
        cp.param_out("rx", bytes(self._rx))

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        self._rx = deque(cp.current.get_bytes("rx"))
        self._update_irq()
