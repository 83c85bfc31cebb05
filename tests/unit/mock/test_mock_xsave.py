"""The XSAVE family, XGETBV/XSETBV and CLAC/STAC on the mock, against the Intel SDM
(vol. 1 ch. 13; vol. 2 XSAVE, XSAVEOPT, XSAVEC, XSAVES, XRSTOR, XRSTORS, XGETBV,
XSETBV, CLAC, STAC) and the CPUID leaf 0xD the mock reports. The bytes silicon
writes are compared in tests/differential/test_diff_xsave.py."""

from __future__ import annotations

import struct
from typing import Iterator, List, Optional, Tuple

import pytest
from mockrig import Machine

from kvmcpu import uapi
from kvmcpu.backends.mock.backend import supported_cpuid
from kvmcpu.errors import KvmIoctlError

CR4_OSXSAVE = 1 << 18
AC = 1 << 18
#: The program's scratch area (64-byte aligned) and the port that ends it.
AREA = 0x300000
DONE, FAULT = 0x90, 0x91

# Vectors 6 (#UD), 7 (#NM) and 13 (#GP) store their number in r14 and end the run.
HARNESS = """
    jmp start
set_gate:                   ; rdi = vector, rsi = handler
    mov rax, rsi
    lea rbx, [rel idt]
    shl rdi, 4
    add rbx, rdi
    mov [rbx], ax
    mov word [rbx+2], 0x08
    mov word [rbx+4], 0x8E00
    shr rax, 16
    mov [rbx+6], ax
    shr rax, 16
    mov [rbx+8], eax
    mov dword [rbx+12], 0
    ret
ud: mov r14, 6
    out 0x91, al
nm: mov r14, 7
    out 0x91, al
gp: mov r14, 13
    out 0x91, al
align 16
idtr: dw 256*16-1
      dq idt
align 16
idt: times 256*16 db 0
start:
    mov edi, 6
    lea rsi, [rel ud]
    call set_gate
    mov edi, 7
    lea rsi, [rel nm]
    call set_gate
    mov edi, 13
    lea rsi, [rel gp]
    call set_gate
    lidt [rel idtr]
    mov r14, -1
"""

#: Drops to CPL3 at ``user:`` (a 64-bit TSS with RSP0 for the fault handlers).
TO_USER = """
    jmp to_user
gdtr_save: dw 0
           dq 0
to_user:
    mov rax, 0x6f000
    mov [0x7004], rax
    sgdt [rel gdtr_save]
    mov rbx, [rel gdtr_save + 2]
    mov rax, 0x0000890070000067  ; present, type 9 (available TSS), base 0x7000
    mov [rbx + 0x28], rax
    mov qword [rbx + 0x30], 0
    mov word [rel gdtr_save], 0x37
    lgdt [rel gdtr_save]
    mov ax, 0x28
    ltr ax
    push 0x23
    push 0x280000
    push 0x3002
    push 0x1b
    lea rax, [rel user]
    push rax
    iretq
user:
"""


def _leaf(function: int, index: int, eax: int, ebx: int, ecx: int, edx: int
          ) -> uapi.kvm_cpuid_entry2:
    e = uapi.kvm_cpuid_entry2()
    e.function, e.index, e.flags = function, index, uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX
    e.eax, e.ebx, e.ecx, e.edx = eax, ebx, ecx, edx
    return e


def _with(entries: List[uapi.kvm_cpuid_entry2], *extra: uapi.kvm_cpuid_entry2
          ) -> List[uapi.kvm_cpuid_entry2]:
    keys = {(e.function, e.index) for e in extra}
    return [e for e in entries if (e.function, e.index) not in keys] + list(extra)


#: An Intel-like leaf 0xD with AVX and the AVX-512 components (standard offsets as
#: silicon reports them) on top of the mock's own set; SMAP in leaf 7.
AVX512_LEAVES = (
    _leaf(0xD, 0, 0xE7, 0xA80, 0xA80, 0),
    _leaf(0xD, 1, 0xF, 0xA80, 0, 0),
    _leaf(0xD, 2, 0x100, 0x240, 0, 0),
    _leaf(0xD, 5, 0x40, 0x440, 0, 0),
    _leaf(0xD, 6, 0x200, 0x480, 0, 0),
    _leaf(0xD, 7, 0x400, 0x680, 0, 0),
)
SMAP = _leaf(7, 0, 0, 1 << 20, 0, 0)


