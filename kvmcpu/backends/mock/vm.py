"""MockVm: memory slots, dirty log, coalesced MMIO ring and VM-level ioctls.

Memory-slot rules and errnos follow virt/kvm/kvm_main.c: unknown flags,
misaligned guest address/size/host offset or a slot id beyond NR_MEMSLOTS give
EINVAL; an overlap with another slot EEXIST; resizing a slot, moving its host
buffer or toggling KVM_MEM_READONLY on an existing slot EINVAL; deleting a
slot that does not exist EINVAL.

There is no in-kernel irqchip or PIT: KVM_CAP_IRQCHIP/PIT2 report 0 and
create_irqchip/create_pit2 raise ENOTTY (what KVM answers for an ioctl it does
not implement); irq_line/get_irqchip/get_pit2 raise ENXIO like KVM without an
irqchip.
"""

from __future__ import annotations

import ctypes
import errno
import time
from typing import TYPE_CHECKING, List, Optional, Tuple, Union

from ... import uapi
from ...errors import KvmIoctlError
from ...hostmem import HostMemory
from ...uapi import Cap
from ..base import Backend, MemorySlot, Vcpu, Vm
from ..checks import check_struct
from .backend import CAPABILITIES

#: KVM_MSR_EXIT_REASON_VALID_MASK: what KVM_CAP_X86_USER_SPACE_MSR may enable.
_MSR_EXIT_REASONS = (uapi.KVM_MSR_EXIT_REASON_INVAL | uapi.KVM_MSR_EXIT_REASON_UNKNOWN
                     | uapi.KVM_MSR_EXIT_REASON_FILTER)
#: KVM_MSR_FILTER_MAX_BITMAP_SIZE (arch/x86/include/uapi/asm/kvm.h).
_MSR_FILTER_MAX_BITMAP_SIZE = 0x600

if TYPE_CHECKING:
    from .vcpu import MockVcpu

_ALLOWED_FLAGS = uapi.KVM_MEM_LOG_DIRTY_PAGES | uapi.KVM_MEM_READONLY
_ZONE_MAX = 100
_RING_ENTRY = ctypes.sizeof(uapi.kvm_coalesced_mmio)
_RING_HDR = ctypes.sizeof(uapi.kvm_coalesced_mmio_ring)
_RING_MAX = uapi.KVM_COALESCED_MMIO_MAX(4096)


