"""What the host can give guest RAM: sizes in messages, /proc/meminfo, KVM's paging mode."""

from __future__ import annotations

from pathlib import Path

import pytest

from kvmcpu.errors import ConfigError
from kvmcpu.mem import physmem
from kvmcpu.mem.physmem import PhysicalMemory, format_size, kvm_shadow_paging


@pytest.mark.parametrize("nbytes, text", [
    (100 << 40, "100 TiB"), (1 << 40, "1 TiB"), (3 << 29, "1.5 GiB"), (128 << 20, "128 MiB"),
    (4096, "4 KiB"), (12, "12 bytes"),
])
def test_format_size(nbytes: int, text: str) -> None:
    assert format_size(nbytes) == text


def test_kvm_shadow_paging_reads_tdp_mmu(tmp_path: Path) -> None:
    assert kvm_shadow_paging(str(tmp_path)) is False  # no kvm module: no such cost
    params = tmp_path / "kvm" / "parameters"
    params.mkdir(parents=True)
    (params / "tdp_mmu").write_text("N\n")
    assert kvm_shadow_paging(str(tmp_path)) is True
    (params / "tdp_mmu").write_text("Y\n")
    assert kvm_shadow_paging(str(tmp_path)) is False


def test_ram_the_host_cannot_map_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_room(size: int, *, noreserve: bool = True) -> None:
        raise OSError(12, "Cannot allocate memory")

    monkeypatch.setattr(physmem, "HostMemory", no_room)
    monkeypatch.setattr(physmem, "host_meminfo",
                        lambda: {"MemTotal": 16 << 30, "MemAvailable": 12 << 30})
    with pytest.raises(ConfigError) as err:
        PhysicalMemory("64G")
    assert str(err.value) == (
        "guest RAM of 64 GiB: the host cannot map it (Cannot allocate memory); the host has "
        "16 GiB of RAM (12 GiB available), and guest RAM is reserved lazily: only the pages "
        "the guest touches take host memory, but the whole size must fit in the address space")
