#!/usr/bin/env python3
"""Assemble every guest source into the image ``NAME.bin`` beside it.

The sources are the test fixtures in ``guests/*.asm`` and the bootable guests
that ship with the package in ``kvmcpu/guests/*.asm`` (found at run time by
``kvmcpu.guests.path``). Both include the shared files in ``guests/lib/``
(``%include "lib/NAME.inc"``). The built images are committed, so the tests
and tox need no assembler; run this after editing a source or an include file
(needs ``nasm``):

    python guests/build.py            # rebuild every image in place
    python guests/build.py --check    # rebuild into a temporary directory and
                                      # fail if any committed image differs
    python guests/build.py --out DIR  # write the images into DIR instead
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List

GUESTS_DIR = Path(__file__).resolve().parent
#: The bootable guests shipped as package data (``kvmcpu.guests``).
BOOTABLE_DIR = GUESTS_DIR.parent / "kvmcpu" / "guests"


def sources() -> List[Path]:
    """Every assembly source (not the ``lib/*.inc`` they include): the fixtures,
    then the bootable guests, each sorted by name."""
    return sorted(GUESTS_DIR.glob("*.asm")) + sorted(BOOTABLE_DIR.glob("*.asm"))


def nasm_path() -> str | None:
    """The nasm executable, or None when it is not installed."""
    return shutil.which("nasm")


def include_prefix() -> str:
    """nasm's ``-i`` prefix: ``guests/`` (absolute), so ``%include "lib/uart.inc"``
    finds ``guests/lib/uart.inc`` from any current directory. nasm pastes the
    prefix in front of the file name, so it must end with a separator."""
    return str(GUESTS_DIR) + os.sep


def build(out_dir: Path | None, nasm: str = "nasm") -> List[Path]:
    """Assemble every source into ``out_dir`` as ``NAME.bin`` (None: beside its
    source); returns the images."""
    if out_dir is not None:
        out_dir.mkdir(parents=True, exist_ok=True)
    images = []
    for src in sources():
        dest = (src.parent if out_dir is None else out_dir) / (src.stem + ".bin")
        subprocess.run([nasm, "-f", "bin", "-i", include_prefix(), "-o", str(dest), str(src)],
                       check=True)
        images.append(dest)
    return images


def check(nasm: str = "nasm") -> List[str]:
    """Rebuild into a temporary directory; returns the names whose bytes differ."""
    with tempfile.TemporaryDirectory() as tmp:
        differ = []
        for src, image in zip(sources(), build(Path(tmp), nasm)):
            committed = src.with_suffix(".bin")
            if not committed.exists() or committed.read_bytes() != image.read_bytes():
                differ.append(image.name)
        return differ


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="fail if a committed image differs from a fresh build")
    parser.add_argument("--out", type=Path, default=None, help="output directory")
    args = parser.parse_args(argv)
    nasm = nasm_path()
    if nasm is None:
        print("build.py: nasm is not installed (apt-get install nasm)", file=sys.stderr)
        return 1
    if args.check:
        differ = check(nasm)
        if differ:
            print(f"build.py: out of date: {', '.join(differ)}", file=sys.stderr)
            return 1
        print(f"build.py: {len(sources())} images up to date")
        return 0
    images = build(args.out, nasm)
    for image in images:
        print(f"{image.name:16s} {image.stat().st_size:5d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
