"""MockBackend: the pure-Python stand-in for /dev/kvm (system-fd level)."""

from __future__ import annotations

from typing import Dict, List, Optional, Union

from ... import uapi
from ...uapi import Cap
from ..base import Backend
from .state import MSR_INDEX_LIST
from .vendor import VendorProfile, get_profile

#: vCPU mapping size reported by KVM_GET_VCPU_MMAP_SIZE: run page, PIO page, coalesced ring.
VCPU_MMAP_SIZE = 3 * 4096

#: KVM_CHECK_EXTENSION answers. Anything absent is 0 (not offered).
CAPABILITIES: Dict[int, int] = {
    Cap.USER_MEMORY: 1,
    Cap.SET_TSS_ADDR: 1,
    Cap.SET_IDENTITY_MAP_ADDR: 1,
    Cap.EXT_CPUID: 1,
    Cap.USER_NMI: 1,
    Cap.ONE_REG: 1,
    Cap.VCPU_EVENTS: 1,
    Cap.DEBUGREGS: 1,
    Cap.XCRS: 1,
    Cap.XSAVE: 1,
    Cap.IMMEDIATE_EXIT: 1,
    Cap.SET_GUEST_DEBUG: 1,
    # the KVM_GUESTDBG_* control bits set_guest_debug accepts, as x86 KVM reports them
    Cap.SET_GUEST_DEBUG2: (uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP
                           | uapi.KVM_GUESTDBG_USE_SW_BP | uapi.KVM_GUESTDBG_USE_HW_BP
                           | uapi.KVM_GUESTDBG_INJECT_DB | uapi.KVM_GUESTDBG_INJECT_BP
                           | uapi.KVM_GUESTDBG_BLOCKIRQ),
    Cap.READONLY_MEM: 1,
    Cap.MP_STATE: 1,
    Cap.COALESCED_MMIO: uapi.KVM_COALESCED_MMIO_PAGE_OFFSET,
    Cap.COALESCED_PIO: 1,
    Cap.NR_MEMSLOTS: 32764,
    Cap.NR_VCPUS: 8,
    Cap.MAX_VCPUS: 8,
    Cap.MAX_VCPU_ID: 8,
    Cap.EXIT_HYPERCALL: 1 << 12,  # bit KVM_HC_MAP_GPA_RANGE, like the host
    Cap.GET_TSC_KHZ: 1,
    Cap.ENABLE_CAP: 1,
    Cap.ENABLE_CAP_VM: 1,
    Cap.CHECK_EXTENSION_VM: 1,
    Cap.INTERNAL_ERROR_DATA: 1,
    Cap.DESTROY_MEMORY_REGION_WORKS: 1,
    Cap.JOIN_MEMORY_REGIONS_WORKS: 1,
    Cap.SYNC_MMU: 1,
    Cap.NOP_IO_DELAY: 1,
    Cap.HLT: 1,
    # RDMSR/WRMSR exits to user space and the MSR filter (KVM answers 1 for both)
    Cap.X86_USER_SPACE_MSR: 1,
    Cap.X86_MSR_FILTER: 1,
}

KVM_HC_MAP_GPA_RANGE = 12
#: Mock TSC frequency (KVM_GET_TSC_KHZ); the guest TSC counts cycles of the instruction counter.
TSC_KHZ = 1_000_000


def _leaf(function: int, index: int, eax: int, ebx: int, ecx: int, edx: int,
          flags: int = 0) -> uapi.kvm_cpuid_entry2:
    e = uapi.kvm_cpuid_entry2()
    e.function, e.index, e.flags = function, index, flags
    e.eax, e.ebx, e.ecx, e.edx = eax, ebx, ecx, edx
    return e


def _vendor(s: bytes) -> tuple:  # type: ignore[type-arg]
    return tuple(int.from_bytes(s[i:i + 4], "little") for i in (0, 4, 8))


