"""QEMU's firmware configuration device (fw_cfg), traditional IO-port interface.

The guest writes a 16-bit key to the selector port (0x510) and then reads the
item's bytes one at a time from the data port (0x511); reading past the end
of an item (or reading an unknown key) returns 0. Items follow QEMU's
``docs/specs/fw_cfg.rst``: little-endian integers, the signature ``"QEMU"``,
``FW_CFG_ID`` = 1 (traditional interface, no DMA), and the file directory
(key 0x19): a big-endian 32-bit count, then per file a big-endian 32-bit
size, 16-bit selector, 16-bit reserved and a 56-byte NUL-padded name. Files
added with :meth:`FwCfg.add_file` get selectors from 0x20 on.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Dict, List, Tuple

from kvmcpu.devices.base import Device
from kvmcpu.errors import ConfigError

if TYPE_CHECKING:
    from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut

__all__ = [
    "FW_CFG_PORT",
    "FW_CFG_SIGNATURE",
    "FW_CFG_ID",
    "FW_CFG_UUID",
    "FW_CFG_RAM_SIZE",
    "FW_CFG_NOGRAPHIC",
    "FW_CFG_NB_CPUS",
    "FW_CFG_MAX_CPUS",
    "FW_CFG_FILE_DIR",
    "FW_CFG_FILE_FIRST",
    "FW_CFG_MAX_FILE_PATH",
    "FwCfg",
]

#: The selector port; the data port is the next one.
FW_CFG_PORT = 0x510
FW_CFG_SIGNATURE = 0x0000
FW_CFG_ID = 0x0001
FW_CFG_UUID = 0x0002
FW_CFG_RAM_SIZE = 0x0003
FW_CFG_NOGRAPHIC = 0x0004
FW_CFG_NB_CPUS = 0x0005
FW_CFG_MAX_CPUS = 0x000F
FW_CFG_FILE_DIR = 0x0019
FW_CFG_FILE_FIRST = 0x0020
FW_CFG_WRITE_CHANNEL = 0x4000
FW_CFG_ARCH_LOCAL = 0x8000
#: File names are at most this long, the terminating NUL included.
FW_CFG_MAX_FILE_PATH = 56
#: FW_CFG_ID bit 0: the traditional interface.
FW_CFG_VERSION = 0x01


class FwCfg(Device):
    """fw_cfg: map at 0x510 with 2 ports (selector at offset 0, data at offset 1).

    Args:
        name: device name.
        ram_size: bytes of guest RAM (FW_CFG_RAM_SIZE).
        nb_cpus: CPUs present (FW_CFG_NB_CPUS).
        max_cpus: CPUs possible (FW_CFG_MAX_CPUS; default ``nb_cpus``).
        uuid: the 16-byte machine UUID (default all zero).
    """

    _checkpoint_fields = ("selector", "offset")

    def __init__(self, name: str = "fw_cfg", *, ram_size: int = 0, nb_cpus: int = 1,
                 max_cpus: int | None = None, uuid: bytes = bytes(16)) -> None:
        super().__init__(name)
        if len(uuid) != 16:
            raise ConfigError(f"fw_cfg uuid must be 16 bytes, got {len(uuid)}")
        self._items: Dict[int, bytes] = {}
        self._files: List[Tuple[str, int]] = []  # (name, key), in selector order
        self.selector = 0
        self.offset = 0
        self.add_bytes(FW_CFG_SIGNATURE, b"QEMU")
        self.add_i32(FW_CFG_ID, FW_CFG_VERSION)
        self.add_bytes(FW_CFG_UUID, uuid)
        self.add_i64(FW_CFG_RAM_SIZE, ram_size)
        self.add_i16(FW_CFG_NOGRAPHIC, 1)
        self.add_i16(FW_CFG_NB_CPUS, nb_cpus)
        self.add_i16(FW_CFG_MAX_CPUS, nb_cpus if max_cpus is None else max_cpus)
        self._rebuild_dir()

    # -- items --------------------------------------------------------------------------
    def add_bytes(self, key: int, data: bytes) -> None:
        """Set item ``key`` to ``data`` (replacing it)."""
        if not 0 <= key <= 0xFFFF:
            raise ConfigError(f"fw_cfg key must be 16-bit, got {key:#x}")
        self._items[key & ~FW_CFG_WRITE_CHANNEL] = bytes(data)

    def add_i16(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<H", value))

    def add_i32(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<I", value))

    def add_i64(self, key: int, value: int) -> None:
        self.add_bytes(key, struct.pack("<Q", value))

    def add_file(self, name: str, data: bytes) -> int:
        """Publish ``data`` as file ``name`` (e.g. ``etc/e820``); returns its selector.

        Raises:
            ConfigError: the name is empty, too long (55 bytes at most), or taken.
        """
        encoded = name.encode()
        if not encoded or len(encoded) >= FW_CFG_MAX_FILE_PATH or b"\0" in encoded:
            raise ConfigError(
                f"fw_cfg file name {name!r} must be 1-{FW_CFG_MAX_FILE_PATH - 1} bytes"
            )
        if any(n == name for n, _ in self._files):
            raise ConfigError(f"fw_cfg file {name!r} is already present")
        key = FW_CFG_FILE_FIRST + len(self._files)
        if key >= FW_CFG_WRITE_CHANNEL:
            raise ConfigError("fw_cfg has no free file selector left")
        self._files.append((name, key))
        self.add_bytes(key, data)
        self._rebuild_dir()
        return key

    def _rebuild_dir(self) -> None:
        out = [struct.pack(">I", len(self._files))]
        for name, key in self._files:
            out.append(struct.pack(">IHH56s", len(self._items[key]), key, 0, name.encode()))
        self._items[FW_CFG_FILE_DIR] = b"".join(out)

    def item(self, key: int) -> bytes | None:
        """The bytes of item ``key`` (None when absent)."""
        return self._items.get(key & ~FW_CFG_WRITE_CHANNEL)

    @property
    def files(self) -> Dict[str, int]:
        """File name -> selector."""
        return dict(self._files)

    # -- ports --------------------------------------------------------------------------
    def write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.selector = value & 0xFFFF
            self.offset = 0
        # Data-port writes were removed from the interface (QEMU 2.4); ignored.

    def read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0  # the selector register is write-only
        data = self._items.get(self.selector & ~FW_CFG_WRITE_CHANNEL, b"")
        start = self.offset
        chunk = data[start : start + size]
        self.offset = start + size
        # Wider reads return consecutive bytes in memory order (string-preserving).
        return int.from_bytes(chunk.ljust(size, b"\0"), "little")

    # -- checkpoints --------------------------------------------------------------------
    def serialize(self, cp: CheckpointOut) -> None:
        """The selector and offset (items are configuration, rebuilt by the System)."""
        super().serialize(cp)

    def unserialize(self, cp: CheckpointIn) -> None:
        super().unserialize(cp)
