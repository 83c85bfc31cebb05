"""The XSAVE family, XGETBV/XSETBV and CLAC/STAC (helpers called from system.py's
0F 01 / 0F AE groups and gen_alu's 0F C7 group).

What the mock holds of the XSAVE-managed state: x87 and SSE in ``st.fpu``
(``struct kvm_fpu``), every other component as bytes of ``st.xsave`` (the
``struct kvm_xsave`` image, standard format) at the offset CPUID leaf 0xD gives
for it, with its XSTATE_BV bit in that image's header. The components a vCPU
has are the ones its CPUID (``KVM_SET_CPUID2``) lists in leaf 0xD: the mock's
own set (``backend.supported_cpuid``) lists x87 and SSE; a mock running for the
hybrid CPU gets KVM's leaf 0xD and moves AVX/AVX-512 state as bytes (it has no
instruction that computes with them).

XINUSE (SDM vol. 1 13.6) is what silicon shows (measured on Intel): a component
XRSTOR loads from memory is in use whatever its values, one it initialises is
not; the mock keeps that as the XSTATE_BV bits of ``st.xsave``'s header, and a
component whose values differ from its initial configuration (x87: FCW 037FH,
FSW 0, all tags empty, FOP/FIP/FDP 0, registers 0; SSE: the XMM registers 0; the
rest: all bytes 0) is in use too. XSAVE and XSAVEOPT write XSTATE_BV[1] from the
XMM registers alone; XSAVEC/XSAVES and XGETBV with ECX=1 also count an MXCSR
other than 1F80H (the compacted XRSTOR initialises MXCSR with SSE state).
XSAVEOPT and XSAVES use the init optimisation but not the modified one (which
the SDM leaves to the implementation). Intel SDM vol. 1 ch. 13, vol. 2 XSAVE*,
XRSTOR*, XGETBV, XSETBV, CLAC, STAC.
"""

from __future__ import annotations

import ctypes
import struct
from typing import TYPE_CHECKING, Dict, List, Optional, Tuple

from .decode import Insn
from .faults import GuestFault
from .state import AC, CR0_TS, CR4_OSXSAVE, MSR_IA32_XSS, VM

if TYPE_CHECKING:
    from .cpuview import HelperCpu

#: XSTATE_BV/XCOMP_BV bit 63: the compacted format.
XCOMP_COMPACT = 1 << 63
_LEGACY = "<HHBxHQQII"  # FCW FSW FTW(abridged) FOP FIP FDP MXCSR MXCSR_MASK
_MXCSR_MASK = 0xFFFF
_HDR = 512
_EXT = 576  # first byte after the XSAVE header


# -- what CPUID says --------------------------------------------------------------------------
def leaf(e: "HelperCpu", function: int, index: int = 0) -> Optional[Tuple[int, int, int, int]]:
    """(eax, ebx, ecx, edx) of the vCPU's CPUID entry, or None."""
    for ent in e.cpuid:
        if ent.function == function and (not ent.flags & 1 or ent.index == index):
            return ent.eax, ent.ebx, ent.ecx, ent.edx
    return None


def has_xsave(e: "HelperCpu") -> bool:
    l1 = leaf(e, 1)
    return bool(l1 and l1[2] & (1 << 26))


def has_smap(e: "HelperCpu") -> bool:
    l7 = leaf(e, 7, 0)
    return bool(l7 and l7[1] & (1 << 20))


def xsave_features(e: "HelperCpu") -> int:
    """CPUID.(EAX=0DH,ECX=1):EAX: XSAVEOPT(0) XSAVEC(1) XGETBV1(2) XSAVES(3)."""
    if not has_xsave(e):
        return 0
    d1 = leaf(e, 0xD, 1)
    return d1[0] if d1 else 0


def supported_xcr0(e: "HelperCpu") -> int:
    if not has_xsave(e):
        return 0
    d0 = leaf(e, 0xD, 0)
    return (d0[0] | d0[3] << 32) if d0 else 0


def supported_xss(e: "HelperCpu") -> int:
    if not xsave_features(e) & 8:
        return 0
    d1 = leaf(e, 0xD, 1)
    return (d1[2] | d1[3] << 32) if d1 else 0


def components(e: "HelperCpu") -> Dict[int, Tuple[int, int, bool]]:
    """{i: (size, standard offset, 64-byte aligned when compacted)} for i >= 2."""
    out: Dict[int, Tuple[int, int, bool]] = {}
    mask = supported_xcr0(e) | supported_xss(e)
    for i in range(2, 63):
        if mask >> i & 1:
            sub = leaf(e, 0xD, i)
            if sub and sub[0]:
                out[i] = (sub[0], sub[1], bool(sub[2] & 2))
    return out


