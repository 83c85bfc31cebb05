"""The firmware tables parsed back by a parser written here from the specifications
(ACPI 6.4 chapter 5, the MP specification 1.4 chapter 4, DMTF DSP0134 SMBIOS),
not by the generator: signatures, lengths, revisions, checksums, the MADT's
entries for 1, 2 and 4 CPUs, the MP table's entries, the SMBIOS structures;
the tables decoded by ACPICA's ``iasl -d`` and loaded, the DSDT's objects
evaluated, by ACPICA's ``acpiexec`` (the interpreter Linux uses) where they
are installed (acpica-tools); and the
tables a System writes for a kernel, found by the RSDP search of ACPI 5.2.5.1.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

import kvmcpu.guests
from kvmcpu import System
from kvmcpu.errors import GuestError
from kvmcpu.firmware import FirmwareConfig, build_tables
from kvmcpu.mem.physmem import E820_RAM, E820_RESERVED

IASL = shutil.which("iasl")
ACPIEXEC = shutil.which("acpiexec")
RAM_128M = ((0, 128 << 20),)


class Mem:
    """The tables' blobs as a sparse memory the parser reads like a guest would."""

    def __init__(self, blobs: Dict[int, bytes]) -> None:
        self.image = bytearray(0x100000)
        for addr, blob in blobs.items():
            self.image[addr:addr + len(blob)] = blob

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.image[addr:addr + n])


def sum8(data: bytes) -> int:
    return sum(data) & 0xFF


def find_rsdp(mem: Mem) -> int:
    # ACPI 5.2.5.1: the first KiB of the EBDA (segment at 0x40e), then 0xe0000-0xfffff,
    # on 16-byte boundaries, with a valid ACPI 1.0 checksum.
    ebda = struct.unpack("<H", mem.read(0x40E, 2))[0] << 4
    for lo, hi in ((ebda, ebda + 1024), (0xE0000, 0x100000)):
        for a in range(lo, hi, 16):
            if mem.read(a, 8) == b"RSD PTR " and sum8(mem.read(a, 20)) == 0:
                return a
    raise AssertionError("no RSDP")


def sdt(mem: Mem, addr: int) -> Tuple[str, int, bytes]:
    sig, length, rev = struct.unpack("<4sIB", mem.read(addr, 9))
    data = mem.read(addr, length)
    assert sum8(data) == 0, f"{sig!r} checksum"
    assert data[10:16] == b"KVMCPU"
    return sig.decode(), rev, data


def walk(mem: Mem) -> Dict[str, Tuple[int, bytes]]:
    rsdp = mem.read(find_rsdp(mem), 36)
    assert rsdp[15] == 2 and struct.unpack("<I", rsdp[20:24])[0] == 36
    assert sum8(rsdp) == 0
    rsdt_addr, xsdt_addr = struct.unpack("<I", rsdp[16:20])[0], struct.unpack("<Q", rsdp[24:32])[0]
    sig, rev, rsdt = sdt(mem, rsdt_addr)
    assert (sig, rev) == ("RSDT", 1)
    sig, rev, xsdt = sdt(mem, xsdt_addr)
    assert (sig, rev) == ("XSDT", 1)
    r = [struct.unpack_from("<I", rsdt, o)[0] for o in range(36, len(rsdt), 4)]
    x = [struct.unpack_from("<Q", xsdt, o)[0] for o in range(36, len(xsdt), 8)]
    assert r == x
    tables: Dict[str, Tuple[int, bytes]] = {}
    for a in r:
        sig, rev, data = sdt(mem, a)
        tables[sig] = (rev, data)
    fadt = tables["FACP"][1]
    facs_addr, dsdt_addr = struct.unpack_from("<II", fadt, 36)
    assert struct.unpack_from("<QQ", fadt, 132) == (facs_addr, dsdt_addr)
    sig, rev, data = sdt(mem, dsdt_addr)
    tables[sig] = (rev, data)
    facs = mem.read(facs_addr, 64)
    assert facs[:4] == b"FACS" and struct.unpack_from("<I", facs, 4)[0] == 64
    assert facs_addr % 64 == 0
    tables["FACS"] = (facs[32], facs)
    return tables


