"""The committed guest images are what their sources assemble to."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

GUESTS = Path(__file__).resolve().parent.parent.parent / "guests"


def test_every_source_has_a_committed_image() -> None:
    sources = sorted(GUESTS.glob("*.asm"))
    assert sources, "no guest sources"
    for src in sources:
        assert src.with_suffix(".bin").is_file(), f"{src.name} has no committed image"
        header = src.read_text().lstrip().splitlines()[0]
        assert header.startswith(";"), f"{src.name} does not start with a comment saying what it is"


@pytest.mark.skipif(shutil.which("nasm") is None, reason="nasm is not installed")
def test_rebuild_matches_committed_images(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(GUESTS / "build.py"), "--out", str(tmp_path)],
        check=True, capture_output=True,
    )
    for built in sorted(tmp_path.glob("*.bin")):
        committed = GUESTS / built.name
        assert committed.read_bytes() == built.read_bytes(), (
            f"{built.name} is stale: run python guests/build.py"
        )


def test_spin_and_out_loop_are_mode_independent() -> None:
    # The tests run these two in real mode and in long mode: their bytes must
    # mean the same in 16- and 64-bit code.
    assert (GUESTS / "spin.bin").read_bytes() == b"\xeb\xfe"
    assert (GUESTS / "out_loop.bin").read_bytes() == b"\xee\xeb\xfd"
