"""QEMU's test devices, added with ``--device NAME[,key=value...]`` (QEMU's
``-device`` spelling) or ``System(devices=[...])``.

==============================  ===============================================
``isa-debug-exit,iobase=,iosize=``  a write ends the run with status
                                (v << 1) | 1 (:mod:`~kvmcpu.devices.debug_exit`);
                                QEMU's defaults iobase=0x501, iosize=2. Given,
                                it replaces the platform's own at 0xf4.
``pc-testdev``                  QEMU's ``hw/misc/pc-testdev.c``: a 32-bit data
                                register at ports 0xe0-0xe3 (and byte-wise at
                                0xe8-0xeb), a 4-byte "flush page" port at 0xe4
                                (accepted; there is no host mapping to flush),
                                IRQ lines at 0x2000-0x2017 (a write of v to
                                0x2000 + n drives GSI n to ``v != 0``) and 64 KiB
                                of IO memory at 0xff000000.
``pci-testdev[,addr=SLOT]``     QEMU's ``hw/misc/pci-testdev.c``, 1b36:0005
                                (class 0x00ff): BAR0 4 KiB memory, BAR1 256
                                ports, no interrupt pin; at the first free slot
                                (2 on this bus) unless ``addr`` says.
==============================  ===============================================

pci-testdev's protocol: writing test number t (0-2) to offset 0 of a BAR
selects test ``t`` of that BAR (mmio: 0-2, portio: 3-5: no-eventfd,
wildcard-eventfd, datamatch-eventfd) and zeroes its count; reading the BAR
from offset 0 then returns the test's header (``test`` u8, ``width`` u8 = 1,
pad, ``offset`` le32, ``data`` u8, pad, ``count`` le32, the NUL-terminated
name such as ``mmio-no-eventfd``; past it, 0). A one-byte write at the
header's ``offset`` (2048 + t in BAR0, 128 + t in BAR1) is a doorbell: it
increments ``count`` when the test does not match data (wildcard) or the byte
is ``data`` (0xfa). Wider accesses are split into bytes, as QEMU's
``.impl.max_access_size = 1`` does. (kvmcpu has no ioeventfd: every
doorbell reaches the device.)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from kvmcpu.devices.base import Device, size_mask
from kvmcpu.devices.pci import PciFunction
from kvmcpu.errors import ConfigError

if TYPE_CHECKING:
    from kvmcpu.devices.irq import InterruptController
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = ["DEVICE_KEYS", "DeviceSpec", "PcTestDev", "PciTestDev", "device_spec",
           "parse_devices"]

#: The devices ``--device`` knows and the keys each takes.
DEVICE_KEYS: Dict[str, Tuple[str, ...]] = {
    "isa-debug-exit": ("iobase", "iosize"),
    "pc-testdev": (),
    "pci-testdev": ("addr",),
}

#: A parsed ``--device``: the name and its keys (ints).
DeviceSpec = Tuple[str, Dict[str, int]]


def device_spec(text: str) -> DeviceSpec:
    """Parse ``NAME[,key=value...]`` (values decimal or 0x-hex; ``addr`` may be
    ``SLOT`` or ``SLOT.FN`` in hex, as QEMU writes it).

    Raises:
        ConfigError: an unknown device or key, or a value that is not a number.
    """
    if not isinstance(text, str):
        raise TypeError(f"a device is a string like 'pci-testdev', got {type(text).__name__}")
    name, *pairs = text.split(",")
    name = name.strip()
    if name.startswith("driver="):
        name = name[len("driver="):]
    if name not in DEVICE_KEYS:
        raise ConfigError(f"unknown device {name!r} (known: {', '.join(sorted(DEVICE_KEYS))})")
    keys: Dict[str, int] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if key not in DEVICE_KEYS[name]:
            known = ", ".join(DEVICE_KEYS[name]) or "none"
            raise ConfigError(f"device {name}: unknown key {key!r} (known: {known})")
        if not eq:
            raise ConfigError(f"device {name}: key {key!r} needs a value ({key}=...)")
        try:
            if key == "addr":
                slot, _, fn = value.partition(".")
                keys[key] = int(slot, 16) * 8 + (int(fn, 16) if fn else 0)
            else:
                keys[key] = int(value, 0)
        except ValueError:
            raise ConfigError(f"device {name}: {key}={value!r} is not a number") from None
    _check(name, keys)
    return name, keys


def _check(name: str, keys: Mapping[str, int]) -> None:
    if name == "isa-debug-exit":
        base, size = keys.get("iobase", 0x501), keys.get("iosize", 2)
        if not 0 < size <= 8 or not 0 <= base or base + size > 0x10000:
            raise ConfigError(f"device isa-debug-exit: iobase={base:#x}, iosize={size:#x} is "
                              "not an IO port range (iosize 1-8)")
    if name == "pci-testdev" and "addr" in keys and not 0 <= keys["addr"] < 256:
        raise ConfigError(f"device pci-testdev: addr {keys['addr']:#x} is out of range")


def parse_devices(devices: Sequence[Union[str, DeviceSpec]]) -> List[DeviceSpec]:
    """``System(devices=...)``: strings or (name, keys) pairs, checked."""
    out: List[DeviceSpec] = []
    for dev in devices:
        if isinstance(dev, str):
            out.append(device_spec(dev))
        elif isinstance(dev, tuple) and len(dev) == 2 and isinstance(dev[0], str):
            name, keys = dev[0], dict(dev[1])
            if name not in DEVICE_KEYS:
                raise ConfigError(f"unknown device {name!r} (known: "
                                  f"{', '.join(sorted(DEVICE_KEYS))})")
            for key, value in keys.items():
                if key not in DEVICE_KEYS[name]:
                    raise ConfigError(f"device {name}: unknown key {key!r} (known: "
                                      f"{', '.join(DEVICE_KEYS[name]) or 'none'})")
                if not isinstance(value, int) or isinstance(value, bool):
                    raise TypeError(f"device {name}: {key} must be an int, got {value!r}")
            _check(name, keys)
            out.append((name, keys))
        else:
            raise TypeError(f"a device is a string or a (name, keys) pair, got {dev!r}")
    names = [name for name, _ in out]
    for once in ("isa-debug-exit", "pc-testdev"):
        if names.count(once) > 1:
            raise ConfigError(f"device {once} given {names.count(once)} times (one at most)")
    return out


def format_device(spec: DeviceSpec) -> str:
    """The ``--device`` text of a parsed spec (for checkpoints)."""
    name, keys = spec
    parts = [name]
    for key, value in keys.items():
        parts.append(f"addr={value >> 3:x}.{value & 7:x}" if key == "addr" else
                     f"{key}={value:#x}")
    return ",".join(parts)


# -- pc-testdev ------------------------------------------------------------------------
PC_TESTDEV_IOMEM = 0xFF000000
PC_TESTDEV_IOMEM_SIZE = 0x10000


class _Window:
    """One range of a device mapped on its own (offsets from its start)."""

    def __init__(self, name: str, read: Any, write: Any) -> None:
        self.name = name
        self.read = read
        self.write = write


class PcTestDev(Device):
    """pc-testdev (see the module docstring). :meth:`map` puts it on the buses."""

    _checkpoint_fields = ("ioport_data", "iomem")

    def __init__(self, name: str = "pc_testdev", *,
                 irqchip: Optional[InterruptController] = None) -> None:
        super().__init__(name)
        self.irqchip = irqchip
        self.ioport_data = 0
        self.iomem = bytearray(PC_TESTDEV_IOMEM_SIZE)
        self.flushes = 0
        self.irq_levels = [0] * 24

    def map(self, io: Any, mmio: Any) -> None:
        io.add(0xE0, 4, _Window(f"{self.name}.ioport", self._port_read, self._port_write))
        io.add(0xE4, 4, _Window(f"{self.name}.flush", lambda o, s: 0xFFFFFFFF, self._flush))
        io.add(0xE8, 4, _Window(f"{self.name}.ioport-byte", self._port_read, self._port_write))
        io.add(0x2000, 24, _Window(f"{self.name}.irq", lambda o, s: 0xFF, self._irq))
        mmio.add(PC_TESTDEV_IOMEM, PC_TESTDEV_IOMEM_SIZE, self)

    def _port_read(self, offset: int, size: int) -> int:
        return (self.ioport_data >> (8 * (offset & 3))) & size_mask(size)

    def _port_write(self, offset: int, size: int, value: int) -> None:
        shift = 8 * (offset & 3)
        mask = (size_mask(size) << shift) & 0xFFFFFFFF
        self.ioport_data = (self.ioport_data & ~mask) | ((value << shift) & mask)

    def _flush(self, offset: int, size: int, value: int) -> None:
        self.flushes += 1

    def _irq(self, offset: int, size: int, value: int) -> None:
        level = int(value & 0xFF != 0)
        self.irq_levels[offset] = level
        if self.irqchip is not None:
            self.irqchip.set_irq(offset, bool(level))

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.iomem[offset:offset + size].ljust(size, b"\0"), "little")

    def write(self, offset: int, size: int, value: int) -> None:
        end = min(offset + size, PC_TESTDEV_IOMEM_SIZE)
        self.iomem[offset:end] = value.to_bytes(size, "little")[:end - offset]


# -- pci-testdev -------------------------------------------------------------------------
_TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
_TYPES = ("mmio", "portio")
IOTEST_DATAMATCH = 0xFA
IOTEST_NOMATCH = 0xCE
IOTEST_IOSIZE = 128
IOTEST_MEMSIZE = 2048


class _TestBar:
    def __init__(self, dev: PciTestDev, kind: int) -> None:
        self.dev = dev
        self.kind = kind
        self.name = f"{dev.name}.{_TYPES[kind]}"

    def read(self, offset: int, size: int) -> int:
        return int.from_bytes(bytes(self.dev.read_byte(offset + i) for i in range(size)),
                              "little")

    def write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self.dev.write_byte(self.kind, offset + i, (value >> (8 * i)) & 0xFF)


class PciTestDev(PciFunction):
    """pci-testdev (see the module docstring)."""

    def __init__(self, name: str = "pci_testdev") -> None:
        super().__init__(name, 0x1B36, 0x0005, 0x00FF00, revision=0)
        self.current = -1
        self.counts = [0] * 6
        self.add_bar(0, 2 * IOTEST_MEMSIZE, io=False, device=_TestBar(self, 0))
        self.add_bar(1, 2 * IOTEST_IOSIZE, io=True, device=_TestBar(self, 1))

    @staticmethod
    def header(test: int, count: int = 0) -> bytes:
        """Test ``test``'s header and name, as QEMU lays it out."""
        kind, which = divmod(test, 3)
        match = _TESTS[which] != "wildcard-eventfd"
        offset = (IOTEST_MEMSIZE if kind == 0 else IOTEST_IOSIZE) + test
        name = f"{_TYPES[kind]}-{_TESTS[which]}".encode()
        return (bytes([test, 1, 0, 0]) + offset.to_bytes(4, "little")
                + bytes([IOTEST_DATAMATCH if match else IOTEST_NOMATCH, 0, 0, 0])
                + count.to_bytes(4, "little") + name + b"\0")

    def read_byte(self, offset: int) -> int:
        if self.current < 0:
            return 0
        buf = self.header(self.current, self.counts[self.current])
        return buf[offset] if offset + 1 < len(buf) else 0

    def write_byte(self, kind: int, offset: int, value: int) -> None:
        if offset == 0:
            self.current = -1
            if value < len(_TESTS):
                self.current = kind * len(_TESTS) + value
                self.counts[self.current] = 0
            return
        if self.current < 0:
            return
        test = self.current
        if offset != (IOTEST_MEMSIZE if test < 3 else IOTEST_IOSIZE) + test:
            return
        if _TESTS[test % 3] != "wildcard-eventfd" and value != IOTEST_DATAMATCH:
            return
        self.counts[test] = (self.counts[test] + 1) & 0xFFFFFFFF

    def reset(self) -> None:
        super().reset()
        self.current = -1

    def serialize(self, cp: CheckpointOut) -> None:
        super().serialize(cp)
        cp.param_out("current", self.current)
        cp.param_out("counts", list(self.counts))

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
        self.current = cp.current.get_int("current")
        self.counts = cp.current.get_int_list("counts", 6)