def xcr0_refusal(e: "HelperCpu", value: int) -> Optional[str]:
    """Why XSETBV/KVM_SET_XCRS refuses ``value`` for XCR0 (SDM XSETBV), or None."""
    if not value & 1:
        return "x87 state (bit 0) must be set"
    extra = value & ~(supported_xcr0(e) | 1)
    if extra:
        return f"bits {extra:#x} not supported (CPUID leaf 0xD)"
    if value & 4 and not value & 2:
        return "AVX (bit 2) needs SSE (bit 1)"
    if (value >> 3 & 1) != (value >> 4 & 1):
        return "MPX bits 3 and 4 must be equal"
    avx512 = value >> 5 & 7
    if avx512 not in (0, 7) or (avx512 and value & 6 != 6):
        return "AVX-512 bits 5-7 must be all set (with SSE and AVX) or all clear"
    if (value >> 17 & 1) != (value >> 18 & 1):
        return "AMX bits 17 and 18 must be equal"
    return None


def required_size(e: "HelperCpu", mask: int, compacted: bool) -> int:
    """Bytes of an XSAVE area holding the components of ``mask`` (CPUID 0xD EBX)."""
    comps = components(e)
    end = _EXT
    if compacted:
        for i in sorted(comps):
            if mask >> i & 1:
                size, _, align = comps[i]
                if align:
                    end = (end + 63) & ~63
                end += size
        return end
    for i, (size, off, _) in comps.items():
        if mask >> i & 1:
            end = max(end, off + size)
    return end


