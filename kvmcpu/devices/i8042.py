"""A minimal 8042 keyboard controller (ports 0x60 and 0x64), enough for kernels.

No keyboard or mouse is attached: the controller answers the commands a
kernel sends while probing it so that it never waits forever, and its
reset line resets the platform. Port 0x64 reads the status register (OBF
bit 0 when the output buffer holds a byte, SYS bit 2 after the self test,
CMD/DATA bit 3, the keylock bit 4 as QEMU's ``i8042``); port 0x60 reads the
output buffer (and clears OBF). Commands written to port 0x64:

=====  ==================================================================
0x20   read the command byte (into the output buffer)
0x60   write the command byte (the next byte written to port 0x60)
0xa7   disable / 0xa8 enable the auxiliary port, 0xad / 0xae the keyboard
0xa9   test the auxiliary port (answers 0x00), 0xab the keyboard port (0x00)
0xaa   self test (answers 0x55 and sets SYS)
0xd0   read the output port (bit 0: reset line high, bit 1: A20)
0xd1   write the output port (the next byte to port 0x60; bit 0 clear resets)
0xf0-  pulse output port lines for 6 us: 0xfe (bit 0) resets the platform,
0xff   as QEMU's ``KBD_CCMD_RESET``
=====  ==================================================================

A byte written to port 0x60 outside those commands goes to the (absent)
keyboard: it answers 0xfe (resend), the "no device" answer of a PS/2 port.
"""

from __future__ import annotations

from typing import Callable

from kvmcpu.devices.base import Device

__all__ = ["I8042", "I8042_DATA_PORT", "I8042_STATUS_PORT"]

I8042_DATA_PORT = 0x60
I8042_STATUS_PORT = 0x64

_OBF = 0x01
_SYS = 0x04
_CMD = 0x08
_UNLOCKED = 0x10


class _CommandPort:
    """Port 0x64 of an :class:`I8042` (its offset 4), mapped on its own."""

    def __init__(self, kbc: I8042) -> None:
        self.kbc = kbc
        self.name = f"{kbc.name}.cmd"

    def read(self, offset: int, size: int) -> int:
        return self.kbc.read(4, 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.kbc.write(4, 1, value)


class I8042(Device):
    """The keyboard controller: map port 0x60 to it and port 0x64 to its
    :attr:`command_port` (one port each; port 0x61 between them is not its).

    Args:
        name: device name.
        on_reset: called when the guest pulses the reset line (the System resets).
    """

    _checkpoint_fields = ("status", "command_byte", "output", "pending", "outport")

    def __init__(self, name: str = "i8042", *,
                 on_reset: Callable[[], object] | None = None) -> None:
        super().__init__(name)
        self.on_reset = on_reset
        self.status = _CMD | _UNLOCKED
        self.command_byte = 0x00
        self.output = -1  # the output buffer (-1: empty)
        self.pending = 0  # the command waiting for its data byte (0x60, 0xd1)
        self.outport = 0x03  # reset line high, A20 enabled
        self.resets = 0
        #: Port 0x64 (status / command) as a device of its own.
        self.command_port = _CommandPort(self)

    def reset(self) -> None:
        self.status = _CMD | _UNLOCKED
        self.command_byte = 0
        self.output = -1
        self.pending = 0
        self.outport = 0x03

    def _put(self, value: int) -> None:
        self.output = value & 0xFF
        self.status |= _OBF

    def _pulse_reset(self) -> None:
        self.resets += 1
        if self.on_reset is not None:
            self.on_reset()

    def read(self, offset: int, size: int) -> int:
        if offset == 4:
            return self.status
        if offset == 0:
            value = self.output if self.output >= 0 else 0
            self.output = -1
            self.status &= ~_OBF
            return value
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 4:
            self.status |= _CMD
            self._command(value)
        elif offset == 0:
            self.status &= ~_CMD
            pending, self.pending = self.pending, 0
            if pending == 0x60:
                self.command_byte = value
            elif pending == 0xD1:
                self.outport = value
                if not value & 1:
                    self._pulse_reset()
            else:
                self._put(0xFE)  # no keyboard: resend

    def _command(self, cmd: int) -> None:
        if cmd == 0x20:
            self._put(self.command_byte)
        elif cmd in (0x60, 0xD1):
            self.pending = cmd
        elif cmd == 0xAA:
            self.status |= _SYS
            self._put(0x55)
        elif cmd in (0xA9, 0xAB):
            self._put(0x00)
        elif cmd == 0xD0:
            self._put(self.outport)
        elif cmd >= 0xF0:
            if not cmd & 1:
                self._pulse_reset()
        # 0xa7/0xa8/0xad/0xae and the rest: nothing attached to enable or disable
