"""The device interface and a small base class for devices.

The device interface
====================

A device is anything a :class:`~kvmcpu.mem.bus.Bus` can dispatch to::

    def read(self, offset: int, size: int) -> int: ...
    def write(self, offset: int, size: int, value: int) -> None: ...

* ``offset`` is relative to the start of the range the device was added at
  (``bus.add(0x3f8, 8, uart)``: an ``out`` to port 0x3fd arrives as offset 5).
* ``size`` is the access width in bytes: 1, 2, 4 or 8.
* ``value`` (and the value ``read`` returns) is the access's little-endian
  bytes as an unsigned int; the bus masks what ``read`` returns to ``size``.
* A device that needs to know who made the access (gem5's m5ops read the
  guest's argument registers) declares a ``requestor`` keyword:
  ``read(offset, size, requestor=None)``; the bus passes the CPU through.
* Optional ``name`` (used in messages) and ``latency`` (ticks per access,
  default 0) attributes are picked up by ``Bus.add``.

Devices are simulation objects: :meth:`Device.serialize` writes their state
into the current section of a :class:`~kvmcpu.sim.checkpoint.CheckpointOut`
(gem5's ``serialize(CheckpointOut &cp)``) and :meth:`Device.unserialize`
restores it from a :class:`~kvmcpu.sim.checkpoint.CheckpointIn`. The System
opens one section per device (``system.uart0``) around those calls.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Tuple, runtime_checkable

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["BusDevice", "Device", "size_mask"]


@runtime_checkable
class BusDevice(Protocol):
    """What a bus needs from a device (see the module docstring)."""

    def read(self, offset: int, size: int) -> int: ...

    def write(self, offset: int, size: int, value: int) -> None: ...


def size_mask(size: int) -> int:
    """All ones over ``size`` bytes (0xff for 1)."""
    return (1 << (8 * size)) - 1


class Device:
    """Base class of the platform devices: a name, reset and checkpointing.

    Subclasses list their checkpointed attributes in ``_checkpoint_fields``;
    the default :meth:`serialize`/:meth:`unserialize` store and restore them
    (ints, bools, bytes and lists of ints). Override both for anything else,
    calling ``super()`` for the listed fields.

    Args:
        name: the device's name in messages, stats and checkpoints.
    """

    _checkpoint_fields: ClassVar[Tuple[str, ...]] = ()
    #: Ticks one access costs (0: the access is free in simulated time).
    latency: int = 0

    def __init__(self, name: str) -> None:
        self.name = name

    def read(self, offset: int, size: int) -> int:
        """Return the value of a ``size``-byte read at ``offset`` (override)."""
        raise NotImplementedError(f"{type(self).__name__}.read")

    def write(self, offset: int, size: int, value: int) -> None:
        """Perform a ``size``-byte write of ``value`` at ``offset`` (override)."""
        raise NotImplementedError(f"{type(self).__name__}.write")

    def reset(self) -> None:
        """Return to the power-on state (override)."""

    # -- checkpoints ----------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        """Write this device's state into the current checkpoint section."""
        for field in self._checkpoint_fields:
            value: Any = getattr(self, field)
            if isinstance(value, bytearray):
                value = bytes(value)
            cp.param_out(field, value)

    def unserialize(self, cp: CheckpointIn) -> None:
        """Restore this device's state from the current checkpoint section."""
        section = cp.current
        for field in self._checkpoint_fields:
            current = getattr(self, field)
            restored: Any
            if isinstance(current, bool):
                restored = section.get_bool(field)
            elif isinstance(current, int):
                restored = section.get_int(field)
            elif isinstance(current, bytearray):
                restored = bytearray(section.get_bytes(field, len(current)))
            elif isinstance(current, bytes):
                restored = section.get_bytes(field)
            elif isinstance(current, list):
                restored = section.get_int_list(field)
            else:  # pragma: no cover - a subclass listed an unsupported field
                raise TypeError(f"{type(self).__name__}.{field}: cannot restore "
                                f"{type(current).__name__}")
            setattr(self, field, restored)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"
