"""The mock's vendor profiles, row by row, on any host.

Each row is one instruction whose flags (or result) the SDM/APM leave undefined,
with the values Intel and AMD silicon give. The Intel column was measured
natively on an Intel Xeon (family 6) with ``diffkit.run_native``; the AMD column
applies the rules that the same runner measured on an AMD EPYC (Zen 3), where
the mock's AMD behaviour passed test_diff_native with every flag compared. Both
profiles are checked on every host through the explicit ``vendor=`` override;
the column of the host's own vendor is also checked against the host CPU, so a
wrong row shows up on the first machine of that vendor.
"""

from __future__ import annotations

from typing import Dict, Optional

import pytest
from diffkit import native_available, run_backend, run_native

from kvmcpu.backends import get_backend
from kvmcpu.backends.mock import MockBackend
from kvmcpu.backends.mock.vendor import ENV_VAR, VENDORS, get_profile, host_vendor
from kvmcpu.errors import BackendUnavailableError

ARITH = 0x8D5
ALL = ARITH

#: (id, code hex, input registers, input flags, checked register, (intel rax, flags),
#: (amd rax, flags)). The checked register is rax unless said.
ROWS = [
    ("mul r64", "48f7e3", {"rax": 3, "rbx": 5}, ALL, (15, 0x004), (15, 0x0D4)),
    ("mul r8 overflow", "f6e3", {"rax": 0x10, "rbx": 0x10}, 0, (0x100, 0x805), (0x100, 0x801)),
    ("imul r64, r64", "480fafc3", {"rax": 2**64 - 1, "rbx": 0x80}, ALL,
     (2**64 - 0x80, 0x080), (2**64 - 0x80, 0x0D4)),
    ("div r64, flags set", "48f7f3", {"rax": 100, "rdx": 0, "rbx": 7}, ALL,
     (14, 0x8D5), (14, 0x811)),
    ("div r64, flags clear", "48f7f3", {"rax": 100, "rdx": 0, "rbx": 7}, 0, (14, 0), (14, 0x010)),
    ("shl r64, cl=2", "48d3e0", {"rax": 0xC000000000000000, "rcx": 2}, 0,
     (0, 0x045), (0, 0x855)),
    ("shr r64, cl=2", "48d3e8", {"rax": 0x8000000000000000, "rcx": 2}, 0,
     (0x2000000000000000, 0x804), (0x2000000000000000, 0x014)),
    ("sar r64, cl=1", "48d3f8", {"rax": 0x80, "rcx": 1}, 0, (0x40, 0x000), (0x40, 0x010)),
    ("shl r8, cl=10", "d2e0", {"rax": 0xFF, "rcx": 10}, 0, (0, 0x044), (0, 0x054)),
    ("shl r64, imm 2", "48c1e002", {"rax": 0xC000000000000000}, 0, (0, 0x045), (0, 0x855)),
    ("rol r64, cl=2", "48d3c0", {"rax": 0xC000000000000000, "rcx": 2}, 0,
     (3, 0x001), (3, 0x801)),
    ("ror r64, cl=2", "48d3c8", {"rax": 3, "rcx": 2}, 0,
     (0xC000000000000000, 0x801), (0xC000000000000000, 0x001)),
    ("rol r64, imm 2", "48c1c002", {"rax": 0xC000000000000000}, 0, (3, 0x001), (3, 0x801)),
    ("rcr r8, cl=2", "d2d8", {"rax": 0x01, "rcx": 2}, 0x001, (0xC0, 0x800), (0xC0, 0x000)),
    ("rcl r8, cl=9", "d2d0", {"rax": 0x81, "rcx": 9}, 0x801, (0x81, 0x801), (0x81, 0x001)),
    ("shld r16, cl=20", "660fa5d8", {"rax": 0x1234, "rbx": 0x5678, "rcx": 20}, 0,
     (0x6781, 0x005), (0x6785, 0x010)),
    ("shrd r16, cl=20", "660fadd8", {"rax": 0x1234, "rbx": 0x5678, "rcx": 20}, 0,
     (0x4567, 0x001), (0x8567, 0x890)),
    ("shld r64, cl=2", "480fa5d8", {"rax": 0x4000000000000000, "rbx": 0, "rcx": 2}, 0,
     (0, 0x845), (0, 0x855)),
    ("bsf r64, non-zero", "480fbcc3", {"rax": 0x55, "rbx": 0x10}, ALL, (4, 0x000), (4, 0x895)),
    ("bsf r64, zero", "480fbcc3", {"rax": 0x55, "rbx": 0}, 0, (0x55, 0x044), (0x55, 0x040)),
    ("bsr r32, zero keeps r64", "0fbdc3", {"rax": 0xFFFFFFFF00000055, "rbx": 0}, 0,
     (0xFFFFFFFF00000055, 0x044), (0xFFFFFFFF00000055, 0x040)),
    ("bsr r64, non-zero", "480fbdc3", {"rax": 0, "rbx": 0x80}, ALL, (7, 0x000), (7, 0x895)),
    ("tzcnt r64", "f3480fbcc3", {"rax": 0, "rbx": 8}, ALL, (3, 0x000), (3, 0x800)),
    ("lzcnt r64, zero", "f3480fbdc3", {"rax": 0, "rbx": 0}, ALL, (64, 0x001), (64, 0x801)),
]