def dynamic_cpuid(e: "HelperCpu", function: int, index: int,
                  regs: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
    """The bits KVM keeps current (kvm_update_cpuid_runtime): leaf 1 ECX.OSXSAVE from
    CR4, leaf 0xD.0 EBX (size for XCR0) and 0xD.1 EBX (compacted size for XCR0|XSS)."""
    eax, ebx, ecx, edx = regs
    st = e.st
    if function == 1 and ecx & (1 << 26):
        ecx = (ecx & ~(1 << 27)) | ((1 << 27) if st.cr4 & CR4_OSXSAVE else 0)
    elif function == 0xD and index == 0 and has_xsave(e):
        ebx = required_size(e, st.xcr0, False)
    elif function == 0xD and index == 1 and xsave_features(e) & 0xA:
        ebx = required_size(e, st.xcr0 | st.msrs.get(MSR_IA32_XSS, 0), True)
    return eax, ebx, ecx, edx


# -- XINUSE -----------------------------------------------------------------------------------
def _xmm_count(e: "HelperCpu") -> int:
    return 16 if e.bits == 64 else 8


def xinuse(e: "HelperCpu", mxcsr: bool = False) -> int:
    """XINUSE: the header's XSTATE_BV bits, plus every component not in its initial
    configuration; ``mxcsr``: SSE also when MXCSR is not 1F80H (XSAVEC, XGETBV)."""
    st = e.st
    f = st.fpu
    raw = _image(e)
    used: int = struct.unpack_from("<Q", raw, _HDR)[0]
    used &= supported_xcr0(e) | supported_xss(e) | 3
    if (f.fcw != 0x37F or f.fsw or f.ftwx or f.last_opcode or f.last_ip or f.last_dp
            or any(any(bytes(r)) for r in f.fpr)):
        used |= 1
    if any(any(bytes(f.xmm[i])) for i in range(_xmm_count(e))) or \
            (mxcsr and f.mxcsr != 0x1F80):
        used |= 2
    for i, (size, off, _) in components(e).items():
        if not used >> i & 1 and any(raw[off:off + size]):
            used |= 1 << i
    return used


def _image(e: "HelperCpu") -> memoryview:
    return memoryview((ctypes.c_ubyte * 4096).from_buffer(e.st.xsave)).cast("B")


# -- the instructions -------------------------------------------------------------------------
def _check_enabled(e: "HelperCpu", feature: int = 0, nm: bool = True) -> None:
    """#UD unless CPUID has XSAVE (and ``feature`` of leaf 0xD.1) and CR4.OSXSAVE is
    set; #NM when CR0.TS is set (``nm``)."""
    if not has_xsave(e) or not e.st.cr4 & CR4_OSXSAVE:
        raise GuestFault(6)
    if feature and not xsave_features(e) & feature:
        raise GuestFault(6)
    if nm and e.st.cr0 & CR0_TS:
        raise GuestFault(7)


def _rfbm(e: "HelperCpu", supervisor: bool) -> int:
    st = e.st
    mask = st.xcr0 | (st.msrs.get(MSR_IA32_XSS, 0) if supervisor else 0)
    return mask & (((st.R[2] & 0xFFFFFFFF) << 32) | (st.R[0] & 0xFFFFFFFF))


def _user(e: "HelperCpu") -> bool:
    return e.cpl == 3


def _address(e: "HelperCpu", d: Insn) -> int:
    from .transfer import _ea

    a = _ea(e, d)
    if a & 63:
        raise GuestFault(13, 0)
    return a


def _layout(e: "HelperCpu", bv: int, compacted: bool) -> Dict[int, int]:
    """{component: offset in the area} for the components >= 2 of ``bv``."""
    out: Dict[int, int] = {}
    loc = _EXT
    for i, (size, off, align) in sorted(components(e).items()):
        if not bv >> i & 1:
            continue
        if compacted:
            if align:
                loc = (loc + 63) & ~63
            out[i] = loc
            loc += size
        else:
            out[i] = off
    return out


def _legacy_x87(e: "HelperCpu", wide: bool) -> bytes:
    f = e.st.fpu
    if wide:
        head = struct.pack("<HHBxHQQ", f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip,
                           f.last_dp)
    else:  # FIP/FDP 32 bits, FCS/FDS (deprecated: saved as 0)
        head = struct.pack("<HHBxHIHxxIHxx", f.fcw, f.fsw, f.ftwx, f.last_opcode,
                           f.last_ip & 0xFFFFFFFF, 0, f.last_dp & 0xFFFFFFFF, 0)
    return head + b"".join(bytes(f.fpr[i]) for i in range(8))


def save(e: "HelperCpu", d: Insn, kind: str) -> None:
    """XSAVE, XSAVEOPT, XSAVEC, XSAVES (``kind``) to the memory operand of ``d``."""
    st = e.st
    feature = {"xsave": 0, "xsaveopt": 1, "xsavec": 2, "xsaves": 8}[kind]
    _check_enabled(e, feature)
    if kind == "xsaves" and e.cpl:
        raise GuestFault(13, 0)
    a = _address(e, d)
    user = _user(e)
    mmu = e.mmu
    rfbm = _rfbm(e, kind == "xsaves")
    compacted = kind in ("xsavec", "xsaves")
    inuse = xinuse(e, mxcsr=compacted)
    skip_init = kind != "xsave"
    saved = rfbm & inuse if skip_init else rfbm
    f = st.fpu
    writes: List[Tuple[int, bytes]] = []
    if saved & 1:
        x87 = _legacy_x87(e, d.rexw)
        writes += [(0, x87[:24]), (32, x87[24:])]
    if rfbm & 6 and (not compacted or saved & 2):
        writes.append((24, struct.pack("<II", f.mxcsr, _MXCSR_MASK)))
    if saved & 2:
        n = _xmm_count(e)
        writes.append((160, b"".join(bytes(f.xmm[i]) for i in range(n))))
    raw = _image(e)
    layout = _layout(e, rfbm, compacted)
    comps = components(e)
    for i, off in layout.items():
        if saved >> i & 1:
            size, std, _ = comps[i]
            writes.append((off, bytes(raw[std:std + size])))
    del raw
    if compacted:
        header = struct.pack("<QQ", rfbm & inuse, rfbm | XCOMP_COMPACT)  # not 16..63
        writes.append((_HDR, header))
    else:
        old = mmu.read_int((a + _HDR) & mmu.lin_mask, 8, user)
        bv = (old & ~rfbm) | (rfbm & inuse)
        writes.append((_HDR, struct.pack("<Q", bv)))
    for off, data in writes:
        mmu.write((a + off) & mmu.lin_mask, data, user)


def restore(e: "HelperCpu", d: Insn, kind: str) -> None:
    """XRSTOR or XRSTORS (``kind``) from the memory operand of ``d``."""
    st = e.st
    supervisor = kind == "xrstors"
    _check_enabled(e, 8 if supervisor else 0)
    if supervisor and e.cpl:
        raise GuestFault(13, 0)
    a = _address(e, d)
    user = _user(e)
    mmu = e.mmu
    rfbm = _rfbm(e, supervisor)
    hdr = mmu.read((a + _HDR) & mmu.lin_mask, 64, user)
    bv, comp = struct.unpack_from("<QQ", hdr)
    compacted = bool(comp & XCOMP_COMPACT) and bool(xsave_features(e) & 2)
    allowed = st.xcr0 | (st.msrs.get(MSR_IA32_XSS, 0) if supervisor else 0)
    if supervisor and not compacted:
        raise GuestFault(13, 0)
    if compacted:
        if comp & ~XCOMP_COMPACT & ~allowed or bv & ~comp or any(hdr[16:]):
            raise GuestFault(13, 0)
    elif bv & ~allowed or any(hdr[8:24]):
        raise GuestFault(13, 0)
    legacy = mmu.read(a, 416, user)
    mxcsr = struct.unpack_from("<I", legacy, 24)[0]
    load_mxcsr = bool(rfbm & 2 and bv & 2) if compacted else bool(rfbm & 6)
    if load_mxcsr and mxcsr & ~_MXCSR_MASK:
        raise GuestFault(13, 0)
    comps = components(e)
    layout = _layout(e, comp if compacted else rfbm, compacted)
    loads: Dict[int, bytes] = {}
    for i, off in layout.items():
        if rfbm >> i & 1 and bv >> i & 1:
            loads[i] = mmu.read((a + off) & mmu.lin_mask, comps[i][0], user)
    # every check and read done: change the state
    f = st.fpu
    if rfbm & 1:
        if bv & 1:
            if d.rexw:
                (f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip,
                 f.last_dp) = struct.unpack_from("<HHBxHQQ", legacy)
            else:
                (f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip, _, f.last_dp,
                 _) = struct.unpack_from("<HHBxHIHxxIHxx", legacy)
            for i in range(8):
                ctypes.memmove(ctypes.addressof(f.fpr[i]), legacy[32 + 16 * i: 48 + 16 * i], 16)
        else:
            f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip, f.last_dp = 0x37F, 0, 0, 0, 0, 0
            for i in range(8):
                ctypes.memset(ctypes.addressof(f.fpr[i]), 0, 16)
    if load_mxcsr:
        f.mxcsr = mxcsr
    elif compacted and rfbm & 2:
        f.mxcsr = 0x1F80
    if rfbm & 2:
        for i in range(_xmm_count(e)):
            if bv & 2:
                ctypes.memmove(ctypes.addressof(f.xmm[i]), legacy[160 + 16 * i: 176 + 16 * i],
                               16)
            else:
                ctypes.memset(ctypes.addressof(f.xmm[i]), 0, 16)
    raw = _image(e)
    header_bv = struct.unpack_from("<Q", raw, _HDR)[0]
    header_bv = (header_bv & ~(rfbm & 3)) | (rfbm & bv & 3)  # XINUSE: loaded, or not
    for i, (size, std, _) in comps.items():
        if rfbm >> i & 1:
            data = loads.get(i, bytes(size))
            raw[std:std + size] = data
            header_bv = (header_bv & ~(1 << i)) | ((1 << i) if i in loads else 0)
    struct.pack_into("<Q", raw, _HDR, header_bv)
    del raw


def xgetbv(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    _check_enabled(e, nm=False)
    n = st.R[1] & 0xFFFFFFFF
    if n == 0:
        v = st.xcr0
    elif n == 1 and xsave_features(e) & 4:
        v = st.xcr0 & xinuse(e, mxcsr=True)
    else:
        raise GuestFault(13, 0)
    st.R[0] = v & 0xFFFFFFFF
    st.R[2] = v >> 32


def xsetbv(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    _check_enabled(e, nm=False)
    if e.cpl or st.fl & VM:
        raise GuestFault(13, 0)
    v = ((st.R[2] & 0xFFFFFFFF) << 32) | (st.R[0] & 0xFFFFFFFF)
    if st.R[1] & 0xFFFFFFFF or xcr0_refusal(e, v):
        raise GuestFault(13, 0)
    st.xcr0 = v


def clac_stac(e: "HelperCpu", d: Insn) -> None:
    """CLAC (0F 01 CA) / STAC (0F 01 CB): #UD without SMAP in CPUID, at CPL > 0 and in
    virtual-8086 mode."""
    st = e.st
    if not has_smap(e) or e.cpl or st.fl & VM:
        raise GuestFault(6)
    if d.rm & 7 == 2:
        st.fl &= ~AC
    else:
        st.fl |= AC


def grp15_mem(e: "HelperCpu", d: Insn) -> None:
    """0F AE /4 XSAVE, /5 XRSTOR, /6 XSAVEOPT (memory forms, no 66/F2/F3 prefix)."""
    op = d.reg & 7
    if d.opsize_prefix or d.rep:
        raise GuestFault(6)
    if op == 4:
        save(e, d, "xsave")
    elif op == 5:
        restore(e, d, "xrstor")
    else:
        save(e, d, "xsaveopt")


def grp9_mem(e: "HelperCpu", d: Insn) -> None:
    """0F C7 /3 XRSTORS, /4 XSAVEC, /5 XSAVES (memory forms)."""
    op = d.reg & 7
    if d.opsize_prefix or d.rep:
        raise GuestFault(6)
    if op == 3:
        restore(e, d, "xrstors")
    elif op == 4:
        save(e, d, "xsavec")
    else:
        save(e, d, "xsaves")


__all__ = ["MSR_IA32_XSS", "leaf", "has_xsave", "has_smap", "xsave_features", "supported_xcr0",
           "supported_xss", "xcr0_refusal", "required_size", "dynamic_cpuid", "xinuse", "save",
           "restore", "xgetbv", "xsetbv", "clac_stac", "grp15_mem", "grp9_mem"]
