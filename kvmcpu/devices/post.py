"""Port 0x80, the POST diagnostic port: remembers the codes the guest writes.

Reads return 0xff, as QEMU's ``ioport80`` does (firmware and Linux also use
``out 0x80`` as a short delay).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kvmcpu.devices.base import Device

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["POST_PORT", "PostCard"]

#: The POST code port.
POST_PORT = 0x80


class PostCard(Device):
    """The POST code sink. Map at 0x80 with 1 port.

    Attributes:
        last: the last code written (None before any write).
        count: the number of writes.
    """

    _checkpoint_fields = ("count",)

    def __init__(self, name: str = "post") -> None:
        super().__init__(name)
        self.last: int | None = None
        self.count = 0

    def read(self, offset: int, size: int) -> int:
        return 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        self.last = value & 0xFF
        self.count += 1

    def serialize(self, cp: CheckpointOut) -> None:
        super().serialize(cp)
        cp.param_out("last", -1 if self.last is None else self.last)

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        last = cp.current.get_int("last")
        self.last = None if last < 0 else last