@pytest.fixture()
def mx() -> Iterator[Machine]:
    mach = Machine(ram_size=8 << 20)
    mach.vcpu.set_cpuid2(supported_cpuid(mach.backend.profile))
    try:
        yield mach
    finally:
        mach.close()


def _run(m: Machine, body: str, *, osxsave: bool = True,
         cpuid: Optional[List[uapi.kvm_cpuid_entry2]] = None, ts: bool = False,
         xcr0: Optional[int] = None, area: bytes = b"") -> Tuple[int, uapi.kvm_regs]:
    """Run HARNESS + body + ``out DONE``; returns (fault vector or -1, registers)."""
    if cpuid is not None:
        m.vcpu.set_cpuid2(cpuid)
    m.long(HARNESS + body + "\n    out 0x90, al\n", cpl=0)
    s = m.vcpu.get_sregs()
    if osxsave:
        s.cr4 |= CR4_OSXSAVE
    if ts:
        s.cr0 |= 8
    m.vcpu.set_sregs(s)
    if xcr0 is not None:
        x = uapi.kvm_xcrs()
        x.nr_xcrs = 1
        x.xcrs[0].xcr, x.xcrs[0].value = 0, xcr0
        m.vcpu.set_xcrs(x)
    m.ram[AREA:AREA + len(area)] = area
    ex = m.vcpu.run()
    assert ex.kind == "io", ex
    r = m.regs()
    vector = r.r14 if r.r14 != 0xFFFFFFFFFFFFFFFF else -1
    assert ex.port == (FAULT if vector >= 0 else DONE)  # type: ignore[attr-defined]
    return vector, r


def _cpuid(m: Machine, leaf: int, sub: int = 0) -> Tuple[int, int, int, int]:
    _, r = _run(m, f"mov eax, {leaf}\n mov ecx, {sub}\n cpuid", osxsave=False)
    return r.rax, r.rbx, r.rcx, r.rdx


# -- CPUID --------------------------------------------------------------------------------------
def test_cpuid_reports_xsave_of_x87_and_sse() -> None:
    leaves = {(e.function, e.index): e for e in supported_cpuid()}
    assert leaves[(0, 0)].eax >= 0xD
    assert leaves[(1, 0)].ecx & (1 << 26)  # XSAVE
    d0, d1 = leaves[(0xD, 0)], leaves[(0xD, 1)]
    assert (d0.eax, d0.edx) == (3, 0)  # x87 | SSE: the state the mock holds
    assert d0.ecx == 576  # legacy region + header
    assert d1.eax == 0xF and (d1.ecx, d1.edx) == (0, 0)  # no supervisor components
    assert not leaves[(7, 0)].ebx & (1 << 20)  # no SMAP


def test_osxsave_bit_follows_cr4(mx: Machine) -> None:
    assert not _cpuid(mx, 1)[2] & (1 << 27)
    _, r = _run(mx, "mov eax, 1\n cpuid")
    assert r.rcx & (1 << 27) and r.rcx & (1 << 26)


def test_leaf_0xd_ebx_follows_xcr0(mx: Machine) -> None:
    cpuid = _with(supported_cpuid(mx.backend.profile), *AVX512_LEAVES)
    _, r = _run(mx, "mov eax, 0xd\n xor ecx, ecx\n cpuid", cpuid=cpuid, xcr0=0x7)
    assert r.rbx == 0x340 and r.rcx == 0xA80  # AVX ends at 576 + 256
    _, r = _run(mx, "mov eax, 0xd\n xor ecx, ecx\n cpuid", xcr0=0xE7)
    assert r.rbx == 0xA80
    _, r = _run(mx, "mov eax, 0xd\n mov ecx, 1\n cpuid", xcr0=0xE7)
    assert r.rbx == 576 + 256 + 64 + 512 + 1024  # compacted: XCR0 | XSS


