"""The real backend: /dev/kvm through ctypes.

``KvmBackend`` wraps the system fd, ``KvmVm`` a VM fd and
:class:`~kvmcpu.backends.kvm_vcpu.KvmVcpu` a vCPU fd with its mmap'd
``kvm_run`` page. Every fd is opened close-on-exec (KVM creates its VM and
vCPU fds with O_CLOEXEC); every object has an idempotent ``close()``.

Opening raises :class:`~kvmcpu.errors.BackendUnavailableError` with the reason
when KVM cannot be used: disabled by ``KVMCPU_DISABLE_KVM``, no /dev/kvm,
permission denied, an API version other than 12, or KVM_CREATE_VM failing
(the constructor creates and destroys one VM to prove KVM works).

Creating a ``KvmBackend`` on the main thread also installs the no-op handler
of the kick signal (:data:`~kvmcpu.backends.kvm_vcpu.KICK_SIGNAL`) that lets
``Vcpu.kick()`` interrupt a KVM_RUN in progress; see ``kvm_vcpu``.
"""

from __future__ import annotations

import ctypes
import errno
import os
import weakref
from typing import Dict, List, Sequence, Tuple, Union

from .. import _ioctl, uapi
from ..errors import BackendUnavailableError, KvmIoctlError
from ..hostmem import PAGE_SIZE, HostMemory
from ..uapi import Cap
from . import kvm_disabled
from .base import Backend, Vm
from .kvm_vcpu import KICK_SIGNAL, KvmVcpu, enable_cap_struct, install_kick_handler

DEV_KVM = "/dev/kvm"

#: KVM_GET_SUPPORTED_CPUID starts with room for this many entries and doubles on E2BIG.
_CPUID_START = 128
_CPUID_MAX = 4096