#: 32-bit rows (checked through compatibility mode on the host: diffkit.run_native32).
ROWS32 = [
    ("aas borrows from AH", "3f", {"eax": 0xE101}, 0x091, (0xDF0B, 0x011), (0xE00B, 0x011)),
    ("aad flags of the add", "d50a", {"eax": 0x5127}, 0x0C5, (0x0051, 0x010), (0x0051, 0x000)),
    ("aad carry", "d50a", {"eax": 0xACF3}, 0x8C5, (0x00AB, 0x081), (0x00AB, 0x080)),
]


def _run(vendor: str, code: str, regs: Dict[str, int], flags: int):  # type: ignore[no-untyped-def]
    with MockBackend(vendor=vendor) as b:
        out, fl, _, exits = run_backend(b, bytes.fromhex(code), regs, flags, bytes(16), cpl=3)
    assert exits[-1][0] == "io", exits
    return out["rax"], fl & ARITH


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_profile_row(vendor: str, row) -> None:  # type: ignore[no-untyped-def]
    _, code, regs, flags, intel, amd = row
    want = intel if vendor == "intel" else amd
    rax, fl = _run(vendor, code, regs, flags)
    assert (rax, fl) == want, f"{vendor}: rax={rax:#x} flags={fl:#x}, want " \
                              f"rax={want[0]:#x} flags={want[1]:#x}"


@pytest.mark.parametrize("vendor", VENDORS)
@pytest.mark.parametrize("row", ROWS32, ids=[r[0] for r in ROWS32])
def test_profile_row_32bit(vendor: str, row) -> None:  # type: ignore[no-untyped-def]
    from test_diff_native32 import _mock32

    _, code, regs, flags, intel, amd = row
    with MockBackend(vendor=vendor) as b:
        out, fl = _mock32(b, bytes.fromhex(code), regs, flags)
    assert (out["eax"] & 0xFFFF, fl & ARITH) == (intel if vendor == "intel" else amd)


@pytest.mark.skipif(host_vendor() != "intel" or native_available() is not None,
                    reason="the 32-bit rows' AMD column is not yet measured on AMD silicon")
@pytest.mark.parametrize("row", ROWS32, ids=[r[0] for r in ROWS32])
def test_host_column_is_silicon_32bit(row) -> None:  # type: ignore[no-untyped-def]
    from diffkit import run_native32

    _, code, regs, flags, intel, _ = row
    out, fl = run_native32(bytes.fromhex(code), regs, flags)
    assert (out["eax"] & 0xFFFF, fl & ARITH) == intel


@pytest.mark.skipif(host_vendor() is None or native_available() is not None,
                    reason="the host is not an Intel or AMD x86-64 CPU that runs native code")