class MockVm(Vm):
    """A VM of the mock backend."""

    def __init__(self, backend: Backend) -> None:
        super().__init__(backend)
        self._dirty: dict[int, bytearray] = {}
        self._zones: List[Tuple[int, int, bool]] = []
        # The coalesced ring page, shared by every vCPU of the VM as in KVM.
        # Lifetime: owned by the VM; views handed out by _coalesced_ring die with it.
        self._ring_buf = (ctypes.c_ubyte * 4096)()
        self.ring_page = memoryview(self._ring_buf).cast("B")
        # Lifetime: _ring views _ring_buf; both live until _close_vm drops the view.
        self._ring = uapi.kvm_coalesced_mmio_ring.from_buffer(self._ring_buf)
        self.hypercall_exits = 0  # KVM_CAP_EXIT_HYPERCALL mask enabled
        #: KVM_CAP_X86_USER_SPACE_MSR: the KVM_MSR_EXIT_REASON_* that exit to user space.
        self.user_msr_exits = 0
        #: KVM_X86_SET_MSR_FILTER: default deny, and (flags, base, nmsrs, bitmap) ranges.
        self.msr_filter_deny = False
        self.msr_filter_ranges: List[Tuple[int, int, int, bytes]] = []
        self.tss_addr: Optional[int] = None
        self.identity_map_addr: Optional[int] = None
        self._clock_base = time.monotonic_ns()
        self._clock_offset = 0
        self._mark_open()

    # -- capabilities -----------------------------------------------------------
    def check_extension(self, cap: Union[Cap, int]) -> int:
        """Wraps KVM_CHECK_EXTENSION on the VM fd (same set as the system fd)."""
        self._check_open()
        return CAPABILITIES.get(int(cap), 0)

    def enable_cap(self, cap: Union[Cap, int], *args: int, flags: int = 0) -> None:
        """Wraps KVM_ENABLE_CAP: only KVM_CAP_EXIT_HYPERCALL (mask of forwarded calls)."""
        self._check_open()
        if int(cap) == Cap.EXIT_HYPERCALL:
            mask = args[0] if args else 0
            if flags or mask & ~CAPABILITIES[Cap.EXIT_HYPERCALL]:
                raise KvmIoctlError("KVM_ENABLE_CAP", errno.EINVAL,
                                    f"EXIT_HYPERCALL mask {mask:#x} not supported")
            self.hypercall_exits = mask
            return
        if int(cap) == Cap.X86_USER_SPACE_MSR:
            mask = args[0] if args else 0
            if flags or mask & ~_MSR_EXIT_REASONS:
                raise KvmIoctlError("KVM_ENABLE_CAP", errno.EINVAL,
                                    f"X86_USER_SPACE_MSR mask {mask:#x} not supported")
            self.user_msr_exits = mask
            return
        raise KvmIoctlError("KVM_ENABLE_CAP", errno.EINVAL, f"capability {int(cap)} not enableable")

    # -- memory -------------------------------------------------------------------
    def _set_user_memory_region(self, slot: int, flags: int, guest_phys_addr: int,
                                memory_size: int, memory: Optional[HostMemory],
                                offset: int) -> None:
        def fail(code: int, why: str) -> KvmIoctlError:
            return KvmIoctlError("KVM_SET_USER_MEMORY_REGION", code, why)

        if flags & ~_ALLOWED_FLAGS:
            raise fail(errno.EINVAL, f"unknown flags {flags & ~_ALLOWED_FLAGS:#x}")
        if slot >= CAPABILITIES[Cap.NR_MEMSLOTS]:
            raise fail(errno.EINVAL, f"slot {slot} beyond NR_MEMSLOTS")
        if guest_phys_addr % 4096 or memory_size % 4096 or offset % 4096:
            raise fail(errno.EINVAL, "guest address, size and host address must be page aligned")
        if guest_phys_addr + memory_size > 1 << 52:
            raise fail(errno.EINVAL, "beyond the guest physical address space")
        old = self.slots.get(slot)
        if memory_size == 0:
            if old is None:
                raise fail(errno.EINVAL, f"slot {slot} does not exist")
            self._dirty.pop(slot, None)
            self._memory_changed()
            return
        if old is not None:
            if old.memory_size != memory_size:
                raise fail(errno.EINVAL, "an existing slot cannot be resized")
            if old.memory is not memory or old.offset != offset:
                raise fail(errno.EINVAL, "an existing slot cannot change its host memory")
            if (old.flags ^ flags) & uapi.KVM_MEM_READONLY:
                raise fail(errno.EINVAL, "KVM_MEM_READONLY cannot be toggled")
        end = guest_phys_addr + memory_size
        for other in self.slots.values():
            if other.slot != slot and guest_phys_addr < other.end and other.guest_phys_addr < end:
                raise fail(errno.EEXIST, f"overlaps slot {other.slot}")
        if memory is not None:
            memory.watch(self)  # host-side writes drop translated code (host_written)
        if flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
            if old is None or not old.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES:
                self._dirty[slot] = bytearray(((memory_size // 4096 + 63) // 64) * 8)
        else:
            self._dirty.pop(slot, None)
        self._memory_changed()

    def host_written(self, memory: HostMemory, offset: int, length: int) -> None:
        """The host wrote ``[offset, +length)`` of ``memory`` (HostMemory.watch): tell each
        vCPU which guest pages changed, so that run() drops the code translated from them."""
        end = offset + length
        for s in list(self.slots.values()):
            if s.memory is not memory:
                continue
            lo, hi = max(offset, s.offset), min(end, s.offset + s.memory_size)
            if lo >= hi:
                continue
            first = (s.guest_phys_addr + lo - s.offset) >> 12
            last = (s.guest_phys_addr + hi - 1 - s.offset) >> 12
            for v in self.vcpus.values():
                if not v.closed:
                    self._mock(v).engine.host_written(first, last)

    def _memory_changed(self) -> None:
        for v in self.vcpus.values():
            if not v.closed:
                self._mock(v).memory_changed()

    @staticmethod
    def _mock(v: Vcpu) -> "MockVcpu":
        return v  # type: ignore[return-value]

    def mark_dirty(self, slot: MemorySlot, gpa: int) -> None:
        bm = self._dirty.get(slot.slot)
        if bm is not None:
            page = (gpa - slot.guest_phys_addr) >> 12
            bm[page >> 3] |= 1 << (page & 7)

    def get_dirty_log(self, slot: int) -> bytes:
        """Wraps KVM_GET_DIRTY_LOG (clears the log; ENOENT without the flag)."""
        self._check_open()
        bm = self._dirty.get(slot)
        if bm is None:
            raise KvmIoctlError("KVM_GET_DIRTY_LOG", errno.ENOENT,
                                f"slot {slot} does not log dirty pages")
        out = bytes(bm)
        bm[:] = bytes(len(bm))
        for v in self.vcpus.values():  # the next write to any page must log it again
            if not v.closed:
                self._mock(v).engine.mmu.flush_write()
        return out

    # -- coalesced MMIO -------------------------------------------------------------
    def register_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """Wraps KVM_REGISTER_COALESCED_MMIO."""
        self._check_open()
        if len(self._zones) >= _ZONE_MAX:
            raise KvmIoctlError("KVM_REGISTER_COALESCED_MMIO", errno.ENOBUFS, "too many zones")
        if size <= 0 or addr < 0:
            raise KvmIoctlError("KVM_REGISTER_COALESCED_MMIO", errno.EINVAL, "empty zone")
        self._zones.append((addr, size, bool(pio)))

    def unregister_coalesced_mmio(self, addr: int, size: int, *, pio: bool = False) -> None:
        """Wraps KVM_UNREGISTER_COALESCED_MMIO (drops zones inside [addr, addr+size))."""
        self._check_open()
        self._zones = [z for z in self._zones
                       if not (z[2] == bool(pio) and addr <= z[0] and z[0] + z[1] <= addr + size)]

    def coalesced_write(self, addr: int, data: bytes, *, pio: bool) -> bool:
        """Append a write to the ring if it hits a zone and the ring has room."""
        if not self._zones:
            return False
        n = len(data)
        for za, zs, zp in self._zones:
            if zp == pio and za <= addr and addr + n <= za + zs:
                break
        else:
            return False
        ring = self._ring
        last = ring.last
        if (last + 1) % _RING_MAX == ring.first:
            return False  # full: KVM falls back to an ordinary exit
        # Lifetime: a view of one ring slot, dropped (del) right after filling it.
        ent = uapi.kvm_coalesced_mmio.from_buffer(self._ring_buf, _RING_HDR + last * _RING_ENTRY)
        ent.phys_addr = addr
        ent.len = n
        ent.pio = 1 if pio else 0
        ctypes.memmove(ctypes.addressof(ent.data), data, min(n, 8))
        del ent
        ring.last = (last + 1) % _RING_MAX
        return True

    # -- platform -------------------------------------------------------------------
    def set_tss_addr(self, addr: int) -> None:
        """Wraps KVM_SET_TSS_ADDR (recorded; the mock needs no real-mode TSS)."""
        self._check_open()
        if addr < 0 or addr > 0xFFFFFFFF - 3 * 4096 + 1:
            raise KvmIoctlError("KVM_SET_TSS_ADDR", errno.EINVAL, f"{addr:#x}")
        self.tss_addr = addr

    def set_identity_map_addr(self, addr: int) -> None:
        """Wraps KVM_SET_IDENTITY_MAP_ADDR (EEXIST once vCPUs exist, as KVM)."""
        self._check_open()
        if any(not v.closed for v in self.vcpus.values()):
            raise KvmIoctlError("KVM_SET_IDENTITY_MAP_ADDR", errno.EEXIST, "vCPUs exist")
        self.identity_map_addr = addr

    def set_msr_filter(self, msr_filter: uapi.kvm_msr_filter) -> None:
        """Wraps KVM_X86_SET_MSR_FILTER with KVM's checks (kvm_vm_ioctl_set_msr_filter):
        EINVAL for unknown flags, a default-deny filter without ranges, a range with
        unknown or no flags, or a bitmap over KVM_MSR_FILTER_MAX_BITMAP_SIZE; the
        bitmaps are copied."""
        self._check_open()
        check_struct("set_msr_filter", "msr_filter", msr_filter, uapi.kvm_msr_filter)
        if msr_filter.flags & ~uapi.KVM_MSR_FILTER_DEFAULT_DENY:
            raise KvmIoctlError("KVM_X86_SET_MSR_FILTER", errno.EINVAL,
                                f"flags {msr_filter.flags:#x}")
        deny = bool(msr_filter.flags & uapi.KVM_MSR_FILTER_DEFAULT_DENY)
        if deny and not any(r.nmsrs for r in msr_filter.ranges):
            raise KvmIoctlError("KVM_X86_SET_MSR_FILTER", errno.EINVAL,
                                "default deny without a range")
        ranges: List[Tuple[int, int, int, bytes]] = []
        valid = uapi.KVM_MSR_FILTER_READ | uapi.KVM_MSR_FILTER_WRITE
        for r in msr_filter.ranges:
            if not r.nmsrs:
                continue
            size = (r.nmsrs + 63) // 64 * 8  # BITS_TO_LONGS(nmsrs) * sizeof(long)
            if not r.flags or r.flags & ~valid or size > _MSR_FILTER_MAX_BITMAP_SIZE:
                raise KvmIoctlError("KVM_X86_SET_MSR_FILTER", errno.EINVAL,
                                    f"range at {r.base:#x}: flags {r.flags:#x}, {r.nmsrs} MSRs")
            if not r.bitmap:
                raise KvmIoctlError("KVM_X86_SET_MSR_FILTER", errno.EFAULT,
                                    f"range at {r.base:#x}: no bitmap")
            ranges.append((int(r.flags), int(r.base), int(r.nmsrs),
                           ctypes.string_at(r.bitmap, (r.nmsrs + 7) // 8)))
        self.msr_filter_deny, self.msr_filter_ranges = deny, ranges

    def msr_allowed(self, index: int, write: bool) -> bool:
        """kvm_msr_allowed: the x2APIC range is never filtered; the first range that
        covers ``index`` for the access decides (bit set: allowed), else the default."""
        if 0x800 <= index <= 0x8FF or not (self.msr_filter_ranges or self.msr_filter_deny):
            return True
        want = uapi.KVM_MSR_FILTER_WRITE if write else uapi.KVM_MSR_FILTER_READ
        for flags, base, count, bitmap in self.msr_filter_ranges:
            if flags & want and base <= index < base + count:
                bit = index - base
                return bool(bitmap[bit >> 3] >> (bit & 7) & 1)
        return not self.msr_filter_deny

    def create_irqchip(self) -> None:
        """KVM_CREATE_IRQCHIP: not emulated (KVM_CAP_IRQCHIP = 0) -> ENOTTY."""
        self._check_open()
        raise KvmIoctlError("KVM_CREATE_IRQCHIP", errno.ENOTTY, "the mock has no irqchip")

    def create_pit2(self, flags: int = 0) -> None:
        """KVM_CREATE_PIT2: not emulated (KVM_CAP_PIT2 = 0) -> ENOTTY."""
        self._check_open()
        raise KvmIoctlError("KVM_CREATE_PIT2", errno.ENOTTY, "the mock has no PIT")

    def irq_line(self, irq: int, level: int) -> None:
        self._check_open()
        raise KvmIoctlError("KVM_IRQ_LINE", errno.ENXIO, "no in-kernel irqchip")

    def get_irqchip(self, chip_id: int) -> uapi.kvm_irqchip:
        self._check_open()
        raise KvmIoctlError("KVM_GET_IRQCHIP", errno.ENXIO, "no in-kernel irqchip")

    def set_irqchip(self, chip: uapi.kvm_irqchip) -> None:
        self._check_open()
        raise KvmIoctlError("KVM_SET_IRQCHIP", errno.ENXIO, "no in-kernel irqchip")

    def get_pit2(self) -> uapi.kvm_pit_state2:
        self._check_open()
        raise KvmIoctlError("KVM_GET_PIT2", errno.ENXIO, "no in-kernel PIT")

    def set_pit2(self, state: uapi.kvm_pit_state2) -> None:
        self._check_open()
        raise KvmIoctlError("KVM_SET_PIT2", errno.ENXIO, "no in-kernel PIT")

    def get_clock(self) -> uapi.kvm_clock_data:
        """Wraps KVM_GET_CLOCK: nanoseconds since the VM was created (plus set_clock)."""
        self._check_open()
        d = uapi.kvm_clock_data()
        d.clock = time.monotonic_ns() - self._clock_base + self._clock_offset
        return d

    def set_clock(self, data: uapi.kvm_clock_data) -> None:
        """Wraps KVM_SET_CLOCK."""
        self._check_open()
        if data.flags & ~(uapi.KVM_CLOCK_REALTIME):
            raise KvmIoctlError("KVM_SET_CLOCK", errno.EINVAL, f"flags {data.flags:#x}")
        self._clock_offset = int(data.clock) - (time.monotonic_ns() - self._clock_base)

    @property
    def has_irqchip(self) -> bool:
        return False

    # -- vCPUs --------------------------------------------------------------------------
    def _create_vcpu(self, vcpu_id: int) -> Vcpu:
        if vcpu_id >= CAPABILITIES[Cap.MAX_VCPU_ID]:
            raise KvmIoctlError("KVM_CREATE_VCPU", errno.EINVAL, f"vcpu id {vcpu_id} too large")
        live = sum(1 for v in self.vcpus.values() if not v.closed)
        if live >= CAPABILITIES[Cap.MAX_VCPUS]:
            raise KvmIoctlError("KVM_CREATE_VCPU", errno.EINVAL, "too many vCPUs")
        from .vcpu import MockVcpu

        return MockVcpu(self, vcpu_id)

    def _close_vm(self) -> None:
        for s in self.slots.values():
            if s.memory is not None:
                s.memory.unwatch(self)
        del self._ring
        self._zones.clear()
        self._dirty.clear()
