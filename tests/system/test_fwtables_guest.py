"""guests/fwtables.bin: a kernel finds and walks the firmware tables, on QEMU and kvmcpu.

The guest (guests/fwtables.asm) searches the RSDP as ACPI specifies, walks the
RSDT (and the XSDT), the FADT's DSDT and FACS, the MADT's entries, the MP
table and the SMBIOS structures, and prints one line per structure. The same
image runs on QEMU's ``pc`` machine (SeaBIOS's tables, QEMU's content) and on
kvmcpu (kvmcpu/firmware/) on both backends. kvmcpu's output is the same on the
mock and on KVM, byte for byte. Against QEMU the *structure* is compared: each
table is found by the same search, every checksum is valid, the same tables
are reached the same way, the MADT and MP tables have the same entry types and
one processor entry per CPU. The values differ, and these differences are
expected:

* addresses and lengths (SeaBIOS puts the ACPI tables at the top of RAM, kvmcpu at 0xf8000);
* revisions: QEMU's RSDP is revision 0 (so no XSDT) and its FADT revision 1;
  kvmcpu's are 2 (with an XSDT listing the same tables) and 3;
* a table QEMU has and kvmcpu does not: WAET (Windows' emulated-devices hint);
* MADT: QEMU also overrides IRQ 5 (kvmcpu's overrides are a subset);
* MP: SeaBIOS lists a PCI bus and its devices' interrupt lines (two buses,
  other IO interrupt counts); kvmcpu lists the ISA bus and its 16 lines;
* SMBIOS: QEMU also has type 3 (enclosure) and 32 (boot status).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Callable, Dict, List

import pytest

from kvmcpu.system import CAUSE_DEBUG_EXIT, System

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = str(ROOT / "guests" / "fwtables.bin")
QEMU = shutil.which("qemu-system-x86_64")
MakeSystem = Callable[..., System]

#: kvmcpu's output with 128 MiB of RAM and one CPU (the same on both backends).
KVMCPU_TABLES = b"""\
RSDP at=000f0000 rev=2 csum=ok xcsum=ok
RSDT at=000f8910 len=00000030 rev=1 csum=ok n=3
TABLE sig=FACP at=000f8760 len=000000f4 rev=3 csum=ok
TABLE sig=DSDT at=000f8040 len=00000719 rev=2 csum=ok
FACS at=000f8000 len=00000040
TABLE sig=APIC at=000f8860 len=0000006e rev=1 csum=ok
MADT types= 0 1 2/0 2/9 2/10 2/11 4
TABLE sig=HPET at=000f88d0 len=00000038 rev=1 csum=ok
XSDT at=000f8940 len=0000003c rev=1 csum=ok n=3
TABLE sig=FACP at=000f8760 len=000000f4 rev=3 csum=ok
TABLE sig=DSDT at=000f8040 len=00000719 rev=2 csum=ok
FACS at=000f8000 len=00000040
TABLE sig=APIC at=000f8860 len=0000006e rev=1 csum=ok
MADT types= 0 1 2/0 2/9 2/10 2/11 4
TABLE sig=HPET at=000f88d0 len=00000038 rev=1 csum=ok
MP at=000f0030 csum=ok tcsum=ok n=21 types= 0 1 2 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 3 4 4
SMBIOS ver=2.8 csum=ok dmicsum=ok n=7 types= 0 1 4 16 17 19 127
END
"""


def parse(output: bytes) -> List[Dict[str, str]]:
    lines = []
    for line in output.decode().splitlines():
        kind, _, rest = line.partition(" ")
        fields: Dict[str, str] = {"kind": kind}
        if "types=" in rest:
            rest, _, types = rest.partition("types=")
            fields["types"] = types.strip()
        for item in rest.split():
            key, _, value = item.partition("=")
            fields[key] = value
        lines.append(fields)
    return lines


def structure(output: bytes) -> Dict[str, object]:
    """What must agree: tables reached, checksums, entry types, per-CPU entries."""
    lines = parse(output)
    assert lines[-1]["kind"] == "END"
    assert all(v != "bad" for line in lines for v in line.values()), output
    by_kind: Dict[str, List[Dict[str, str]]] = {}
    for line in lines:
        by_kind.setdefault(line["kind"], []).append(line)
    rsdt_end = next(i for i, line in enumerate(lines) if line["kind"] in ("XSDT", "MP",
                                                                          "SMBIOS", "END"))
    rsdt_tables = [line["sig"] for line in lines[:rsdt_end] if line["kind"] == "TABLE"]
    madt = by_kind["MADT"][0]["types"].split()
    mp = by_kind["MP"][0]["types"].split()
    return {
        "rsdt": rsdt_tables,
        "facs_len": by_kind["FACS"][0]["len"],
        "madt_types": sorted({t.split("/")[0] for t in madt}),
        "madt_cpus": madt.count("0"),
        "madt_overrides": {t for t in madt if t.startswith("2/")},
        "mp_types": sorted(set(mp)),
        "mp_cpus_ioapics_lints": (mp.count("0"), mp.count("2"), mp.count("4")),
        "smbios_ver": by_kind["SMBIOS"][0]["ver"],
        "smbios_types": by_kind["SMBIOS"][0]["types"].split(),
    }


def run_kvmcpu(make_system: MakeSystem, backend: str) -> bytes:
    system = make_system(memory="128M", backend=backend)
    system.load(IMAGE)
    result = system.run(max_seconds=5, timeout=60)
    assert (result.cause, result.status) == (CAUSE_DEBUG_EXIT, 1)
    return bytes(system.serial.output)


def test_kvmcpu_tables(make_system: MakeSystem, backend_name: str) -> None:
    assert run_kvmcpu(make_system, backend_name) == KVMCPU_TABLES


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
def test_same_structure_as_qemu(tmp_path: Path) -> None:
    assert QEMU is not None
    done = subprocess.run(
        [QEMU, "-accel", "kvm", "-machine", "pc", "-m", "128", "-kernel", IMAGE, "-serial",
         "stdio", "-display", "none", "-monitor", "none", "-no-reboot",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
        capture_output=True, timeout=120, cwd=tmp_path, stdin=subprocess.DEVNULL)
    assert done.returncode == 1, done.stdout + done.stderr
    qemu, mine = structure(done.stdout), structure(KVMCPU_TABLES)
    # The RSDT's tables: the FADT first, then kvmcpu's are QEMU's minus WAET.
    assert qemu["rsdt"][0] == mine["rsdt"][0] == "FACP"
    assert [t for t in qemu["rsdt"] if t != "WAET"] == mine["rsdt"]
    for key in ("facs_len", "madt_types", "madt_cpus", "mp_types", "mp_cpus_ioapics_lints",
                "smbios_ver"):
        assert qemu[key] == mine[key], key
    assert "2/0" in mine["madt_overrides"]
    assert mine["madt_overrides"] <= qemu["madt_overrides"]  # type: ignore[operator]
    assert [t for t in qemu["smbios_types"] if t not in ("3", "32")] == mine["smbios_types"]  # type: ignore[union-attr]