def supported_cpuid(profile: Optional[VendorProfile] = None) -> List[uapi.kvm_cpuid_entry2]:
    """The CPUID set of ``profile``'s vendor (default: the host's), advertising only
    what the mock emulates.

    Leaf 0 and 0x80000000 carry the profile's vendor string, leaf 1 and 0x80000001
    EAX its family/model/stepping signature (vendor.py); the feature bits are the
    same for both vendors:

    Leaf 1 EDX: PSE(3) TSC(4) MSR(5) PAE(6) CX8(8) PGE(13) CMOV(15) PAT(16) CLFSH(19)
    FXSR(24, FXSAVE/FXRSTOR of the stored state); ECX: CX16(13) x2APIC(21) POPCNT(23)
    TSC-deadline(24) XSAVE(26; OSXSAVE(27) follows CR4 as on KVM). Not set: FPU (no x87
    arithmetic), APIC, SEP, MMX, SSE*, AVX. Leaf 0xB is the extended topology (EDX: the
    x2APIC ID, set per vCPU by the CPU model). Leaf 0xD: XCR0 may hold x87 and SSE (the
    stored state, 576 bytes); sub-leaf 1: XSAVEOPT, XSAVEC, XGETBV with ECX=1,
    XSAVES/XRSTORS (no supervisor components: IA32_XSS only takes 0); EBX of both
    follows XCR0 (xsave.py). Leaf 0x80000001: LAHF(ECX0) ABM/LZCNT(ECX5), SYSCALL(EDX11)
    NX(EDX20) 1GB pages(EDX26) RDTSCP(EDX27) LM(EDX29). Leaf 7 is empty (TZCNT executes
    but BMI1 is not claimed; no SMAP: CLAC/STAC are #UD, as on silicon without it).
    """
    if profile is None:
        profile = get_profile()
    vb, vd, vc = _vendor(profile.vendor_id)
    edx1 = (1 << 3) | (1 << 4) | (1 << 5) | (1 << 6) | (1 << 8) | (1 << 13) \
        | (1 << 15) | (1 << 16) | (1 << 19) | (1 << 24)
    # x2APIC (21) and TSC-deadline (24) as KVM lists them: without an in-kernel APIC
    # their MSRs #GP unless user space takes them (KVM_CAP_X86_USER_SPACE_MSR + filter)
    ecx1 = (1 << 13) | (1 << 21) | (1 << 23) | (1 << 24) | (1 << 26)
    edx81 = (1 << 11) | (1 << 20) | (1 << 26) | (1 << 27) | (1 << 29)
    ecx81 = (1 << 0) | (1 << 5)
    brand = b"kvmcpu mock vCPU (pure Python)".ljust(48, b"\0")
    words = [int.from_bytes(brand[i:i + 4], "little") for i in range(0, 48, 4)]
    return [
        _leaf(0, 0, 0xD, vb, vc, vd),
        _leaf(1, 0, profile.signature, 0x00000800, ecx1, edx1),
        _leaf(7, 0, 0, 0, 0, 0, uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        # Leaf 0xB (extended topology), as KVM lists it: EDX is the x2APIC ID, which
        # the CPU model sets per vCPU (as KVM's does); subleaf 0 here is an SMT level
        # of one thread (level type 1 in ECX[15:8], one logical processor).
        _leaf(0xB, 0, 0, 1, 0x100, 0, uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        _leaf(0xB, 1, 0, 0, 1, 0, uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        # XSAVE: x87 and SSE (576 bytes); XSAVEOPT, XSAVEC, XGETBV1, XSAVES; no XSS bits
        _leaf(0xD, 0, 0x3, 576, 576, 0, uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        _leaf(0xD, 1, 0xF, 576, 0, 0, uapi.KVM_CPUID_FLAG_SIGNIFCANT_INDEX),
        _leaf(0x80000000, 0, 0x80000008, vb, vc, vd),
        _leaf(0x80000001, 0, profile.signature, 0, ecx81, edx81),
        _leaf(0x80000002, 0, *words[0:4]),
        _leaf(0x80000003, 0, *words[4:8]),
        _leaf(0x80000004, 0, *words[8:12]),
        _leaf(0x80000008, 0, 0x3030, 0, 0, 0),
    ]


class MockBackend(Backend):
    """The software vCPU backend. Never unavailable.

    Args:
        vendor: ``"intel"`` or ``"amd"``: whose undefined flags and results the vCPUs
            imitate (vendor.py). None: ``KVMCPU_MOCK_VENDOR``, else the host's vendor.

    Raises:
        ValueError: an unknown vendor. TypeError: a vendor that is not a string.
    """

    name = "mock"

    def __init__(self, vendor: Optional[str] = None) -> None:
        #: the vendor profile every vCPU of this backend runs (fixed for its lifetime)
        self.profile: VendorProfile = get_profile(vendor)
        self._mark_open()

    def api_version(self) -> int:
        """Wraps KVM_GET_API_VERSION (12)."""
        self._check_open()
        return uapi.KVM_API_VERSION

    def check_extension(self, cap: Union[Cap, int]) -> int:
        """Wraps KVM_CHECK_EXTENSION: the documented capability set (CAPABILITIES)."""
        self._check_open()
        return CAPABILITIES.get(int(cap), 0)

    def vcpu_mmap_size(self) -> int:
        """Wraps KVM_GET_VCPU_MMAP_SIZE (three pages, like the host)."""
        self._check_open()
        return VCPU_MMAP_SIZE

    def get_supported_cpuid(self) -> List[uapi.kvm_cpuid_entry2]:
        """Wraps KVM_GET_SUPPORTED_CPUID: only features the mock emulates."""
        self._check_open()
        return supported_cpuid(self.profile)

    def get_msr_index_list(self) -> List[int]:
        """Wraps KVM_GET_MSR_INDEX_LIST."""
        self._check_open()
        return list(MSR_INDEX_LIST)

    def get_msr_feature_index_list(self) -> List[int]:
        """Wraps KVM_GET_MSR_FEATURE_INDEX_LIST (none)."""
        self._check_open()
        return []

    def has_run_clock(self) -> bool:
        """True: every mock vCPU counts and budgets instructions exactly."""
        return True

    def create_vm(self) -> "MockVm":
        """Wraps KVM_CREATE_VM."""
        self._check_open()
        from .vm import MockVm

        return MockVm(self)

    def describe(self) -> Dict[str, object]:
        d = super().describe()
        d["notes"] = ("pure-Python x86 interpreter: integer ISA, real/protected/long mode, "
                      "paging; no irqchip/PIT, no x87/SSE, deterministic instruction budget")
        p = self.profile
        d["vendor_profile"] = p.name
        d["vendor_profile_source"] = p.source
        return d


from .vm import MockVm  # noqa: E402  (type for create_vm's annotation)
