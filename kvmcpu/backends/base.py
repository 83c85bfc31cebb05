"""The backend contract: ``Backend`` -> ``Vm`` -> ``Vcpu``, in KVM's own terms.

Both backends (``kvm`` over /dev/kvm and the pure-Python ``mock``) implement
these classes with the same ``kvmcpu.uapi`` structures, the same errors and
the same ``kvm_run`` page semantics, so everything above this layer runs
unchanged on either. Every operation a backend must provide is an
``@abstractmethod``: an incomplete backend fails when instantiated.

Conventions shared by both backends:

* State getters return fresh uapi structures; setters take them.
* Failures the kernel would report are :class:`~kvmcpu.errors.KvmIoctlError`
  with KVM's errno (the mock uses the errno KVM would), named after the ioctl.
* Bad arguments raise ``ValueError``/``TypeError`` before any system call,
  checked here once for both backends (:func:`check_u64` and the wrappers
  :meth:`Vcpu.__init_subclass__`/:meth:`Vm.__init_subclass__` put around every
  backend's ``set_*`` methods): a setter refuses anything but its uapi
  structure, a guest address or size outside 0..2**64 (or a range that wraps)
  is a ValueError, an MSR index or value too wide for its field too. The
  uapi structures themselves are plain ctypes structures: assigning a value
  too wide for a field (``regs.rip = 2**70``) keeps its low bits, as C does,
  and no backend can see that it happened; check values before storing them.
* ``run()`` returns a decoded exit (:mod:`kvmcpu.backends.exits`); EINTR is an
  :class:`~kvmcpu.backends.exits.IntrExit`, never an exception.
* Everything is a context manager with an idempotent ``close()``; using a
  closed object raises :class:`~kvmcpu.errors.ClosedError`; closing a backend
  closes its VMs (and so their vCPUs) first; forgetting to close warns with
  ``ResourceWarning``.
"""

from __future__ import annotations

import abc
import ctypes
import errno
import logging
import warnings
import weakref
from dataclasses import dataclass
from typing import (
    Any,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Protocol,
    Sequence,
    Tuple,
    TypeVar,
    Union,
)

from .. import uapi
from ..errors import ClosedError, KvmIoctlError
from ..hostmem import PAGE_SIZE, HostMemory
from ..uapi import Cap
from .checks import (
    U64_LIMIT,
    VCPU_SETTER_CHECKS,
    VM_SETTER_CHECKS,
    _wrap_setters,
    check_int,
    check_struct,
    check_u64,
)
from .exits import Exit

log = logging.getLogger("kvmcpu.backends")

_T = TypeVar("_T", bound="Closeable")


#: Every backend object that is open right now (tests use it to find leaks
#: and the KVM watchdog to find vCPUs to kick).
open_objects: "weakref.WeakSet[Closeable]" = weakref.WeakSet()


class Closeable:
    """Idempotent close, context manager, ClosedError after close, ResourceWarning if leaked.

    Subclasses call ``_mark_open()`` at the end of a successful ``__init__``.
    """

    _closed: bool = True  # until a subclass finishes __init__

    def _mark_open(self) -> None:
        self._closed = False
        open_objects.add(self)

    @property
    def closed(self) -> bool:
        return self._closed

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"{type(self).__name__} is closed")

    def _close(self) -> None:
        """Release resources; called once by close()."""

    def close(self) -> None:
        """Release every resource. Idempotent."""
        if self._closed:
            return
        self._closed = True
        open_objects.discard(self)
        self._close()

    def __enter__(self: _T) -> _T:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            warnings.warn(f"{self!r} was not closed", ResourceWarning, stacklevel=2)
            try:
                self.close()
            except Exception:  # noqa: BLE001 - never raise from a finalizer
                pass


@dataclass(frozen=True)
class MemorySlot:
    """One registered memory slot (kvm_userspace_memory_region plus its host buffer)."""

    slot: int
    guest_phys_addr: int
    memory_size: int
    flags: int
    memory: HostMemory
    offset: int  # offset of the slot's first byte inside ``memory``

    @property
    def end(self) -> int:
        return self.guest_phys_addr + self.memory_size

    @property
    def readonly(self) -> bool:
        return bool(self.flags & uapi.KVM_MEM_READONLY)

    def contains(self, gpa: int, length: int = 1) -> bool:
        return self.guest_phys_addr <= gpa and gpa + length <= self.end