# ---------------------------------------------------------------------------
# Backend (system fd)
# ---------------------------------------------------------------------------
class KvmBackend(Backend):
    """The /dev/kvm system fd. ``get_backend("kvm")`` constructs one."""

    name = "kvm"

    def __init__(self, path: str = DEV_KVM) -> None:
        if kvm_disabled():
            raise BackendUnavailableError(
                "kvm", f"disabled by KVMCPU_DISABLE_KVM={os.environ.get('KVMCPU_DISABLE_KVM')}"
            )
        self.path = path
        try:
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError as err:
            raise BackendUnavailableError(
                "kvm", f"{path} does not exist (KVM module not loaded, or no virtualization)"
            ) from err
        except PermissionError as err:
            raise BackendUnavailableError(
                "kvm", f"permission denied opening {path} (join the 'kvm' group?)"
            ) from err
        except OSError as err:
            raise BackendUnavailableError("kvm", f"cannot open {path}: {err.strerror}") from err
        try:
            version = _ioctl.ioctl_raw(fd, uapi.KVM_GET_API_VERSION)
            if version != uapi.KVM_API_VERSION:
                raise BackendUnavailableError(
                    "kvm", f"{path} speaks KVM API version {version}, kvmcpu needs "
                    f"{uapi.KVM_API_VERSION}"
                )
            vmfd = _ioctl.ioctl_raw(fd, uapi.KVM_CREATE_VM, 0)
            if vmfd < 0:
                raise BackendUnavailableError(
                    "kvm", f"KVM_CREATE_VM failed: {os.strerror(-vmfd)} (errno {-vmfd})"
                )
            os.close(vmfd)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        self._mmap_size = 0
        self._vms: weakref.WeakSet[KvmVm] = weakref.WeakSet()
        #: Whether kick() can signal a thread inside KVM_RUN (handler installed).
        self.kick_signal_ready = install_kick_handler()
        self._mark_open()

    # -- system ioctls -----------------------------------------------------------
    def api_version(self) -> int:
        """Wraps KVM_GET_API_VERSION (12)."""
        self._check_open()
        return _ioctl.ioctl_int(self.fd, uapi.KVM_GET_API_VERSION)

    def check_extension(self, cap: Union[Cap, int]) -> int:
        """Wraps KVM_CHECK_EXTENSION on the system fd; 0 means absent."""
        self._check_open()
        return _ioctl.ioctl_int(self.fd, uapi.KVM_CHECK_EXTENSION, int(cap))

    def vcpu_mmap_size(self) -> int:
        """Wraps KVM_GET_VCPU_MMAP_SIZE: bytes of the per-vCPU run mapping."""
        self._check_open()
        if not self._mmap_size:
            self._mmap_size = _ioctl.ioctl_int(self.fd, uapi.KVM_GET_VCPU_MMAP_SIZE)
        return self._mmap_size

    def _get_cpuid(self, request: int) -> List[uapi.kvm_cpuid_entry2]:
        n = _CPUID_START
        while True:
            buf = uapi.cpuid2_buffer(n)
            try:
                _ioctl.ioctl(self.fd, request, buf)
            except KvmIoctlError as err:
                if err.errno == errno.E2BIG and n < _CPUID_MAX:
                    n *= 2
                    continue
                raise
            return [uapi.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i])
                    for i in range(buf.nent)]

    def get_supported_cpuid(self) -> List[uapi.kvm_cpuid_entry2]:
        """Wraps KVM_GET_SUPPORTED_CPUID (grows the buffer on E2BIG)."""
        self._check_open()
        return self._get_cpuid(uapi.KVM_GET_SUPPORTED_CPUID)

    def get_emulated_cpuid(self) -> List[uapi.kvm_cpuid_entry2]:
        """Wraps KVM_GET_EMULATED_CPUID (grows the buffer on E2BIG)."""
        self._check_open()
        return self._get_cpuid(uapi.KVM_GET_EMULATED_CPUID)

    def _msr_list(self, request: int) -> List[int]:
        probe = uapi.msr_list_buffer(0)
        try:
            _ioctl.ioctl(self.fd, request, probe)
        except KvmIoctlError as err:
            if err.errno != errno.E2BIG:
                raise
        # The first call reports the count in nmsrs (E2BIG); the list may grow
        # between calls in theory, so retry on E2BIG again.
        n = int(probe.nmsrs)
        while True:
            buf = uapi.msr_list_buffer(n)
            try:
                _ioctl.ioctl(self.fd, request, buf)
            except KvmIoctlError as err:
                if err.errno == errno.E2BIG and buf.nmsrs > n:
                    n = int(buf.nmsrs)
                    continue
                raise
            return [int(buf.indices[i]) for i in range(buf.nmsrs)]

    def get_msr_index_list(self) -> List[int]:
        """Wraps KVM_GET_MSR_INDEX_LIST: the MSRs get_msrs/set_msrs accept."""
        self._check_open()
        return self._msr_list(uapi.KVM_GET_MSR_INDEX_LIST)

    def get_msr_feature_index_list(self) -> List[int]:
        """Wraps KVM_GET_MSR_FEATURE_INDEX_LIST (empty when unsupported)."""
        self._check_open()
        if not self.check_extension(Cap.GET_MSR_FEATURES):
            return []
        return self._msr_list(uapi.KVM_GET_MSR_FEATURE_INDEX_LIST)

    def create_vm(self) -> KvmVm:
        """Wraps KVM_CREATE_VM."""
        self._check_open()
        vmfd = _ioctl.ioctl_int(self.fd, uapi.KVM_CREATE_VM, 0)
        try:
            vm = KvmVm(self, vmfd, self.vcpu_mmap_size())
        except BaseException:
            os.close(vmfd)
            raise
        self._vms.add(vm)
        return vm

    def describe(self) -> Dict[str, object]:
        """Facts for ``kvmcpu info``: name, reason, API version, device, run-page size."""
        facts = super().describe()
        facts.update({
            "device": self.path,
            "vcpu_mmap_size": self.vcpu_mmap_size(),
            "kick_signal": int(KICK_SIGNAL) if self.kick_signal_ready else None,
        })
        return facts

    def _close(self) -> None:
        """Close every VM still open, then the system fd."""
        for vm in list(self._vms):
            vm.close()
        os.close(self.fd)
        self.fd = -1