def madt_entries(madt: bytes) -> List[Tuple[int, bytes]]:
    out, pos = [], 44
    while pos < len(madt):
        kind, length = madt[pos], madt[pos + 1]
        assert length >= 2
        out.append((kind, madt[pos:pos + length]))
        pos += length
    assert pos == len(madt)
    return out


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_acpi_tables(cpus: int) -> None:
    t = build_tables(FirmwareConfig(cpus=cpus, ram=RAM_128M, hpet=True))
    tables = walk(Mem(t.blobs))
    assert sorted(tables) == ["APIC", "DSDT", "FACP", "FACS", "HPET"]
    assert {s: (r, len(d)) for s, (r, d) in tables.items()} == {
        "FACP": (3, 244), "APIC": (1, 44 + 8 * cpus + 12 + 4 * 10 + 6), "HPET": (1, 56),
        "DSDT": (2, len(tables["DSDT"][1])), "FACS": (1, 64)}
    assert tables["FACS"][1][12:16] == bytes(4)  # firmware waking vector, set by the OS
    assert t.blobs[0xF8000][:4] == b"FACS"       # pc_layout.ACPI_FACS_ADDR

    madt = tables["APIC"][1]
    assert struct.unpack_from("<II", madt, 36) == (0xFEE00000, 1)
    entries = madt_entries(madt)
    assert [k for k, _ in entries] == [0] * cpus + [1, 2, 2, 2, 2, 4]
    for i, (_k, e) in enumerate(entries[:cpus]):
        assert struct.unpack("<BBBBI", e) == (0, 8, i, i, 1)    # UID i, APIC ID i, enabled
    assert struct.unpack("<BBBBII", entries[cpus][1]) == (1, 12, 0, 0, 0xFEC00000, 0)
    overrides = [struct.unpack("<BBBBIH", e)[2:] for _k, e in entries[cpus + 1:cpus + 5]]
    assert overrides == [(0, 0, 2, 0), (0, 9, 9, 0xD), (0, 10, 10, 0xD), (0, 11, 11, 0xD)]
    assert struct.unpack("<BBBHB", entries[-1][1]) == (4, 6, 0xFF, 0, 1)  # NMI on LINT1

    fadt = tables["FACP"][1]
    sci, smi_cmd = struct.unpack_from("<HI", fadt, 46)
    assert (sci, smi_cmd) == (9, 0)
    pm1a_evt, _b, pm1a_cnt, _b2, _p2, pm_tmr, gpe0 = struct.unpack_from("<7I", fadt, 56)
    assert (pm1a_evt, pm1a_cnt, pm_tmr, gpe0) == (0x600, 0x604, 0x608, 0xAFE0)
    assert tuple(fadt[88:93]) == (4, 2, 0, 4, 4)   # PM1_EVT, PM1_CNT, PM2, PM_TMR, GPE0 lens
    assert fadt[108] == 0x32                         # CENTURY
    assert struct.unpack_from("<H", fadt, 109)[0] & 1  # IAPC_BOOT_ARCH: legacy devices
    flags = struct.unpack_from("<I", fadt, 112)[0]
    assert flags & (1 << 10) and not flags & (1 << 8)  # RESET_REG_SUP, 24-bit PM timer
    assert struct.unpack_from("<BBBBQ", fadt, 116) == (1, 8, 0, 1, 0xCF9)
    assert fadt[128] == 6
    # X_PM_TMR_BLK: system IO, 32 bits, at the same port as PM_TMR_BLK.
    assert struct.unpack_from("<BBBBQ", fadt, 208) == (1, 32, 0, 0, 0x608)

    hpet = tables["HPET"][1]
    block_id, space, width = struct.unpack_from("<IBB", hpet, 36)
    assert (block_id >> 16, (block_id >> 8) & 0x1F, space, width) == (0x8086, 2, 0, 64)
    assert struct.unpack_from("<Q", hpet, 44)[0] == 0xFED00000


def test_no_hpet_table_without_an_hpet() -> None:
    t = build_tables(FirmwareConfig(cpus=1, ram=RAM_128M, hpet=False))
    assert sorted(walk(Mem(t.blobs))) == ["APIC", "DSDT", "FACP", "FACS"]