@dataclass(frozen=True)
class CoalescedMmio:
    """One entry drained from the coalesced MMIO/PIO ring."""

    phys_addr: int
    data: bytes
    pio: bool


# ---------------------------------------------------------------------------
# Backend
# ---------------------------------------------------------------------------
class Backend(Closeable, abc.ABC):
    """A source of VMs: /dev/kvm or the mock. Obtain one with ``get_backend()``."""

    #: Registry name ("kvm", "mock").
    name: str = ""
    #: Why this backend was chosen (filled in by get_backend, shown by ``kvmcpu info``).
    reason: str = ""

    @abc.abstractmethod
    def api_version(self) -> int:
        """Wraps KVM_GET_API_VERSION (12)."""

    @abc.abstractmethod
    def check_extension(self, cap: Union[Cap, int]) -> int:
        """Wraps KVM_CHECK_EXTENSION on the system fd; 0 means absent."""

    @abc.abstractmethod
    def vcpu_mmap_size(self) -> int:
        """Wraps KVM_GET_VCPU_MMAP_SIZE: bytes of the per-vCPU run mapping."""

    @abc.abstractmethod
    def get_supported_cpuid(self) -> List[uapi.kvm_cpuid_entry2]:
        """Wraps KVM_GET_SUPPORTED_CPUID (grows the buffer on E2BIG)."""

    @abc.abstractmethod
    def get_msr_index_list(self) -> List[int]:
        """Wraps KVM_GET_MSR_INDEX_LIST: the MSRs get_msrs/set_msrs accept."""

    @abc.abstractmethod
    def get_msr_feature_index_list(self) -> List[int]:
        """Wraps KVM_GET_MSR_FEATURE_INDEX_LIST (empty when unsupported)."""

    @abc.abstractmethod
    def create_vm(self) -> "Vm":
        """Wraps KVM_CREATE_VM."""

    def close(self) -> None:
        """Close every VM of this backend still open (and their vCPUs), then the
        backend itself. Idempotent."""
        if self._closed:
            return
        for vm in list(self._vms_open()):
            vm.close()
        super().close()

    def _vms_open(self) -> "weakref.WeakSet[Vm]":
        vms: Optional["weakref.WeakSet[Vm]"] = self.__dict__.get("_contract_vms")
        if vms is None:
            vms = self.__dict__["_contract_vms"] = weakref.WeakSet()
        return vms

    def has_run_clock(self) -> bool:
        """Whether this backend's vCPUs have an exact run clock (:meth:`Vcpu.run_clock`:
        an instruction budget and exact counts, so single steps are exact and cheap);
        answerable before any vCPU exists. False unless a backend says otherwise."""
        return False

    def describe(self) -> Dict[str, object]:
        """Facts for ``kvmcpu info``: name, reason, API version, notes."""
        return {"backend": self.name, "reason": self.reason, "api_version": self.api_version()}

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.name!r} {state}>"


