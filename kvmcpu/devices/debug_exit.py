"""QEMU's isa-debug-exit: a guest write ends the simulation.

Writing ``value`` to the port (0xf4, 4 ports by default here) ends the run
with process exit status ``(value << 1) | 1``, exactly as QEMU's
``-device isa-debug-exit`` does; a guest therefore can never produce status
0 this way (writing 0 gives 1; the test kernels in ``guests/`` write 0 on
success, so "status 1" means "the guest said it passed"). Reads return 0.
"""

from __future__ import annotations

from typing import Callable

from kvmcpu.devices.base import Device

__all__ = ["DEBUG_EXIT_PORT", "DEBUG_EXIT_CAUSE", "DebugExit", "debug_exit_status"]

#: The port bare-metal test kernels for QEMU use.
DEBUG_EXIT_PORT = 0xF4
#: The cause string given to ``on_exit``.
DEBUG_EXIT_CAUSE = "isa-debug-exit"


def debug_exit_status(value: int) -> int:
    """The exit status QEMU reports for a write of ``value``."""
    return ((value << 1) | 1) & 0xFFFFFFFF


class DebugExit(Device):
    """isa-debug-exit. Map at 0xf4 with 4 ports.

    Args:
        name: device name.
        on_exit: called as ``on_exit(status, cause)`` on a guest write (the System
            routes it to ``exit_sim_loop(cause, status)``); None only records it.
    """

    _checkpoint_fields = ()

    def __init__(self, name: str = "debug_exit", *,
                 on_exit: Callable[[int, str], object] | None = None) -> None:
        super().__init__(name)
        self.on_exit = on_exit
        #: The last value written (None before any write).
        self.value: int | None = None
        #: The exit status of the last write (None before any write).
        self.status: int | None = None

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.value = value
        self.status = debug_exit_status(value)
        if self.on_exit is not None:
            self.on_exit(self.status, DEBUG_EXIT_CAUSE)
