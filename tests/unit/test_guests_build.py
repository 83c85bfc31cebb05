"""The committed guest images are what their sources assemble to (the test fixtures
in guests/ and the bootable guests shipped in kvmcpu/guests/)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
GUESTS = ROOT / "guests"
BOOTABLE = ROOT / "kvmcpu" / "guests"


def _sources() -> list:
    return sorted(GUESTS.glob("*.asm")) + sorted(BOOTABLE.glob("*.asm"))


def test_every_source_has_a_committed_image() -> None:
    sources = _sources()
    assert sources, "no guest sources"
    assert {s.stem for s in BOOTABLE.glob("*.asm")} == {
        "hello", "hello64", "sieve3", "irq", "checkpoint", "debugme", "smpdebug"}
    for src in sources:
        assert src.with_suffix(".bin").is_file(), f"{src.name} has no committed image"
        header = src.read_text().lstrip().splitlines()[0]
        assert header.startswith(";"), f"{src.name} does not start with a comment saying what it is"
    # Fixtures and bootable guests are apart: no name in both places.
    assert not {p.name for p in GUESTS.glob("*.bin")} & {p.name for p in BOOTABLE.glob("*.bin")}


@pytest.mark.skipif(shutil.which("nasm") is None or shutil.which("ld") is None,
                    reason="nasm or ld (binutils) is not installed")
def test_rebuild_matches_committed_images(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(GUESTS / "build.py"), "--out", str(tmp_path)],
        check=True, capture_output=True,
    )
    built = sorted(tmp_path.glob("*.bin"))
    assert {b.stem for b in built} == {s.stem for s in _sources()}
    for image in built:
        committed = next(s for s in _sources() if s.stem == image.stem).with_suffix(".bin")
        assert committed.read_bytes() == image.read_bytes(), (
            f"{committed} is stale: run python guests/build.py"
        )


@pytest.mark.skipif(shutil.which("nasm") is None or shutil.which("ld") is None,
                    reason="nasm or ld (binutils) is not installed")
def test_build_check_passes_on_the_committed_images() -> None:
    done = subprocess.run([sys.executable, str(GUESTS / "build.py"), "--check"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert f"{len(_sources())} images up to date" in done.stdout


def test_spin_and_out_loop_are_mode_independent() -> None:
    # The tests run these two in real mode and in long mode: their bytes must
    # mean the same in 16- and 64-bit code.
    assert (GUESTS / "spin.bin").read_bytes() == b"\xeb\xfe"
    assert (GUESTS / "out_loop.bin").read_bytes() == b"\xee\xeb\xfd"