def mp_entries(mem: Mem) -> Tuple[Dict[int, int], List[bytes]]:
    for a in range(0xF0000, 0x100000, 16):
        fp = mem.read(a, 16)
        if fp[:4] == b"_MP_" and sum8(fp) == 0:
            break
    else:
        raise AssertionError("no MP floating pointer")
    assert (fp[8], fp[9], fp[11]) == (1, 4, 0)  # 16 bytes, spec 1.4, a table is present
    table_addr = struct.unpack_from("<I", fp, 4)[0]
    sig, length, rev = struct.unpack("<4sHB", mem.read(table_addr, 7))
    table = mem.read(table_addr, length)
    assert (sig, rev, sum8(table)) == (b"PCMP", 4, 0)
    count = struct.unpack_from("<H", table, 34)[0]
    assert struct.unpack_from("<I", table, 36)[0] == 0xFEE00000
    sizes = {0: 20, 1: 8, 2: 8, 3: 8, 4: 8}
    pos, entries, counts = 44, [], {}
    for _ in range(count):
        kind = table[pos]
        entries.append(table[pos:pos + sizes[kind]])
        counts[kind] = counts.get(kind, 0) + 1
        pos += sizes[kind]
    assert pos == length
    return counts, entries


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_mp_table(cpus: int) -> None:
    counts, entries = mp_entries(Mem(build_tables(FirmwareConfig(cpus, RAM_128M)).blobs))
    assert counts == {0: cpus, 1: 1, 2: 1, 3: 16, 4: 2}
    kinds = [e[0] for e in entries]
    assert kinds == sorted(kinds)                     # ordered by entry type
    procs = [struct.unpack_from("<BBBB", e) for e in entries[:cpus]]
    assert procs == [(0, i, 0x14, 3 if i == 0 else 1) for i in range(cpus)]
    assert entries[cpus] == b"\x01\x00ISA   "
    ints = [struct.unpack("<BBHBBBB", e) for e in entries if e[0] == 3]
    assert ints[0][1] == 3 and ints[0][6] == 0        # ExtINT to pin 0
    pins = {irq: (pin, flags) for _t, kind, flags, _bus, irq, _id, pin in ints[1:]}
    assert pins[0] == (2, 0) and 2 not in pins and pins[9] == (9, 0xD) and pins[4] == (4, 0)
    lints = [struct.unpack("<BBHBBBB", e) for e in entries if e[0] == 4]
    assert [(k, dest, lint) for _t, k, _f, _b, _i, dest, lint in lints] == [(3, 0xFF, 0),
                                                                          (1, 0xFF, 1)]


def smbios_structs(mem: Mem) -> List[Tuple[int, int, bytes, List[bytes]]]:
    for a in range(0xF0000, 0x100000, 16):
        ep = mem.read(a, 31)
        if ep[:4] == b"_SM_" and sum8(ep[:ep[5]]) == 0:
            break
    else:
        raise AssertionError("no SMBIOS entry point")
    assert (ep[5], ep[6], ep[7]) == (0x1F, 2, 8)
    assert ep[16:21] == b"_DMI_" and sum8(ep[16:31]) == 0
    length, addr, number = struct.unpack_from("<HIH", ep, 22)
    data = mem.read(addr, length)
    out, pos = [], 0
    for _ in range(number):
        kind, flen, handle = struct.unpack_from("<BBH", data, pos)
        formatted = data[pos:pos + flen]
        end = data.index(b"\0\0", pos + flen)
        strings = [s for s in data[pos + flen:end].split(b"\0") if s]
        out.append((kind, handle, formatted, strings))
        pos = end + 2
    assert pos == length
    assert max(len(s) for s in [data]) >= struct.unpack_from("<H", ep, 8)[0]
    return out