@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_host_column_is_silicon(row) -> None:  # type: ignore[no-untyped-def]
    """The host vendor's column is what this CPU does."""
    _, code, regs, flags, intel, amd = row
    want = intel if host_vendor() == "intel" else amd
    out, fl, _ = run_native(bytes.fromhex(code), regs, flags, bytes(16))
    assert (out["rax"], fl & ARITH) == want


def test_profiles_differ_on_every_row() -> None:
    """Every row tells the vendors apart (a row where they agree belongs elsewhere)."""
    for name, _, _, _, intel, amd in ROWS + ROWS32:
        assert intel != amd, name


def test_default_is_the_host_vendor(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_VAR, raising=False)
    host: Optional[str] = host_vendor()
    p = get_profile()
    assert p.name == (host or "amd")
    assert p.source == ("host" if host else "fallback")
    with get_backend("mock") as b:
        assert b.profile.name == p.name  # type: ignore[attr-defined]


def test_environment_override(monkeypatch: pytest.MonkeyPatch) -> None:
    for v in VENDORS:
        monkeypatch.setenv(ENV_VAR, v.upper())
        with get_backend("mock") as b:
            assert b.profile.name == v  # type: ignore[attr-defined]
            assert b.profile.source == "environment"  # type: ignore[attr-defined]
    monkeypatch.setenv(ENV_VAR, "cyrix")
    with pytest.raises(BackendUnavailableError, match="KVMCPU_MOCK_VENDOR='cyrix'"):
        get_backend("mock")
    # an explicit argument wins over the environment
    with MockBackend(vendor="intel") as b:
        assert b.profile.name == "intel"


def test_bad_vendor_arguments() -> None:
    with pytest.raises(ValueError, match="unknown mock vendor profile 'cyrix'.*intel, amd"):
        MockBackend(vendor="cyrix")
    with pytest.raises(TypeError, match="vendor must be a string"):
        MockBackend(vendor=1)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="takes no backend options"):
        get_backend("auto", vendor="intel")


@pytest.mark.parametrize("vendor,vid,family", [("intel", b"GenuineIntel", 6),
                                               ("amd", b"AuthenticAMD", 0x19)])
def test_cpuid_matches_the_profile(vendor: str, vid: bytes, family: int) -> None:
    """CPUID leaf 0/0x80000000 name the profile's vendor, leaf 1 its family."""
    with MockBackend(vendor=vendor) as b:
        leaves = {(e.function, e.index): e for e in b.get_supported_cpuid()}
        assert b.describe()["vendor_profile"] == vendor
    for fn in (0, 0x80000000):
        e = leaves[(fn, 0)]
        assert e.ebx.to_bytes(4, "little") + e.edx.to_bytes(4, "little") \
            + e.ecx.to_bytes(4, "little") == vid
    eax = leaves[(1, 0)].eax
    fam = (eax >> 8) & 0xF
    if fam == 0xF:
        fam += (eax >> 20) & 0xFF
    assert fam == family
    assert leaves[(0x80000001, 0)].eax == eax


def test_guest_sees_the_profile_cpuid() -> None:
    """A guest executing CPUID (leaf 0) after set_cpuid2(supported) reads the vendor."""
    code = bytes.fromhex("31c00fa2")  # xor eax,eax; cpuid
    for vendor, vid in (("intel", b"GenuineIntel"), ("amd", b"AuthenticAMD")):
        with MockBackend(vendor=vendor) as b, b.create_vm() as vm:
            vm.add_ram(0, 1 << 20)
            vm.write_guest(0x1000, code + b"\xf4")
            v = vm.create_vcpu(0)
            try:
                v.set_cpuid2(b.get_supported_cpuid())
                v.set_real_mode(cs=0, ip=0x1000)
                assert v.run().kind == "hlt"
                r = v.get_regs()
                got = b"".join((x & 0xFFFFFFFF).to_bytes(4, "little")
                               for x in (r.rbx, r.rdx, r.rcx))
                assert got == vid
            finally:
                v.close()
