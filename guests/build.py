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
        if _header(src).startswith("; build: nasm -f elf64, ld"):
            _build_linked(src, dest.resolve(), nasm)
        else:
            subprocess.run([nasm, "-f", "bin", "-i", include_prefix(), "-o", str(dest),
                            str(src)], check=True)
        images.append(dest)
    return images


def _header(src: Path) -> str:
    return src.read_text().split("\n", 1)[0]


#: How a source whose first line is ``; build: nasm -f elf64, ld`` is linked: a
#: static ELF64 with its symbol table at 1 MiB (one RWX segment, like hello64's).
LD_ARGS = ["-static", "-nostdlib", "-N", "-Ttext=0x100000", "-e", "_start",
           "--build-id=none", "--no-warn-rwx-segments"]


def _build_linked(src: Path, dest: Path, nasm: str) -> None:
    """Assemble ``src`` to an object file and link it with ld (needs binutils).
    nasm runs in the source's directory on its bare name, so the FILE symbol it
    records does not depend on where the tree is."""
    ld = shutil.which("ld")
    if ld is None:
        raise SystemExit(f"build.py: {src.name} needs ld (apt-get install binutils)")
    with tempfile.TemporaryDirectory() as tmp:
        obj = Path(tmp) / (src.stem + ".o")
        subprocess.run([nasm, "-f", "elf64", "-i", include_prefix(), "-o", str(obj), src.name],
                       check=True, cwd=src.parent)
        subprocess.run([ld, *LD_ARGS, "-o", str(dest), str(obj)], check=True)
    dest.chmod(0o644)


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