@pytest.mark.parametrize("cpus", [1, 2, 4])
def test_smbios(cpus: int) -> None:
    ram = ((0, 0xC0000000), (1 << 32, 1 << 30))  # 4 GiB: below and above the hole
    structs = smbios_structs(Mem(build_tables(FirmwareConfig(cpus, ram)).blobs))
    assert [s[0] for s in structs] == [0, 1] + [4] * cpus + [16, 17, 19, 19, 127]
    lengths = {k: len(f) for k, _h, f, _s in structs}
    assert lengths == {0: 0x18, 1: 0x1B, 4: 0x2A, 16: 0x17, 17: 0x28, 19: 0x1F, 127: 4}
    assert len({h for _k, h, _f, _s in structs}) == len(structs)   # unique handles
    by_kind = {k: (f, s) for k, _h, f, s in reversed(structs)}
    assert by_kind[0][1][0] == b"kvmcpu"
    assert struct.unpack_from("<I", by_kind[16][0], 7)[0] == (0xC0000000 + (1 << 30)) // 1024
    assert struct.unpack_from("<H", by_kind[17][0], 12)[0] == (0xC0000000 + (1 << 30)) >> 20
    maps = [struct.unpack_from("<II", f, 4) for k, _h, f, _s in structs if k == 19]
    assert maps == [(0, 0xC0000000 // 1024 - 1), ((1 << 32) // 1024, (5 << 30) // 1024 - 1)]
    sockets = [s[0] for k, _h, _f, s in structs if k == 4]
    assert sockets == [f"CPU {i}".encode() for i in range(cpus)]


@pytest.mark.skipif(IASL is None, reason="iasl is not installed (apt-get install acpica-tools)")
def test_iasl_decodes_every_table(tmp_path: Path) -> None:
    t = build_tables(FirmwareConfig(cpus=2, ram=RAM_128M, hpet=True))
    tables = walk(Mem(t.blobs))
    for sig, (_rev, data) in tables.items():
        if sig != "FACS":
            (tmp_path / f"{sig.lower()}.dat").write_bytes(data)
    done = subprocess.run([IASL, "-d", *sorted(p.name for p in tmp_path.glob("*.dat"))],
                          cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    dsl = (tmp_path / "dsdt.dsl").read_text()
    assert 'EisaId ("PNP0A03")' in dsl
    for needle in ("Name (\\_S3, Package (0x04)", "Name (\\_S5, Package (0x04)",
                   "Method (\\_PIC, 1, NotSerialized)", "Device (PCI0)",
                   "Name (_PRT, Package (0x80)", "0xC0000000,         // Range Minimum",
                   "0xFEBFFFFF,         // Range Maximum", "0x0D00,             // Range Minimum"):
        assert needle in dsl, needle
    # _PRT: slot 1 INTA..INTD -> PIRQ B, C, D, A -> GSIs 10, 11, 11, 10.
    prt = re.findall(r"Package \(0x04\)\s*\{\s*(\S+),\s*(\S+),\s*Zero,\s*(\S+)\s*\}", dsl)
    slot1 = [(pin, gsi) for addr, pin, gsi in prt if addr == "0x0001FFFF"]
    assert slot1 == [("Zero", "0x0B"), ("One", "0x0B"), ("0x02", "0x0A"), ("0x03", "0x0A")] \
        or slot1 == [("Zero", "0x0A"), ("One", "0x0B"), ("0x02", "0x0B"), ("0x03", "0x0A")]
    for name in ("facp", "apic", "hpet"):
        text = (tmp_path / f"{name}.dsl").read_text()
        assert "Invalid" not in text and "****" not in text, text


@pytest.mark.skipif(ACPIEXEC is None, reason="acpiexec is not installed "
                    "(apt-get install acpica-tools)")
def test_acpica_loads_the_tables_and_runs_the_dsdt(tmp_path: Path) -> None:
    """ACPICA, the AML interpreter Linux uses, loads the FADT, DSDT, MADT and HPET
    and evaluates the DSDT's objects (acpiexec; its built-in self-tests of an
    optional PM2 block and of GPEs beyond GPE0's 16 print "Unexpected ... (aetests-N)"
    lines, which are not about these tables)."""
    t = build_tables(FirmwareConfig(cpus=2, ram=RAM_128M, hpet=True))
    tables = walk(Mem(t.blobs))
    files = []
    for sig in ("FACP", "DSDT", "APIC", "HPET"):
        (tmp_path / f"{sig}.aml").write_bytes(tables[sig][1])
        files.append(f"{sig}.aml")
    done = subprocess.run(
        [ACPIEXEC, "-b", "evaluate \\_S5; evaluate \\_S3; evaluate \\_PIC 1; "
         "evaluate \\PICF; evaluate \\_SB.PCI0._HID; evaluate \\_SB.PCI0._PRT", *files],
        cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    for bad in ("ACPI Error", "ACPI Warning", "ACPI Exception", "Could not"):
        assert bad not in out, out
    for sig, rev in (("FACP", 3), ("DSDT", 2), ("APIC", 1), ("HPET", 1)):
        assert re.search(rf"ACPI: {sig} 0x[0-9A-F]+ [0-9A-F]{{6}} \(v0{rev} KVMCPU", out), sig
    assert "on interrupt 0x9 (SCI)" in out                     # the FADT's SCI, GPE0 found
    results = re.findall(r"Evaluation of (\S+) returned object.*\n((?:  .*\n)+)", out)
    values = {name: [int(v, 16) for v in re.findall(r"\[Integer\] = ([0-9A-F]+)", body)]
              for name, body in results}
    assert values["\\_S5"] == [0, 0, 0, 0] and values["\\_S3"] == [1, 1, 0, 0]
    assert values["\\PICF"] == [1]                             # _PIC(1) stored it
    assert values["\\_SB.PCI0._HID"] == [0x030AD041]
    assert "[Package] Contains 128 Elements:" in out
    assert len(values["\\_SB.PCI0._PRT"]) == 128 * 4


def test_a_system_without_the_hpet_has_no_hpet_table() -> None:
    with System(memory="64M", backend="mock", hpet=False) as system:
        system.load(kvmcpu.guests.path("hello"))
        mem = Mem({0: system.physmem.read(0, 0x100000)})
        assert sorted(walk(mem)) == ["APIC", "DSDT", "FACP", "FACS"]


def test_system_writes_the_tables_for_a_multiboot_kernel() -> None:
    with System(memory="64M", backend="mock") as system:
        system.load(kvmcpu.guests.path("hello"))
        mem = Mem({0: system.physmem.read(0, 0x100000)})
        assert sorted(walk(mem)) == ["APIC", "DSDT", "FACP", "FACS", "HPET"]
        smbios = smbios_structs(mem)
        ram = [struct.unpack_from("<II", f, 4) for k, _h, f, _s in smbios if k == 19]
        assert ram == [(0, (64 << 20) // 1024 - 1)]
        # The e820 map keeps every table out of RAM the kernel may use.
        assert system.firmware_tables is not None
        for lo, hi in system.firmware_tables.ranges():
            for e in system.physmem.e820():
                if e.type == E820_RAM:
                    assert hi <= e.addr or e.addr + e.size <= lo
            assert any(e.type == E820_RESERVED and e.addr <= lo and hi <= e.addr + e.size
                       for e in system.physmem.e820()), hex(lo)


def test_a_flat_image_gets_no_tables() -> None:
    with System(memory="2M", backend="mock") as system:
        system.load(b"\xf4", fmt="flat")
        assert system.firmware_tables is None
        assert system.physmem.read(0xF0000, 0x10000) == bytes(0x10000)


def aout_kernel(load_addr: int) -> bytes:
    flags = 1 << 16
    header = struct.pack("<III", 0x1BADB002, flags, (-(0x1BADB002 + flags)) & 0xFFFFFFFF)
    header += struct.pack("<IIIII", load_addr, load_addr, 0, 0, load_addr + 32)
    return header + b"\xf4" * 32


def test_a_kernel_over_the_table_area_is_refused() -> None:
    with System(memory="2M", backend="mock") as system:
        with pytest.raises(GuestError, match=r"\[0xff000, 0xff040\) overlaps the firmware "
                                             r"tables .* at \[0xf0000, 0x100000\)"):
            system.load(aout_kernel(0xFF000), fmt="multiboot")
        system.load(aout_kernel(0x100000), fmt="multiboot")
        assert system.firmware_tables is not None


def test_config_checks() -> None:
    with pytest.raises(ValueError, match="cpus must be 1-255"):
        FirmwareConfig(cpus=0, ram=RAM_128M)
    with pytest.raises(TypeError, match="cpus must be an int"):
        FirmwareConfig(cpus=True, ram=RAM_128M)
    with pytest.raises(ValueError, match="ram must list"):
        FirmwareConfig(cpus=1, ram=())


def test_kvmcpu_run_refuses_a_kernel_over_the_tables(tmp_path: Path) -> None:
    kernel = tmp_path / "over.elf"
    kernel.write_bytes(aout_kernel(0xF4000))
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", "mock",
                           "--memory", "4M", str(kernel)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "overlaps the firmware tables" in done.stderr
