"""IO-port and MMIO buses: map address ranges to devices and dispatch accesses.

One :class:`Bus` class serves both address spaces (:class:`IoBus` and
:class:`MmioBus` only set the name and address width). The CPU model calls
:meth:`Bus.access` on every IO or MMIO exit with the little-endian bytes of the
access, so that path is kept short: a dict lookup for addresses seen before,
else a bisect over the sorted range starts.

A device is any object with ``read(offset, size) -> int`` and
``write(offset, size, value) -> None`` (see :mod:`kvmcpu.devices.base`);
offsets are relative to the start of the range the device was added at. A
device whose ``read``/``write`` accepts a ``requestor`` keyword also receives
the object that made the access (the CPU), as gem5's m5ops need the guest's
registers.

Accesses that hit no device follow the bus's ``unclaimed`` policy:

* ``"ignore"``: reads return all ones, writes are dropped;
* ``"log"`` (default): as ignore, plus one WARNING per address on the
  ``kvmcpu.mem`` logger;
* ``"raise"``: :class:`UnclaimedAccessError`.
"""

from __future__ import annotations

import inspect
import logging
from bisect import bisect_right
from typing import Any, Dict, Iterator, List, Set, Tuple

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.mem.range import AddrRange

__all__ = [
    "UNCLAIMED_POLICIES",
    "Bus",
    "BusMapping",
    "IoBus",
    "MmioBus",
    "UnclaimedAccessError",
]

logger = logging.getLogger("kvmcpu.mem")

#: The accepted values of :attr:`Bus.unclaimed`.
UNCLAIMED_POLICIES = ("ignore", "log", "raise")

_MASKS = {n: (1 << (8 * n)) - 1 for n in range(1, 9)}
_ONES = {n: b"\xff" * n for n in range(0, 17)}
# The address cache is cleared when it grows past this many entries (a guest
# scanning MMIO must not grow it without bound).
_CACHE_LIMIT = 4096


class UnclaimedAccessError(GuestError):
    """The guest accessed an address that no device claims (policy ``"raise"``).

    Attributes ``bus``, ``addr``, ``size``, ``is_write`` and ``value`` (the
    written value, None for reads) describe the access.
    """

    def __init__(
        self, bus: str, addr: int, size: int, is_write: bool, value: int | None = None
    ) -> None:
        what = f"write of {value:#x}" if is_write and value is not None else (
            "write" if is_write else "read")
        super().__init__(
            f"{bus} bus: unclaimed {size}-byte {what} at {addr:#x}"
        )
        self.bus = bus
        self.addr = addr
        self.size = size
        self.is_write = is_write
        self.value = value


def _takes_requestor(method: Any) -> bool:
    try:
        params = inspect.signature(method).parameters
    except (TypeError, ValueError):
        return False
    return "requestor" in params or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()
    )


class BusMapping:
    """One device on a bus: its range, name, latency and how to call it."""

    __slots__ = ("range", "start", "end", "device", "name", "latency", "read_requestor",
                 "write_requestor")

    def __init__(self, rng: AddrRange, device: Any, name: str, latency: int) -> None:
        self.range = rng
        self.start = rng.start
        self.end = rng.end
        self.device = device
        self.name = name
        self.latency = latency
        self.read_requestor = _takes_requestor(device.read)
        self.write_requestor = _takes_requestor(device.write)

    def __repr__(self) -> str:
        return f"<BusMapping {self.name} at {self.range}>"