# -- XGETBV / XSETBV --------------------------------------------------------------------------
def test_xgetbv_xsetbv(mx: Machine) -> None:
    v, r = _run(mx, "xor ecx, ecx\n xgetbv\n mov r8, rax\n mov eax, 3\n xor edx, edx\n"
                    " xsetbv\n xgetbv\n mov r9, rax\n mov r10, rdx")
    assert v == -1 and r.r8 == 1 and r.r9 == 3 and r.r10 == 0
    x = mx.vcpu.get_xcrs()
    assert x.nr_xcrs == 1 and x.xcrs[0].value == 3


@pytest.mark.parametrize("eax,ecx", [(0, 0), (2, 0), (5, 0), (7, 0), (3, 1)])
def test_xsetbv_refuses_invalid_values_with_gp(mx: Machine, eax: int, ecx: int) -> None:
    # bit 0 clear; SSE without x87; AVX not in the mock's leaf 0xD; XCR1 does not exist
    v, _ = _run(mx, f"mov eax, {eax}\n xor edx, edx\n mov ecx, {ecx}\n xsetbv")
    assert v == 13


def test_xsetbv_avx512_rules(mx: Machine) -> None:
    cpuid = _with(supported_cpuid(mx.backend.profile), *AVX512_LEAVES)
    assert _run(mx, "mov eax, 0x27\n xor edx, edx\n xor ecx, ecx\n xsetbv", cpuid=cpuid)[0] \
        == 13  # opmask without ZMM_Hi256 / Hi16_ZMM
    assert _run(mx, "mov eax, 0xe3\n xor edx, edx\n xor ecx, ecx\n xsetbv")[0] == 13  # no AVX
    assert _run(mx, "mov eax, 0xe7\n xor edx, edx\n xor ecx, ecx\n xsetbv")[0] == -1


def test_xgetbv_xsetbv_ud_without_osxsave_and_xsetbv_gp_at_cpl3(mx: Machine) -> None:
    assert _run(mx, "xor ecx, ecx\n xgetbv", osxsave=False)[0] == 6
    assert _run(mx, "mov eax, 1\n xor edx, edx\n xor ecx, ecx\n xsetbv", osxsave=False)[0] == 6
    user = TO_USER + """
        xor ecx, ecx
        xgetbv
        mov r8, rax
        mov eax, 1
        xor edx, edx
        xsetbv
    """
    v, r = _run(mx, user)
    assert r.r8 == 1 and v == 13  # XGETBV is fine at CPL3, XSETBV is not


def test_xgetbv_1_reports_xinuse(mx: Machine) -> None:
    image = bytearray(1024)
    struct.pack_into("<HHBxHQQII", image, 0, 0x37F, 0, 0, 0, 0, 0, 0x1F80, 0)
    struct.pack_into("<Q", image, 512, 2)  # SSE loaded from memory (zeros), x87 initialised
    v, r = _run(mx, f"mov eax, 3\n xor edx, edx\n xor ecx, ecx\n xsetbv\n"
                    f" xrstor64 [{AREA}]\n mov ecx, 1\n xgetbv\n mov r8, rax\n"
                    f" mov eax, 3\n xor edx, edx\n mov dword [{AREA}+512], 0\n"
                    f" xrstor64 [{AREA}]\n mov ecx, 1\n xgetbv", area=bytes(image))
    assert v == -1 and r.r8 == 2 and r.rax == 0
    mx.vcpu.set_cpuid2(_with(supported_cpuid(mx.backend.profile), _leaf(0xD, 1, 0x3, 576, 0, 0)))
    assert _run(mx, "mov ecx, 1\n xgetbv")[0] == 13  # no XGETBV1 in CPUID


