"""The checkpoint format on disk: a golden checkpoint from a real run (the mock
backend, 1 MiB of RAM, a few instructions, compression ``none`` so that the
bytes do not depend on the zlib build) is what this kvmcpu writes (the RAM
image byte for byte; m5.cpt's sections, keys and manifest, not the values a
change of the mock CPU's model may move) and restores. Regenerate after a
deliberate format change with ``KVMCPU_REGEN_GOLDEN=1`` (and bump
FORMAT_VERSION; the README and kvmcpu/sim/memimage.py describe the format)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from kvmcpu.sim.checkpoint import FORMAT_VERSION, CheckpointIn
from kvmcpu.system import CAUSE_HALTED, System

GOLDEN = Path(__file__).resolve().parents[1] / "unit" / "sim" / "golden" / "cpt.small"
#: mov ax,0x1234; mov bx,0x5678; cli; hlt (real mode at 0x7c00).
SMALL_GUEST = bytes.fromhex("b8 34 12 bb 78 56 fa f4")


def write_small(directory: Path) -> Path:
    with System(memory="1M", backend="mock") as system:
        system.load(SMALL_GUEST, fmt="flat")
        assert system.run(timeout=20).cause == CAUSE_HALTED
        return system.checkpoint(directory, compression="none")


def test_golden_checkpoint_is_what_this_kvmcpu_writes(tmp_path: Path) -> None:
    fresh = write_small(tmp_path / "cpt.small")
    if os.environ.get("KVMCPU_REGEN_GOLDEN") == "1":  # pragma: no cover - maintainer tool
        shutil.rmtree(GOLDEN, ignore_errors=True)
        shutil.copytree(fresh, GOLDEN)
    files = sorted(p.name for p in GOLDEN.iterdir())
    assert files == ["m5.cpt", "system.physmem.region0.pmem.chunks"]
    assert sorted(p.name for p in fresh.iterdir()) == files
    image = "system.physmem.region0.pmem.chunks"
    assert (fresh / image).read_bytes() == (GOLDEN / image).read_bytes()
    assert layout(fresh / "m5.cpt") == layout(GOLDEN / "m5.cpt")


def layout(m5cpt: Path) -> list[str]:
    """Section headers and keys, and the manifest's values but for m5.cpt's own digest."""
    out, manifest = [], False
    for line in m5cpt.read_text().splitlines():
        manifest = manifest or line == "[kvmcpu]"
        key = line.partition("=")[0]
        out.append(line if manifest and key != "m5cpt_sha256" else key)
    return out


def test_golden_checkpoint_restores() -> None:
    cp = CheckpointIn.load(GOLDEN)
    assert cp.version == FORMAT_VERSION == 2
    # Only the pages the loader and the guest wrote are stored.
    assert cp.image_size("system.physmem.region0") == 1 << 20
    assert 0 < cp.image_data_size("system.physmem.region0") <= 4 * 4096
    with System.restore(GOLDEN, backend="mock") as system:
        tc = system.cpu.getContext()
        assert (tc.rax & 0xFFFF, tc.rbx & 0xFFFF) == (0x1234, 0x5678)
        assert system.physmem.read(0x7C00, len(SMALL_GUEST)) == SMALL_GUEST
        assert system.run(timeout=20).cause == CAUSE_HALTED
