"""AddrRange and the IO/MMIO Bus: mapping, overlap errors, dispatch, unclaimed policies."""

from __future__ import annotations

import logging
from typing import Any, List, Tuple

import pytest

from kvmcpu.errors import ConfigError, GuestError
from kvmcpu.mem import AddrRange, Bus, IoBus, MmioBus, UnclaimedAccessError


class Recorder:
    """A device that records accesses and answers reads with a fixed pattern."""

    def __init__(self, name: str = "rec", value: int = 0x1122334455667788) -> None:
        self.name = name
        self.value = value
        self.log: List[Tuple[str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        self.log.append(("r", offset, size, 0))
        return self.value

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append(("w", offset, size, value))


class WithRequestor(Recorder):
    def read(self, offset: int, size: int, requestor: Any = None) -> int:
        self.log.append(("r", offset, size, id(requestor)))
        return 7


def test_addr_range_basics() -> None:
    r = AddrRange(0x3F8, 8)
    assert r.end == 0x400 and r.last == 0x3FF
    assert r.contains(0x3F8) and r.contains(0x3FF) and not r.contains(0x400)
    assert r.contains(0x3FC, 4) and not r.contains(0x3FE, 4)
    assert 0x3FA in r
    assert r.overlaps(AddrRange(0x3FF, 1)) and not r.overlaps(AddrRange(0x400, 4))
    assert AddrRange.from_bounds(0x10, 0x20) == AddrRange(0x10, 0x10)
    assert str(r) == "[0x3f8, 0x400)"
    with pytest.raises(ValueError):
        AddrRange(0, 0)
    with pytest.raises(ValueError):
        AddrRange(-1, 4)


def test_overlap_error_names_both_devices_and_ranges() -> None:
    bus = IoBus()
    bus.add(0x3F8, 8, Recorder("uart0"))
    with pytest.raises(ConfigError) as err:
        bus.add(0x3FC, 8, Recorder("uart1"))
    msg = str(err.value)
    assert "uart1" in msg and "uart0" in msg
    assert "[0x3fc, 0x404)" in msg and "[0x3f8, 0x400)" in msg
    assert "io bus" in msg
    assert isinstance(err.value, GuestError)


def test_add_rejects_bad_ranges_and_non_devices() -> None:
    bus = IoBus()
    with pytest.raises(ConfigError, match="outside"):
        bus.add(0xFFFE, 4, Recorder())
    with pytest.raises(ConfigError, match="outside"):
        bus.add(0x10, 0, Recorder())
    with pytest.raises(ConfigError, match="no read"):
        bus.add(0x10, 1, object(), name="blob")


def test_dispatch_offsets_sizes_and_little_endian_bytes() -> None:
    bus = MmioBus()
    dev = Recorder("dev", value=0xAABBCCDD)
    bus.add(0x1000, 0x100, dev)
    data = bytearray(2)
    assert bus.access(0x1010, memoryview(data), False) == 0
    assert data == b"\xdd\xcc"  # masked to 2 bytes, little-endian
    bus.access(0x1020, memoryview(b"\x01\x02\x03\x04"), True)
    assert dev.log[-1] == ("w", 0x20, 4, 0x04030201)
    assert bus.read(0x1000, 8) == 0xAABBCCDD
    bus.write(0x10FF, 1, 0x1FF)
    assert dev.log[-1] == ("w", 0xFF, 1, 0xFF)


def test_lookup_with_many_devices_and_cache() -> None:
    bus = IoBus()
    devs = [Recorder(f"d{i}") for i in range(50)]
    for i, d in enumerate(devs):
        bus.add(0x1000 + i * 0x10, 8, d)
    for i in reversed(range(50)):
        assert bus.device_at(0x1000 + i * 0x10 + 7) is devs[i]
        assert bus.device_at(0x1000 + i * 0x10 + 8) is None
    assert bus.device_at(0xFFF) is None
    assert [m.name for m in bus.mappings][:2] == ["d0", "d1"]
    bus.remove(devs[3])
    assert bus.device_at(0x1030) is None
    with pytest.raises(ConfigError):
        bus.remove(devs[3])


def test_requestor_passed_only_to_devices_that_take_it() -> None:
    bus = MmioBus()
    plain, special = Recorder("plain"), WithRequestor("special")
    bus.add(0x0, 0x10, plain)
    bus.add(0x10, 0x10, special)
    who = object()
    bus.read(0x0, 4, requestor=who)
    assert bus.read(0x14, 4, requestor=who) == 7
    assert special.log[-1] == ("r", 4, 4, id(who))


def test_latency_from_device_or_argument() -> None:
    bus = IoBus()
    dev = Recorder()
    dev.latency = 500  # type: ignore[attr-defined]
    bus.add(0x10, 1, dev)
    bus.add(0x20, 1, Recorder(), latency=42)
    assert bus.access(0x10, memoryview(bytearray(1)), False) == 500
    assert bus.access(0x20, memoryview(bytearray(1)), False) == 42


def test_unclaimed_ignore_reads_all_ones() -> None:
    bus = IoBus(unclaimed="ignore")
    data = bytearray(4)
    bus.access(0x1234, memoryview(data), False)
    assert data == b"\xff\xff\xff\xff"
    bus.write(0x1234, 1, 5)
    assert bus.unclaimed_count == 2


def test_unclaimed_log_once_per_address(caplog: pytest.LogCaptureFixture) -> None:
    bus = IoBus()
    assert bus.unclaimed == "log"
    with caplog.at_level(logging.WARNING, logger="kvmcpu.mem"):
        for _ in range(3):
            assert bus.read(0x61, 1) == 0xFF
        bus.write(0x61, 1, 0x12)
        bus.read(0x62, 1)
    records = [r for r in caplog.records if r.name == "kvmcpu.mem"]
    assert len(records) == 3  # read 0x61 once, write 0x61 once, read 0x62 once
    assert "0x61" in records[0].getMessage() and "io bus" in records[0].getMessage()
    assert "0x12" in records[1].getMessage()


def test_unclaimed_raise_names_bus_address_size_direction() -> None:
    bus = MmioBus(unclaimed="raise")
    with pytest.raises(UnclaimedAccessError) as err:
        bus.write(0xFEE00000, 4, 0xABCD)
    e = err.value
    assert (e.bus, e.addr, e.size, e.is_write, e.value) == ("mmio", 0xFEE00000, 4, True, 0xABCD)
    assert "mmio bus" in str(e) and "0xfee00000" in str(e) and "4-byte write" in str(e)
    assert isinstance(e, GuestError)
    with pytest.raises(UnclaimedAccessError, match="2-byte read at 0x10"):
        bus.read(0x10, 2)


def test_bad_policy_and_size() -> None:
    with pytest.raises(ConfigError, match="unclaimed policy"):
        Bus("io", unclaimed="explode")
    with pytest.raises(ValueError):
        IoBus().read(0, 3)