# ---------------------------------------------------------------------------
# Vm
# ---------------------------------------------------------------------------
class Vm(Closeable, abc.ABC):
    """A virtual machine: memory slots, vCPUs, interrupt controllers.

    Slot bookkeeping, guest-physical reads/writes and ``add_ram`` are shared
    code; backends implement ``_set_user_memory_region`` to tell the kernel
    (or the mock) and everything marked abstract.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_setters(cls, VM_SETTER_CHECKS)

    def __init__(self, backend: Backend) -> None:
        backend._check_open()
        self.backend = backend
        self.slots: Dict[int, MemorySlot] = {}
        self.vcpus: Dict[int, "Vcpu"] = {}
        self._owned_memory: List[HostMemory] = []
        backend._vms_open().add(self)

    # -- capabilities ---------------------------------------------------------
    @abc.abstractmethod
    def check_extension(self, cap: Union[Cap, int]) -> int:
        """Wraps KVM_CHECK_EXTENSION on the VM fd."""

    @abc.abstractmethod
    def enable_cap(self, cap: Union[Cap, int], *args: int, flags: int = 0) -> None:
        """Wraps KVM_ENABLE_CAP on the VM fd."""

    # -- memory ---------------------------------------------------------------
    def set_user_memory_region(
        self,
        slot: int,
        guest_phys_addr: int,
        memory: Optional[HostMemory],
        flags: int = 0,
        *,
        size: Optional[int] = None,
        offset: int = 0,
    ) -> None:
        """Wraps KVM_SET_USER_MEMORY_REGION.

        Maps ``size`` bytes (default: all of ``memory`` after ``offset``) of the
        host buffer at ``guest_phys_addr``. ``memory=None`` or ``size=0``
        deletes the slot. Errors are KVM's: overlap with another slot EEXIST,
        misaligned address/size or unknown flags EINVAL.
        """
        self._check_open()
        if not isinstance(slot, int) or slot < 0 or slot > 0xFFFF_FFFF:
            raise ValueError(f"slot must be a u32, got {slot!r}")
        check_u64("guest_phys_addr", guest_phys_addr)
        check_int("flags", flags, bits=32)
        if size is not None:
            check_u64("size", size)
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise TypeError(f"offset must be an int, got {type(offset).__name__}")
        if memory is None or size == 0:
            self._set_user_memory_region(slot, flags, guest_phys_addr, 0, None, 0)
            self.slots.pop(slot, None)
            return
        if not isinstance(memory, HostMemory):
            raise TypeError(f"memory must be a HostMemory, got {type(memory).__name__}")
        if size is None:
            size = memory.size - offset
        if offset < 0 or size < 0 or offset + size > memory.size:
            raise ValueError(
                f"slot {slot}: [{offset:#x}, +{size:#x}) is outside the "
                f"{memory.size:#x}-byte buffer"
            )
        if guest_phys_addr + size > U64_LIMIT:
            raise ValueError(f"slot {slot}: [{guest_phys_addr:#x}, +{size:#x}) wraps around "
                             f"the end of the 64-bit guest physical address space")
        self._set_user_memory_region(slot, flags, guest_phys_addr, size, memory, offset)
        self.slots[slot] = MemorySlot(slot, guest_phys_addr, size, flags, memory, offset)

    @abc.abstractmethod
    def _set_user_memory_region(
        self,
        slot: int,
        flags: int,
        guest_phys_addr: int,
        memory_size: int,
        memory: Optional[HostMemory],
        offset: int,
    ) -> None:
        """Backend part of set_user_memory_region (size 0: delete)."""

    def add_ram(self, guest_phys_addr: int, size: int, *, flags: int = 0) -> HostMemory:
        """Allocate ``size`` bytes of host memory, map it at ``guest_phys_addr`` in the
        lowest free slot and return it. The VM owns the buffer and frees it on close."""
        self._check_open()
        check_u64("guest_phys_addr", guest_phys_addr)
        check_int("flags", flags, bits=32)
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if size > 0 and guest_phys_addr + size > U64_LIMIT:
            raise ValueError(f"[{guest_phys_addr:#x}, +{size:#x}) wraps around the end of "
                             f"the 64-bit guest physical address space")
        mem = HostMemory(size)
        slot = 0
        while slot in self.slots:
            slot += 1
        try:
            self.set_user_memory_region(slot, guest_phys_addr, mem, flags)
        except BaseException:
            mem.close()
            raise
        self._owned_memory.append(mem)
        return mem

    def slot_for(self, gpa: int, length: int = 1) -> Optional[MemorySlot]:
        """The slot holding ``[gpa, gpa+length)`` entirely, or None."""
        for s in self.slots.values():
            if s.contains(gpa, length):
                return s
        return None

    def read_guest(self, gpa: int, length: int) -> bytes:
        """Copy guest-physical memory (must lie inside one slot)."""
        s = self.slot_for(gpa, length)
        if s is None:
            raise ValueError(f"guest range [{gpa:#x}, +{length:#x}) is not backed by one slot")
        off = s.offset + gpa - s.guest_phys_addr
        return bytes(s.memory.view[off : off + length])

    def write_guest(self, gpa: int, data: bytes) -> None:
        """Write guest-physical memory from the host (ignores the read-only flag, as
        a VMM writing its own buffer does; must lie inside one slot)."""
        s = self.slot_for(gpa, len(data))
        if s is None:
            raise ValueError(f"guest range [{gpa:#x}, +{len(data):#x}) is not backed by one slot")
        off = s.offset + gpa - s.guest_phys_addr
        s.memory.view[off : off + len(data)] = data
        s.memory.notify_written(off, len(data))

    @abc.abstractmethod
    def get_dirty_log(self, slot: int) -> bytes:
        """Wraps KVM_GET_DIRTY_LOG: one bit per page of the slot, cleared by reading.
        ENOENT for a slot without KVM_MEM_LOG_DIRTY_PAGES."""

    def dirty_pages(self, slot: int) -> List[int]:
        """Page indices (within the slot) written since the last call."""
        bitmap = self.get_dirty_log(slot)
        pages = []
        for i, byte in enumerate(bitmap):
            if byte:
                for bit in range(8):
                    if byte >> bit & 1:
                        pages.append(i * 8 + bit)
        return pages

    @abc.abstractmethod
    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """Wraps KVM_REGISTER_COALESCED_MMIO (pio=True: a coalesced port range)."""

    @abc.abstractmethod
    def unregister_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """Wraps KVM_UNREGISTER_COALESCED_MMIO."""

    # -- platform -------------------------------------------------------------
    @abc.abstractmethod
    def set_tss_addr(self, addr: int) -> None:
        """Wraps KVM_SET_TSS_ADDR (three pages Intel needs for real mode)."""

    @abc.abstractmethod
    def set_identity_map_addr(self, addr: int) -> None:
        """Wraps KVM_SET_IDENTITY_MAP_ADDR."""

    @abc.abstractmethod
    def create_irqchip(self) -> None:
        """Wraps KVM_CREATE_IRQCHIP (PIC + IOAPIC + local APICs in the kernel)."""

    @abc.abstractmethod
    def create_pit2(self, flags: int = 0) -> None:
        """Wraps KVM_CREATE_PIT2."""

    @abc.abstractmethod
    def irq_line(self, irq: int, level: int) -> None:
        """Wraps KVM_IRQ_LINE (needs the in-kernel irqchip)."""

    @abc.abstractmethod
    def get_irqchip(self, chip_id: int) -> uapi.kvm_irqchip:
        """Wraps KVM_GET_IRQCHIP."""

    @abc.abstractmethod
    def set_irqchip(self, chip: uapi.kvm_irqchip) -> None:
        """Wraps KVM_SET_IRQCHIP."""

    def set_msr_filter(self, msr_filter: uapi.kvm_msr_filter) -> None:
        """Wraps KVM_X86_SET_MSR_FILTER (with KVM_CAP_X86_USER_SPACE_MSR enabled, the
        MSRs it denies exit to user space). A backend without it: ENOTTY."""
        self._check_open()
        check_struct("set_msr_filter", "msr_filter", msr_filter, uapi.kvm_msr_filter)
        raise KvmIoctlError("KVM_X86_SET_MSR_FILTER", errno.ENOTTY,
                            "the backend has no MSR filter")

    def signal_msi(self, address: int, data: int) -> int:
        """Wraps KVM_SIGNAL_MSI (an MSI to the in-kernel local APICs; returns >0 when
        delivered, 0 when blocked). A backend without in-kernel APICs: ENOTTY."""
        self._check_open()
        raise KvmIoctlError("KVM_SIGNAL_MSI", errno.ENOTTY, "the backend has no in-kernel APIC")

    def set_gsi_routing(self, msi_routes: Sequence[Tuple[int, int, int]]) -> None:
        """Wraps KVM_SET_GSI_ROUTING with MSI entries ``(gsi, address, data)`` (with
        KVM_CAP_SPLIT_IRQCHIP, KVM learns from them which IOAPIC vectors are level
        triggered, for KVM_EXIT_IOAPIC_EOI). A backend without it: ENOTTY."""
        self._check_open()
        raise KvmIoctlError("KVM_SET_GSI_ROUTING", errno.ENOTTY, "the backend has no GSI routing")

    @abc.abstractmethod
    def get_pit2(self) -> uapi.kvm_pit_state2:
        """Wraps KVM_GET_PIT2."""

    @abc.abstractmethod
    def set_pit2(self, state: uapi.kvm_pit_state2) -> None:
        """Wraps KVM_SET_PIT2."""

    @abc.abstractmethod
    def get_clock(self) -> uapi.kvm_clock_data:
        """Wraps KVM_GET_CLOCK."""

    @abc.abstractmethod
    def set_clock(self, data: uapi.kvm_clock_data) -> None:
        """Wraps KVM_SET_CLOCK."""

    @property
    @abc.abstractmethod
    def has_irqchip(self) -> bool:
        """True once create_irqchip() succeeded."""

    # -- vCPUs ----------------------------------------------------------------
    def create_vcpu(self, vcpu_id: int = 0) -> "Vcpu":
        """Wraps KVM_CREATE_VCPU and maps (or allocates) its kvm_run page."""
        self._check_open()
        if not isinstance(vcpu_id, int) or vcpu_id < 0:
            raise ValueError(f"vcpu_id must be a non-negative int, got {vcpu_id!r}")
        if vcpu_id in self.vcpus and not self.vcpus[vcpu_id].closed:
            raise KvmIoctlError("KVM_CREATE_VCPU", errno.EEXIST, f"vCPU {vcpu_id} exists")
        vcpu = self._create_vcpu(vcpu_id)
        self.vcpus[vcpu_id] = vcpu
        return vcpu

    @abc.abstractmethod
    def _create_vcpu(self, vcpu_id: int) -> "Vcpu":
        """Backend part of create_vcpu."""

    def _close(self) -> None:
        for vcpu in list(self.vcpus.values()):
            vcpu.close()
        self.vcpus.clear()
        self._close_vm()
        self.slots.clear()
        for mem in self._owned_memory:
            mem.close()
        self._owned_memory.clear()

    @abc.abstractmethod
    def _close_vm(self) -> None:
        """Release the VM itself (vCPUs are already closed)."""

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.slots)} slots, {len(self.vcpus)} vcpus"
        return f"<{type(self).__name__} {state}>"


# ---------------------------------------------------------------------------
# Vcpu
# ---------------------------------------------------------------------------
class RunClock(Protocol):
    """An exact run clock: an instruction budget and exact counts (``Vcpu.run_clock()``).

    ``set_budget(n)``: run() returns IntrExit after ``n`` more instructions (None: no
    limit); ``instructions_retired`` and ``cycles`` count exactly, from the vCPU's start.
    """

    def set_budget(self, n_instructions: Optional[int]) -> None: ...

    @property
    def instructions_retired(self) -> int: ...

    @property
    def cycles(self) -> int: ...


class Vcpu(Closeable, abc.ABC):
    """One virtual CPU with its ``kvm_run`` page.

    ``kvm_run`` is the uapi structure over the run page and ``run_page`` a
    writable byte view of the whole mapping (``vcpu_mmap_size`` bytes): the
    data of IO exits lives inside it at ``io.data_offset``.
    """

    kvm_run: uapi.kvm_run
    run_page: memoryview

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _wrap_setters(cls, VCPU_SETTER_CHECKS)

    def __init__(self, vm: Vm, vcpu_id: int) -> None:
        self.vm = vm
        self.vcpu_id = vcpu_id

    # -- running --------------------------------------------------------------
    @abc.abstractmethod
    def run(self) -> Exit:
        """Wraps KVM_RUN and decodes the exit. EINTR gives an IntrExit."""

    @property
    def immediate_exit(self) -> bool:
        """kvm_run.immediate_exit: when set, the next run() returns IntrExit at once."""
        return bool(self.kvm_run.immediate_exit)

    @immediate_exit.setter
    def immediate_exit(self, value: bool) -> None:
        self.kvm_run.immediate_exit = 1 if value else 0

    @property
    def request_interrupt_window(self) -> bool:
        """kvm_run.request_interrupt_window: exit with IRQ_WINDOW_OPEN when injectable."""
        return bool(self.kvm_run.request_interrupt_window)

    @request_interrupt_window.setter
    def request_interrupt_window(self, value: bool) -> None:
        self.kvm_run.request_interrupt_window = 1 if value else 0

    @property
    def ready_for_interrupt_injection(self) -> bool:
        return bool(self.kvm_run.ready_for_interrupt_injection)

    @property
    def if_flag(self) -> bool:
        return bool(self.kvm_run.if_flag)

    def run_clock(self) -> Optional[RunClock]:
        """The vCPU's exact run clock (instruction budget, exact instruction and cycle
        counts), or None when the backend has none (KVM: time is the host's)."""
        return None

    @abc.abstractmethod
    def kick(self) -> None:
        """Make a run() in progress on another thread return IntrExit soon
        (sets immediate_exit; the KVM backend also signals the thread)."""

    # -- register state -------------------------------------------------------
    @abc.abstractmethod
    def get_regs(self) -> uapi.kvm_regs:
        """Wraps KVM_GET_REGS."""

    @abc.abstractmethod
    def set_regs(self, regs: uapi.kvm_regs) -> None:
        """Wraps KVM_SET_REGS."""

    @abc.abstractmethod
    def get_sregs(self) -> uapi.kvm_sregs:
        """Wraps KVM_GET_SREGS."""

    @abc.abstractmethod
    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        """Wraps KVM_SET_SREGS (EINVAL for inconsistent CR0/CR4/EFER, old state kept)."""

    @abc.abstractmethod
    def get_fpu(self) -> uapi.kvm_fpu:
        """Wraps KVM_GET_FPU."""

    @abc.abstractmethod
    def set_fpu(self, fpu: uapi.kvm_fpu) -> None:
        """Wraps KVM_SET_FPU."""

    @abc.abstractmethod
    def get_msrs(self, indices: Iterable[int]) -> Dict[int, int]:
        """Wraps KVM_GET_MSRS. Stops at the first MSR the backend does not know, as
        KVM does: the result holds the MSRs read before it."""

    @abc.abstractmethod
    def set_msrs(self, values: Union[Mapping[int, int], Sequence[Tuple[int, int]]]) -> int:
        """Wraps KVM_SET_MSRS; returns how many were set (KVM stops at the first failure)."""

    @abc.abstractmethod
    def get_cpuid2(self) -> List[uapi.kvm_cpuid_entry2]:
        """Wraps KVM_GET_CPUID2."""

    @abc.abstractmethod
    def set_cpuid2(self, entries: Sequence[uapi.kvm_cpuid_entry2]) -> None:
        """Wraps KVM_SET_CPUID2."""

    @abc.abstractmethod
    def get_xsave(self) -> uapi.kvm_xsave:
        """Wraps KVM_GET_XSAVE2 when the VM reports KVM_CAP_XSAVE2, else KVM_GET_XSAVE."""

    @abc.abstractmethod
    def set_xsave(self, xsave: uapi.kvm_xsave) -> None:
        """Wraps KVM_SET_XSAVE."""

    @abc.abstractmethod
    def get_xcrs(self) -> uapi.kvm_xcrs:
        """Wraps KVM_GET_XCRS."""

    @abc.abstractmethod
    def set_xcrs(self, xcrs: uapi.kvm_xcrs) -> None:
        """Wraps KVM_SET_XCRS."""

    @abc.abstractmethod
    def get_vcpu_events(self) -> uapi.kvm_vcpu_events:
        """Wraps KVM_GET_VCPU_EVENTS."""

    @abc.abstractmethod
    def set_vcpu_events(self, events: uapi.kvm_vcpu_events) -> None:
        """Wraps KVM_SET_VCPU_EVENTS."""

    @abc.abstractmethod
    def get_debugregs(self) -> uapi.kvm_debugregs:
        """Wraps KVM_GET_DEBUGREGS."""

    @abc.abstractmethod
    def set_debugregs(self, dregs: uapi.kvm_debugregs) -> None:
        """Wraps KVM_SET_DEBUGREGS."""

    @abc.abstractmethod
    def get_mp_state(self) -> int:
        """Wraps KVM_GET_MP_STATE (a KVM_MP_STATE_* value)."""

    @abc.abstractmethod
    def set_mp_state(self, state: int) -> None:
        """Wraps KVM_SET_MP_STATE."""

    @abc.abstractmethod
    def get_lapic(self) -> uapi.kvm_lapic_state:
        """Wraps KVM_GET_LAPIC (needs the in-kernel irqchip)."""

    @abc.abstractmethod
    def set_lapic(self, lapic: uapi.kvm_lapic_state) -> None:
        """Wraps KVM_SET_LAPIC."""

    @abc.abstractmethod
    def get_one_reg(self, reg_id: int) -> int:
        """Wraps KVM_GET_ONE_REG for registers up to 64 bits."""

    @abc.abstractmethod
    def set_one_reg(self, reg_id: int, value: int) -> None:
        """Wraps KVM_SET_ONE_REG for registers up to 64 bits."""

    @abc.abstractmethod
    def translate(self, linear_address: int) -> uapi.kvm_translation:
        """Wraps KVM_TRANSLATE."""

    @abc.abstractmethod
    def get_tsc_khz(self) -> int:
        """Wraps KVM_GET_TSC_KHZ."""

    @abc.abstractmethod
    def set_tsc_khz(self, khz: int) -> None:
        """Wraps KVM_SET_TSC_KHZ."""

    @abc.abstractmethod
    def enable_cap(self, cap: Union[Cap, int], *args: int, flags: int = 0) -> None:
        """Wraps KVM_ENABLE_CAP on the vCPU fd."""

    # -- events ---------------------------------------------------------------
    @abc.abstractmethod
    def interrupt(self, irq: int) -> None:
        """Wraps KVM_INTERRUPT (no in-kernel irqchip; ENXIO with one)."""

    @abc.abstractmethod
    def nmi(self) -> None:
        """Wraps KVM_NMI."""

    @abc.abstractmethod
    def set_signal_mask(self, signals: Optional[Iterable[int]]) -> None:
        """Wraps KVM_SET_SIGNAL_MASK: the signals *blocked* while inside KVM_RUN.
        None removes the mask (the thread's own mask applies)."""

    @abc.abstractmethod
    def set_guest_debug(self, control: int, debugreg: Optional[Sequence[int]] = None) -> None:
        """Wraps KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_* flags, up to 8 debug registers)."""

    # -- coalesced MMIO ---------------------------------------------------------
    def _coalesced_ring(self) -> Optional[memoryview]:
        """The coalesced ring page as bytes, or None when the backend has none."""
        return None

    def drain_coalesced_mmio(self) -> List[CoalescedMmio]:
        """Take every entry out of the coalesced MMIO/PIO ring (first..last), in order."""
        page = self._coalesced_ring()
        if page is None:
            return []
        ring = uapi.kvm_coalesced_mmio_ring.from_buffer(page)
        entry_size = ctypes_sizeof_entry
        max_entries = uapi.KVM_COALESCED_MMIO_MAX(len(page))
        out: List[CoalescedMmio] = []
        first, last = ring.first, ring.last
        base = ctypes.sizeof(uapi.kvm_coalesced_mmio_ring)
        while first != last:
            ent = uapi.kvm_coalesced_mmio.from_buffer(page, base + first * entry_size)
            n = min(ent.len, 8)
            out.append(CoalescedMmio(ent.phys_addr, bytes(ent.data[:n]), bool(ent.pio)))
            first = (first + 1) % max_entries
            ring.first = first
        del ring
        return out

    # -- convenience ------------------------------------------------------------
    def set_real_mode(self, cs: int = 0, ip: int = 0, *, sp: int = 0) -> None:
        """Put the vCPU in 16-bit real mode at CS:IP (flat 64 KiB segments, flags 0x2)."""
        from . import modes

        modes.set_real_mode(self, cs=cs, ip=ip, sp=sp)

    def set_protected_mode(self, eip: int, *, esp: int = 0) -> None:
        """Put the vCPU in 32-bit flat protected mode (paging off) at ``eip``."""
        from . import modes

        modes.set_protected_mode(self, eip=eip, esp=esp)

    def set_long_mode(
        self, rip: int, *, rsp: int = 0, cpl: int = 0, page_tables: int = 0x9000,
        identity_gib: int = 1,
    ) -> None:
        """Put the vCPU in 64-bit long mode at ``rip`` with identity-mapped 2 MiB pages
        covering ``identity_gib`` GiB, page tables written at guest address ``page_tables``
        (needs 4 KiB + 4 KiB per GiB of RAM there). ``cpl=3`` starts in user mode
        (pages are user-accessible)."""
        from . import modes

        modes.set_long_mode(
            self, rip=rip, rsp=rsp, cpl=cpl, page_tables=page_tables, identity_gib=identity_gib
        )

    def _close(self) -> None:
        self._close_vcpu()

    @abc.abstractmethod
    def _close_vcpu(self) -> None:
        """Release the vCPU (fd, run page)."""

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<{type(self).__name__} {self.vcpu_id} {state}>"


ctypes_sizeof_entry = ctypes.sizeof(uapi.kvm_coalesced_mmio)
PAGE = PAGE_SIZE

__all__ = [
    "Backend", "Vm", "Vcpu", "MemorySlot", "CoalescedMmio", "Closeable", "open_objects", "log",
    "check_int", "check_u64", "check_struct", "VCPU_SETTER_CHECKS", "VM_SETTER_CHECKS",
]