# ---------------------------------------------------------------------------
# VM
# ---------------------------------------------------------------------------
class KvmVm(Vm):
    """A VM fd. Created by ``KvmBackend.create_vm()``."""

    backend: KvmBackend

    def __init__(self, backend: KvmBackend, fd: int, vcpu_mmap_size: int) -> None:
        super().__init__(backend)
        self.fd = fd
        self.vcpu_mmap_size = vcpu_mmap_size
        self._irqchip = False
        self._xsave_size: int | None = None
        self._mark_open()

    # -- capabilities ---------------------------------------------------------
    def check_extension(self, cap: Union[Cap, int]) -> int:
        """Wraps KVM_CHECK_EXTENSION on the VM fd."""
        self._check_open()
        return _ioctl.ioctl_int(self.fd, uapi.KVM_CHECK_EXTENSION, int(cap))

    def enable_cap(self, cap: Union[Cap, int], *args: int, flags: int = 0) -> None:
        """Wraps KVM_ENABLE_CAP on the VM fd."""
        self._check_open()
        ec = enable_cap_struct(cap, args, flags)
        _ioctl.ioctl(self.fd, uapi.KVM_ENABLE_CAP, ec)

    @property
    def xsave_size(self) -> int:
        """Bytes of the XSAVE buffer: KVM_CAP_XSAVE2's answer on the VM fd, else 4096."""
        if self._xsave_size is None:
            size = self.check_extension(Cap.XSAVE2)
            self._xsave_size = max(size, ctypes.sizeof(uapi.kvm_xsave))
        return self._xsave_size

    # -- memory -----------------------------------------------------------------
    def _set_user_memory_region(
        self,
        slot: int,
        flags: int,
        guest_phys_addr: int,
        memory_size: int,
        memory: HostMemory | None,
        offset: int,
    ) -> None:
        """Wraps KVM_SET_USER_MEMORY_REGION."""
        region = uapi.kvm_userspace_memory_region()
        region.slot = slot
        region.flags = flags
        region.guest_phys_addr = guest_phys_addr
        region.memory_size = memory_size
        region.userspace_addr = 0 if memory is None else memory.address + offset
        try:
            _ioctl.ioctl(self.fd, uapi.KVM_SET_USER_MEMORY_REGION, region)
        except KvmIoctlError as err:
            raise KvmIoctlError(
                err.call, err.errno or 0,
                f"slot {slot}, guest_phys_addr {guest_phys_addr:#x}, "
                f"memory_size {memory_size:#x}, flags {flags:#x}",
            ) from err

    def get_dirty_log(self, slot: int) -> bytes:
        """Wraps KVM_GET_DIRTY_LOG: one bit per page of the slot, cleared by reading.
        ENOENT for a slot without KVM_MEM_LOG_DIRTY_PAGES (or no such slot)."""
        self._check_open()
        known = self.slots.get(slot)
        npages = (known.memory_size + PAGE_SIZE - 1) // PAGE_SIZE if known else 64
        # The kernel writes ALIGN(npages, 64) / 8 bytes.
        nbytes = (npages + 63) // 64 * 8
        bitmap = (ctypes.c_uint8 * nbytes)()
        log = uapi.kvm_dirty_log()
        log.slot = slot
        # Lifetime: ``bitmap`` outlives the ioctl, which is the only user of the pointer.
        log.dirty_bitmap = ctypes.addressof(bitmap)
        try:
            _ioctl.ioctl(self.fd, uapi.KVM_GET_DIRTY_LOG, log)
        except KvmIoctlError as err:
            raise KvmIoctlError(err.call, err.errno or 0, f"slot {slot}") from err
        return bytes(bitmap)[: (npages + 7) // 8]

    def _zone(self, addr: int, size: int, pio: bool) -> uapi.kvm_coalesced_mmio_zone:
        zone = uapi.kvm_coalesced_mmio_zone()
        zone.addr = addr
        zone.size = size
        zone.pio = 1 if pio else 0
        return zone

    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """Wraps KVM_REGISTER_COALESCED_MMIO (pio=True: a coalesced port range)."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_REGISTER_COALESCED_MMIO, self._zone(addr, size, pio))

    def unregister_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """Wraps KVM_UNREGISTER_COALESCED_MMIO."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_UNREGISTER_COALESCED_MMIO, self._zone(addr, size, pio))

    # -- platform -------------------------------------------------------------------
    def set_tss_addr(self, addr: int) -> None:
        """Wraps KVM_SET_TSS_ADDR (three pages Intel needs for real mode)."""
        self._check_open()
        _ioctl.ioctl_int(self.fd, uapi.KVM_SET_TSS_ADDR, addr)

    def set_identity_map_addr(self, addr: int) -> None:
        """Wraps KVM_SET_IDENTITY_MAP_ADDR."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_SET_IDENTITY_MAP_ADDR, ctypes.c_uint64(addr))

    def create_irqchip(self) -> None:
        """Wraps KVM_CREATE_IRQCHIP (PIC + IOAPIC + local APICs in the kernel)."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_CREATE_IRQCHIP)
        self._irqchip = True

    def create_pit2(self, flags: int = 0) -> None:
        """Wraps KVM_CREATE_PIT2."""
        self._check_open()
        config = uapi.kvm_pit_config()
        config.flags = flags
        _ioctl.ioctl(self.fd, uapi.KVM_CREATE_PIT2, config)

    def irq_line(self, irq: int, level: int) -> None:
        """Wraps KVM_IRQ_LINE (needs the in-kernel irqchip)."""
        self._check_open()
        line = uapi.kvm_irq_level()
        line.irq = irq
        line.level = level
        _ioctl.ioctl(self.fd, uapi.KVM_IRQ_LINE, line)

    def get_irqchip(self, chip_id: int) -> uapi.kvm_irqchip:
        """Wraps KVM_GET_IRQCHIP."""
        self._check_open()
        chip = uapi.kvm_irqchip()
        chip.chip_id = chip_id
        _ioctl.ioctl(self.fd, uapi.KVM_GET_IRQCHIP, chip)
        return chip

    def set_irqchip(self, chip: uapi.kvm_irqchip) -> None:
        """Wraps KVM_SET_IRQCHIP."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_SET_IRQCHIP, chip)

    def signal_msi(self, address: int, data: int) -> int:
        """Wraps KVM_SIGNAL_MSI."""
        self._check_open()
        msi = uapi.kvm_msi()
        msi.address_lo = address & 0xFFFFFFFF
        msi.address_hi = (address >> 32) & 0xFFFFFFFF
        msi.data = data & 0xFFFFFFFF
        return _ioctl.ioctl(self.fd, uapi.KVM_SIGNAL_MSI, msi)

    def set_gsi_routing(self, msi_routes: Sequence[Tuple[int, int, int]]) -> None:
        """Wraps KVM_SET_GSI_ROUTING (MSI entries)."""
        self._check_open()
        head = ctypes.sizeof(uapi.kvm_irq_routing)
        entry_size = ctypes.sizeof(uapi.kvm_irq_routing_entry)
        buf = ctypes.create_string_buffer(head + entry_size * len(msi_routes))
        routing = uapi.kvm_irq_routing.from_buffer(buf)
        routing.nr = len(msi_routes)
        for n, (gsi, address, data) in enumerate(msi_routes):
            entry = uapi.kvm_irq_routing_entry.from_buffer(buf, head + n * entry_size)
            entry.gsi = gsi
            entry.type = uapi.KVM_IRQ_ROUTING_MSI
            entry.u.msi.address_lo = address & 0xFFFFFFFF
            entry.u.msi.address_hi = (address >> 32) & 0xFFFFFFFF
            entry.u.msi.data = data & 0xFFFFFFFF
        del routing, entry
        _ioctl.ioctl(self.fd, uapi.KVM_SET_GSI_ROUTING, buf)

    def set_msr_filter(self, msr_filter: uapi.kvm_msr_filter) -> None:
        """Wraps KVM_X86_SET_MSR_FILTER (the bitmaps are copied by the kernel)."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_X86_SET_MSR_FILTER, msr_filter)

    def get_pit2(self) -> uapi.kvm_pit_state2:
        """Wraps KVM_GET_PIT2."""
        self._check_open()
        state = uapi.kvm_pit_state2()
        _ioctl.ioctl(self.fd, uapi.KVM_GET_PIT2, state)
        return state

    def set_pit2(self, state: uapi.kvm_pit_state2) -> None:
        """Wraps KVM_SET_PIT2."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_SET_PIT2, state)

    def get_clock(self) -> uapi.kvm_clock_data:
        """Wraps KVM_GET_CLOCK."""
        self._check_open()
        data = uapi.kvm_clock_data()
        _ioctl.ioctl(self.fd, uapi.KVM_GET_CLOCK, data)
        return data

    def set_clock(self, data: uapi.kvm_clock_data) -> None:
        """Wraps KVM_SET_CLOCK."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_SET_CLOCK, data)

    @property
    def has_irqchip(self) -> bool:
        """True once create_irqchip() succeeded."""
        return self._irqchip

    # -- vCPUs --------------------------------------------------------------------------
    def _create_vcpu(self, vcpu_id: int) -> KvmVcpu:
        """Wraps KVM_CREATE_VCPU and mmaps the vCPU's run page."""
        fd = _ioctl.ioctl_int(self.fd, uapi.KVM_CREATE_VCPU, vcpu_id)
        try:
            return KvmVcpu(self, vcpu_id, fd, self.vcpu_mmap_size)
        except BaseException:
            os.close(fd)
            raise

    def _close_vm(self) -> None:
        os.close(self.fd)
        self.fd = -1


__all__ = ["KvmBackend", "KvmVm", "KvmVcpu", "DEV_KVM"]