# -- XSAVE / XRSTOR -----------------------------------------------------------------------------
def _image(bv: int, mxcsr: int = 0x1FA0, fcw: int = 0x27F, comp: int = 0) -> bytearray:
    a = bytearray(0xC00)
    struct.pack_into("<HHBxHQQII", a, 0, fcw, 0x0100, 0x80, 0x1AB, 0x1122334455, 0x66778899,
                     mxcsr, 0)
    for i in range(8):
        a[32 + 16 * i: 42 + 16 * i] = bytes([0x10 + i]) * 10
    for i in range(16):
        a[160 + 16 * i: 176 + 16 * i] = bytes([i + 1]) * 16
    struct.pack_into("<QQ", a, 512, bv, comp)
    return a


def _restore_save(mx: Machine, save: str, bv: int, rfbm: int = 3, xcr0: int = 3,
                  **kw: int) -> Tuple[int, bytes]:
    img = _image(bv, **kw)
    body = f"""
        mov eax, {xcr0}
        xor edx, edx
        xor ecx, ecx
        xsetbv
        mov eax, {rfbm}
        xrstor64 [{AREA}]
        lea rdi, [{AREA} + 0xc00]
        mov ecx, 0xc00
        mov al, 0xa5
        rep stosb
        mov eax, {rfbm}
        xor edx, edx
        {save} [{AREA} + 0xc00]
    """
    v, _ = _run(mx, body, area=bytes(img))
    return v, bytes(mx.ram[AREA + 0xC00:AREA + 0x1800])


def test_xrstor_then_xsave_moves_x87_and_sse(mx: Machine) -> None:
    v, out = _restore_save(mx, "xsave64", 3)
    img = _image(3)
    assert v == -1
    assert out[:24] == img[:24] and out[32:160] == img[32:160]  # x87 (64-bit FIP/FDP form)
    assert out[24:32] == struct.pack("<II", 0x1FA0, 0xFFFF)  # MXCSR, MXCSR_MASK
    assert out[160:416] == img[160:416]  # XMM0-15
    assert out[416:512] == b"\xa5" * 96  # XSAVE leaves bytes 416-511 alone
    assert out[512:520] == struct.pack("<Q", 0xA5A5A5A5A5A5A5A7)  # only RFBM bits change
    assert out[520:576] == b"\xa5" * 56
    f = mx.vcpu.get_fpu()
    assert f.fcw == 0x27F and f.mxcsr == 0x1FA0 and bytes(f.xmm[15]) == bytes([16]) * 16


def test_xrstor_initialises_components_not_in_xstate_bv(mx: Machine) -> None:
    v, out = _restore_save(mx, "xsave64", 0)
    assert v == -1
    assert out[:24] == struct.pack("<HHBxHQQ", 0x37F, 0, 0, 0, 0, 0)
    assert out[32:160] == bytes(128) and out[160:416] == bytes(256)
    # standard form: MXCSR comes from memory whenever RFBM[1] is set
    assert out[24:28] == struct.pack("<I", 0x1FA0)
    assert out[512] == 0xA4  # both initialised: XSTATE_BV[1:0] = 00


def test_xsaveopt_skips_components_in_their_initial_configuration(mx: Machine) -> None:
    v, out = _restore_save(mx, "xsaveopt64", 0)
    assert v == -1
    assert out[:24] == b"\xa5" * 24 and out[160:416] == b"\xa5" * 256
    assert out[24:28] == struct.pack("<I", 0x1FA0)  # MXCSR is always written
    v, out = _restore_save(mx, "xsaveopt64", 1)
    assert out[:2] == struct.pack("<H", 0x27F) and out[160:176] == b"\xa5" * 16


def test_xsavec_writes_the_compacted_form(mx: Machine) -> None:
    v, out = _restore_save(mx, "xsavec64", 2)
    assert v == -1
    assert out[:24] == b"\xa5" * 24  # x87 initialised: not written
    assert out[160:176] == bytes([1]) * 16
    assert out[512:528] == struct.pack("<QQ", 2, (1 << 63) | 3)
    assert out[528:576] == b"\xa5" * 48  # the rest of the header is not written