class Bus:
    """An address space of devices (IO ports or MMIO).

    Args:
        name: ``"io"`` or ``"mmio"`` by convention; appears in every message.
        unclaimed: policy for accesses no device claims (see the module docstring).
        addr_limit: one past the highest valid address (0x10000 for IO ports).
    """

    def __init__(self, name: str, *, unclaimed: str = "log", addr_limit: int = 1 << 64) -> None:
        self.name = name
        self.addr_limit = addr_limit
        self._mappings: List[BusMapping] = []  # sorted by start
        self._starts: List[int] = []
        self._cache: Dict[int, BusMapping] = {}
        self._logged: Set[Tuple[int, bool]] = set()
        self._unclaimed = "log"
        self.unclaimed = unclaimed
        #: Number of accesses that hit no device.
        self.unclaimed_count = 0

    # -- configuration -------------------------------------------------------------
    @property
    def unclaimed(self) -> str:
        """The policy for unclaimed accesses: "ignore", "log" or "raise"."""
        return self._unclaimed

    @unclaimed.setter
    def unclaimed(self, policy: str) -> None:
        if policy not in UNCLAIMED_POLICIES:
            raise ConfigError(
                f"{self.name} bus: unclaimed policy must be one of "
                f"{', '.join(UNCLAIMED_POLICIES)}, got {policy!r}"
            )
        self._unclaimed = policy

    def add(
        self,
        start: int,
        size: int,
        device: Any,
        *,
        name: str | None = None,
        latency: int | None = None,
    ) -> BusMapping:
        """Map ``device`` at ``[start, start + size)``.

        Args:
            name: the name used in messages (default: ``device.name``, else its class name).
            latency: ticks each access costs (default: ``device.latency`` or 0).

        Raises:
            ConfigError: the range is empty, beyond the bus, overlaps a device
                already mapped (the message names both devices and both ranges),
                or the device has no ``read``/``write``.
        """
        dev_name = name if name is not None else str(getattr(device, "name", None) or
                                                     type(device).__name__)
        if not callable(getattr(device, "read", None)) or not callable(
            getattr(device, "write", None)
        ):
            raise ConfigError(
                f"{self.name} bus: {dev_name} has no read(offset, size)/write(offset, size, value)"
            )
        if size <= 0 or start < 0 or start + size > self.addr_limit:
            raise ConfigError(
                f"{self.name} bus: cannot map {dev_name} at start {start:#x} size {size:#x}: "
                f"outside [0, {self.addr_limit:#x})"
            )
        rng = AddrRange(start, size)
        for m in self._mappings:
            if m.range.overlaps(rng):
                raise ConfigError(
                    f"{self.name} bus: cannot map {dev_name} at {rng}: it overlaps "
                    f"{m.name} at {m.range}"
                )
        lat = int(latency if latency is not None else getattr(device, "latency", 0) or 0)
        mapping = BusMapping(rng, device, dev_name, lat)
        idx = bisect_right(self._starts, start)
        self._mappings.insert(idx, mapping)
        self._starts.insert(idx, start)
        self._cache.clear()
        return mapping

    def remove(self, device: Any) -> None:
        """Unmap every range of ``device``.

        Raises:
            ConfigError: the device is not on this bus.
        """
        keep = [m for m in self._mappings if m.device is not device]
        if len(keep) == len(self._mappings):
            raise ConfigError(f"{self.name} bus: {device!r} is not mapped")
        self._mappings = keep
        self._starts = [m.start for m in keep]
        self._cache.clear()

    # -- lookup --------------------------------------------------------------------
    @property
    def mappings(self) -> List[BusMapping]:
        """Every mapping, sorted by start address (a copy)."""
        return list(self._mappings)

    def __iter__(self) -> Iterator[BusMapping]:
        return iter(list(self._mappings))

    def __len__(self) -> int:
        return len(self._mappings)

    def find(self, addr: int) -> BusMapping | None:
        """The mapping containing ``addr``, or None."""
        m = self._cache.get(addr)
        if m is not None:
            return m
        idx = bisect_right(self._starts, addr) - 1
        if idx < 0:
            return None
        m = self._mappings[idx]
        if addr >= m.end:
            return None
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[addr] = m
        return m

    def device_at(self, addr: int) -> Any:
        """The device mapped at ``addr`` (None when unclaimed)."""
        m = self.find(addr)
        return None if m is None else m.device

    # -- access --------------------------------------------------------------------
    def access(
        self, addr: int, data: memoryview, is_write: bool, *, requestor: Any = None
    ) -> int:
        """Perform one access; the CPU calls this on each IO/MMIO exit.

        Args:
            addr: port number or guest-physical address.
            data: the access's bytes, little-endian (1, 2, 4 or 8 of them). For a
                write they are the value written; for a read they are filled in place.
            is_write: direction.
            requestor: who made the access (the CPU); passed to devices that take it.

        Returns:
            The access latency in ticks (0 unless the device sets one).

        Raises:
            UnclaimedAccessError: no device claims ``addr`` and the policy is "raise".
        """
        m = self._cache.get(addr)
        if m is None:
            m = self.find(addr)
            if m is None:
                self._unclaimed_access(addr, data, is_write)
                return 0
        size = len(data)
        if is_write:
            value = int.from_bytes(data, "little")
            if m.write_requestor:
                m.device.write(addr - m.start, size, value, requestor=requestor)
            else:
                m.device.write(addr - m.start, size, value)
        else:
            if m.read_requestor:
                value = m.device.read(addr - m.start, size, requestor=requestor)
            else:
                value = m.device.read(addr - m.start, size)
            data[:] = (value & _MASKS[size]).to_bytes(size, "little")
        return m.latency

    def read(self, addr: int, size: int, *, requestor: Any = None) -> int:
        """Read ``size`` bytes at ``addr`` through the bus and return the value."""
        _check_size(size)
        buf = bytearray(size)
        self.access(addr, memoryview(buf), False, requestor=requestor)
        return int.from_bytes(buf, "little")

    def write(self, addr: int, size: int, value: int, *, requestor: Any = None) -> None:
        """Write the ``size``-byte ``value`` at ``addr`` through the bus."""
        _check_size(size)
        self.access(
            addr, memoryview((value & _MASKS[size]).to_bytes(size, "little")), True,
            requestor=requestor,
        )

    def _unclaimed_access(self, addr: int, data: memoryview, is_write: bool) -> None:
        self.unclaimed_count += 1
        policy = self._unclaimed
        value = int.from_bytes(data, "little") if is_write else None
        if policy == "raise":
            raise UnclaimedAccessError(self.name, addr, len(data), is_write, value)
        if not is_write:
            data[:] = _ONES.get(len(data)) or b"\xff" * len(data)
        if policy == "log":
            key = (addr, is_write)
            if key not in self._logged:
                self._logged.add(key)
                if is_write:
                    logger.warning("%s bus: unclaimed %d-byte write of %#x at %#x (ignored)",
                                   self.name, len(data), value, addr)
                else:
                    logger.warning("%s bus: unclaimed %d-byte read at %#x (returns all ones)",
                                   self.name, len(data), addr)

    def describe(self) -> str:
        """One line per mapping, for ``kvmcpu info`` and debugging."""
        return "\n".join(f"{self.name} {m.range} {m.name}" for m in self._mappings)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} {len(self._mappings)} devices>"


def _check_size(size: int) -> None:
    if size not in (1, 2, 4, 8):
        raise ValueError(f"access size must be 1, 2, 4 or 8 bytes, got {size}")


class IoBus(Bus):
    """The x86 IO-port space (ports 0..0xffff)."""

    def __init__(self, name: str = "io", *, unclaimed: str = "log") -> None:
        super().__init__(name, unclaimed=unclaimed, addr_limit=0x10000)


class MmioBus(Bus):
    """Memory-mapped IO: guest-physical addresses not backed by RAM."""

    def __init__(self, name: str = "mmio", *, unclaimed: str = "log") -> None:
        super().__init__(name, unclaimed=unclaimed, addr_limit=1 << 64)
