#!/usr/bin/env python3
"""Fetch Debian's cloud kernel and build a busybox initramfs to boot it with kvmcpu.

    python guests/linux/build.py --out DIR [--kernel-package linux-image-cloud-amd64]

Needs ``apt-get`` (with a package list: ``apt-get update`` first) and
``dpkg-deb``; it downloads with ``apt-get download`` into ``DIR`` (never into
the source tree, and nothing here runs at test time) and writes:

* ``DIR/vmlinuz``: the kernel of the package (the metapackage's
  ``linux-image-*`` dependency, found with ``apt-cache depends``);
* ``DIR/initramfs.cpio``: an initramfs (cpio "newc", written here in Python)
  holding ``/bin/busybox`` from ``busybox-static`` and an ``/init`` that prints
  :data:`MARKER`, then powers off through ACPI S5 (SLP_EN in PM1a_CNT at port 0x605,
  written through ``/dev/port``: ``kvmcpu run`` status 0, cause "power off"), with
  isa-debug-exit (0 to port 0xf4: status 1) and ``poweroff -f`` as fallbacks.

Then (see README.md beside this file)::

    kvmcpu run --kernel DIR/vmlinuz --initrd DIR/initramfs.cpio --memory 512M \\
        --append "console=ttyS0 noapic acpi=off pci=off nosmp"
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, Tuple

#: What /init prints once user space runs.
MARKER = "kvmcpu-initramfs: user space reached"

INIT = f"""#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
/bin/busybox mount -t devtmpfs dev /dev
echo "{MARKER}"
/bin/busybox uname -r
# ACPI S5 without the kernel's ACPI (acpi=off): SLP_EN with SLP_TYP 0 in PM1a_CNT's high
# byte (0x605: the PIIX4 PM block at 0x600, as SeaBIOS sets it on QEMU's pc machine):
# kvmcpu run ends with status 0, cause "power off".
/bin/busybox printf '\\040' | /bin/busybox dd of=/dev/port bs=1 seek=1541 count=1 2>/dev/null
# else isa-debug-exit: writing 0 to port 0xf4 ends the run with status 1.
/bin/busybox printf '\\000' | /bin/busybox dd of=/dev/port bs=1 seek=244 count=1 2>/dev/null
/bin/busybox poweroff -f
"""


def _run(cmd: List[str], cwd: Path) -> str:
    return subprocess.run(cmd, cwd=cwd, check=True, capture_output=True, text=True).stdout


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        sys.exit(f"build.py: needs {', '.join(missing)} (a Debian system with apt)")


def _download(package: str, into: Path) -> Path:
    _run(["apt-get", "download", package], into)
    debs = sorted(into.glob(f"{package}_*.deb"))
    if not debs:
        sys.exit(f"build.py: apt-get download {package} gave no .deb")
    return debs[-1]


def kernel_package(meta: str, work: Path) -> str:
    """The linux-image-* package ``meta`` depends on (the metapackage itself if none)."""
    out = _run(["apt-cache", "depends", meta], work)
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends:") and "linux-image-" in line:
            return line.split(":", 1)[1].strip()
    return meta


def newc(entries: List[Tuple[str, int, bytes]]) -> bytes:
    """A cpio archive in the "newc" format the kernel unpacks: (name, mode, data)."""
    out = bytearray()

    def add(name: str, mode: int, data: bytes, ino: int) -> None:
        raw = name.encode() + b"\0"
        fields = [ino, mode, 0, 0, 1, 0, len(data), 0, 0, 0, 0, len(raw), 0]
        out.extend(b"070701" + b"".join(b"%08X" % f for f in fields) + raw)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data) in enumerate(entries, start=1):
        add(name, mode, data, ino)
    add("TRAILER!!!", 0, b"", 0)
    out.extend(b"\0" * (-len(out) % 512))
    return bytes(out)


def build_initramfs(busybox: bytes) -> bytes:
    d, f, x = 0o040755, 0o100644, 0o100755
    return newc([("bin", d, b""), ("bin/busybox", x, busybox), ("bin/sh", 0o120777, b"busybox"),
                 ("dev", d, b""), ("proc", d, b""), ("sys", d, b""),
                 ("init", x, INIT.encode()), ("etc", d, b""), ("etc/hostname", f, b"kvmcpu\n")])


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    parser.add_argument("--kernel-package", default="linux-image-cloud-amd64")
    args = parser.parse_args(argv)
    _need("apt-get", "apt-cache", "dpkg-deb")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="kvmcpu-linux-") as tmp:
        work = Path(tmp)
        pkg = kernel_package(args.kernel_package, work)
        kdeb = _download(pkg, work)
        _run(["dpkg-deb", "-x", str(kdeb), "kernel"], work)
        vmlinuz = sorted((work / "kernel" / "boot").glob("vmlinuz-*"))
        if not vmlinuz:
            sys.exit(f"build.py: {kdeb.name} has no /boot/vmlinuz-*")
        shutil.copyfile(vmlinuz[-1], out / "vmlinuz")
        bdeb = _download("busybox-static", work)
        _run(["dpkg-deb", "-x", str(bdeb), "busybox"], work)
        busybox = (work / "busybox" / "bin" / "busybox").read_bytes()
        (out / "initramfs.cpio").write_bytes(build_initramfs(busybox))
    print(f"{out / 'vmlinuz'} ({vmlinuz[-1].name} from {pkg})")
    print(f"{out / 'initramfs.cpio'} (busybox-static, /init prints {MARKER!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