def test_xsavec_compacts_the_extended_components(mx: Machine) -> None:
    mx.vcpu.set_cpuid2(_with(supported_cpuid(mx.backend.profile), *AVX512_LEAVES))
    img = _image(0xE7)
    for i, (off, size) in {2: (0x240, 0x100), 5: (0x440, 0x40), 6: (0x480, 0x200),
                           7: (0x680, 0x400)}.items():
        img[off:off + size] = bytes([0x30 + i]) * size
    body = f"""
        mov eax, 0xe7
        xor edx, edx
        xor ecx, ecx
        xsetbv
        mov eax, 0xe7
        xrstor64 [{AREA}]
        mov eax, 0xe4                 ; AVX + AVX-512: RFBM skips x87 and SSE
        xsavec64 [{AREA} + 0x1000]
        xsave64 [{AREA} + 0x2000]
    """
    v, _ = _run(mx, body, area=bytes(img))
    assert v == -1
    c = bytes(mx.ram[AREA + 0x1000:AREA + 0x2000])
    assert c[512:528] == struct.pack("<QQ", 0xE4, (1 << 63) | 0xE4)
    assert c[576:576 + 256] == bytes([0x32]) * 256
    assert c[832:832 + 64] == bytes([0x35]) * 64
    assert c[896:896 + 512] == bytes([0x36]) * 512
    assert c[1408:1408 + 1024] == bytes([0x37]) * 1024
    s = bytes(mx.ram[AREA + 0x2000:AREA + 0x3000])
    assert s[0x680:0xA80] == bytes([0x37]) * 0x400  # standard form: CPUID's offsets
    # and KVM_GET_XSAVE carries them with XSTATE_BV set
    x = bytes(mx.vcpu.get_xsave())
    assert x[0x440:0x480] == bytes([0x35]) * 64 and struct.unpack_from("<Q", x, 512)[0] & 0xE4 \
        == 0xE4


def test_xrstor_compacted_form(mx: Machine) -> None:
    img = _image(2, comp=(1 << 63) | 3, mxcsr=0x1FC0)
    body = f"mov eax, 3\n xor edx, edx\n xrstor64 [{AREA}]\n stmxcsr [{AREA}+0x1000]"
    assert _run(mx, body, area=bytes(img), xcr0=3)[0] == -1
    assert struct.unpack_from("<I", bytes(mx.ram[AREA + 0x1000:AREA + 0x1004]))[0] == 0x1FC0
    img = _image(0, comp=(1 << 63) | 3, mxcsr=0x1FC0)
    assert _run(mx, body, area=bytes(img), xcr0=3)[0] == -1
    # compacted: SSE initialised means MXCSR = 1F80H
    assert struct.unpack_from("<I", bytes(mx.ram[AREA + 0x1000:AREA + 0x1004]))[0] == 0x1F80


@pytest.mark.parametrize("case", ["misaligned", "bv_not_in_xcr0", "xcomp_set", "mxcsr",
                                  "header_16", "xstate_not_in_xcomp"])
def test_xrstor_faults(mx: Machine, case: str) -> None:
    addr = AREA + (16 if case == "misaligned" else 0)
    img = {"misaligned": _image(3), "bv_not_in_xcr0": _image(7),
           "xcomp_set": _image(3, comp=1), "mxcsr": _image(3, mxcsr=0x10000),
           "header_16": _image(3, comp=(1 << 63) | 3),
           "xstate_not_in_xcomp": _image(3, comp=(1 << 63) | 1)}[case]
    if case == "header_16":
        img[528] = 1
    area = bytes(16) + bytes(img) if case == "misaligned" else bytes(img)
    before = bytes(mx.vcpu.get_fpu())
    v, _ = _run(mx, f"mov eax, 3\n xor edx, edx\n xrstor64 [{addr}]", area=area, xcr0=3)
    assert v == 13
    assert bytes(mx.vcpu.get_fpu()) == before  # a faulting XRSTOR changes nothing


def test_xsave_faults(mx: Machine) -> None:
    assert _run(mx, f"mov eax, 3\n xsave64 [{AREA}]", osxsave=False)[0] == 6
    assert _run(mx, f"mov eax, 3\n xsave64 [{AREA}]", ts=True)[0] == 7
    assert _run(mx, f"mov eax, 3\n xsave64 [{AREA + 32}]")[0] == 13
    assert _run(mx, f"mov eax, 3\n xsave64 [{AREA}]",
                cpuid=_with(supported_cpuid(mx.backend.profile),
                            _leaf(1, 0, 0x50654, 0, 0, 0)))[0] == 6  # no XSAVE in CPUID
    assert _run(mx, f"mov eax, 3\n xsaveopt64 [{AREA}]",
                cpuid=_with(supported_cpuid(mx.backend.profile),
                            _leaf(0xD, 1, 0, 0, 0, 0)))[0] == 6  # no XSAVEOPT in CPUID


def test_xsaves_and_xrstors_are_cpl0_and_compacted(mx: Machine) -> None:
    img = _image(3, comp=(1 << 63) | 3)
    v, _ = _run(mx, f"mov eax, 3\n xor edx, edx\n xrstors64 [{AREA}]\n"
                    f" xsaves64 [{AREA}+0x1000]", area=bytes(img), xcr0=3)
    assert v == -1
    out = bytes(mx.ram[AREA + 0x1000:AREA + 0x1000 + 576])
    assert out[160:176] == bytes([1]) * 16 and out[512:528] == struct.pack(
        "<QQ", 3, (1 << 63) | 3)
    assert _run(mx, f"mov eax, 3\n xrstors64 [{AREA}]", area=bytes(_image(3)), xcr0=3)[0] == 13
    user = TO_USER + f"""
        mov eax, 3
        xor edx, edx
        xsaves64 [{AREA}+0x1000]
    """
    assert _run(mx, user)[0] == 13


def test_ia32_xss_takes_only_supported_bits(mx: Machine) -> None:
    assert mx.vcpu.get_msrs([0xDA0]) == {0xDA0: 0}
    assert mx.vcpu.set_msrs([(0xDA0, 0)]) == 1
    assert mx.vcpu.set_msrs([(0xDA0, 1 << 8)]) == 0  # no supervisor component (PT)
    v, _ = _run(mx, "mov ecx, 0xda0\n mov eax, 0x100\n xor edx, edx\n wrmsr")
    assert v == 13


def test_set_xcrs_checks_against_cpuid(mx: Machine) -> None:
    x = uapi.kvm_xcrs()
    x.nr_xcrs = 1
    x.xcrs[0].value = 7
    with pytest.raises(KvmIoctlError):
        mx.vcpu.set_xcrs(x)  # AVX is not in the mock's leaf 0xD
    mx.vcpu.set_cpuid2(_with(supported_cpuid(mx.backend.profile), *AVX512_LEAVES))
    mx.vcpu.set_xcrs(x)
    assert mx.vcpu.get_xcrs().xcrs[0].value == 7


def test_cr4_osxsave_needs_xsave_in_cpuid(mx: Machine) -> None:
    cpuid = _with(supported_cpuid(mx.backend.profile), _leaf(1, 0, 0x50654, 0, 0, 0))
    v, _ = _run(mx, "mov rax, cr4\n bts rax, 18\n mov cr4, rax", osxsave=False, cpuid=cpuid)
    assert v == 13


# -- CLAC / STAC --------------------------------------------------------------------------------
def test_stac_clac_set_and_clear_ac(mx: Machine) -> None:
    cpuid = _with(supported_cpuid(mx.backend.profile), SMAP)
    v, r = _run(mx, "stac\n pushfq\n pop r8\n clac\n pushfq\n pop r9", cpuid=cpuid)
    assert v == -1 and r.r8 & AC and not r.r9 & AC


def test_clac_stac_ud_without_smap_or_at_cpl3(mx: Machine) -> None:
    assert _run(mx, "stac")[0] == 6  # the mock's own CPUID has no SMAP
    assert _run(mx, "clac")[0] == 6
    user = TO_USER + """
        stac
    """
    assert _run(mx, user, cpuid=_with(supported_cpuid(mx.backend.profile), SMAP))[0] == 6
