"""The KVM VM as a SimObject, and the capability probe (gem5 ``cpu/kvm/vm.hh``).

:class:`Kvm` answers gem5's ``cap*`` questions about a backend and caches
the supported CPUID and MSR lists. :class:`KvmVM` is the one VM shared by
every KVM CPU of a memory domain: it creates the VM when constructed, maps
every RAM region of the system into memory slots when the first CPU starts
(gem5's delayed startup), registers coalesced MMIO ranges, creates the
in-kernel irqchip where asked and available, and hands out vCPU ids.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from ... import uapi
from ...backends import get_backend
from ...backends.base import Backend, Vcpu, Vm
from ...errors import ConfigError, KvmCpuError, KvmIoctlError
from ...hostmem import HostMemory
from ...sim.checkpoint import CheckpointIn, CheckpointOut
from ...sim.params import param
from ...sim.simobject import SimObject, SimObjectParams
from ...uapi import Cap

log = logging.getLogger("kvmcpu.cpu.kvm")


class Kvm:
    """Capability probe over a backend (gem5's ``Kvm`` object). Answers are cached."""

    def __init__(self, backend: Backend, vm: Optional[Vm] = None) -> None:
        self.backend = backend
        self.vm = vm
        self._caps: Dict[int, int] = {}
        self._cpuid: Optional[List[uapi.kvm_cpuid_entry2]] = None
        self._msrs: Optional[List[int]] = None

    def check_extension(self, cap: Union[Cap, int]) -> int:
        """KVM_CHECK_EXTENSION (on the VM fd when there is one, as modern KVM prefers)."""
        key = int(cap)
        if key not in self._caps:
            src: Union[Backend, Vm] = self.vm if self.vm is not None else self.backend
            self._caps[key] = src.check_extension(key)
        return self._caps[key]

    checkExtension = check_extension

    def capUserMemory(self) -> bool:
        return self.check_extension(Cap.USER_MEMORY) != 0

    def capSetTSSAddress(self) -> bool:
        return self.check_extension(Cap.SET_TSS_ADDR) != 0

    def capExtendedCPUID(self) -> bool:
        return self.check_extension(Cap.EXT_CPUID) != 0

    def capUserNMI(self) -> bool:
        return self.check_extension(Cap.USER_NMI) != 0

    def capCoalescedMMIO(self) -> int:
        """The page offset of the coalesced ring in the vCPU mapping (0: none)."""
        return self.check_extension(Cap.COALESCED_MMIO)

    def capCoalescedPIO(self) -> bool:
        return self.check_extension(Cap.COALESCED_PIO) != 0

    def capNumMemSlots(self) -> int:
        """Usable memory slots (KVM_CAP_NR_MEMSLOTS; 32 when the backend does not say)."""
        n = self.check_extension(Cap.NR_MEMSLOTS)
        return n if n > 0 else 32

    def capOneReg(self) -> bool:
        return self.check_extension(Cap.ONE_REG) != 0

    def capIRQChip(self) -> bool:
        return self.check_extension(Cap.IRQCHIP) != 0

    def capSplitIRQChip(self) -> bool:
        return self.check_extension(Cap.SPLIT_IRQCHIP) != 0

    def capPIT2(self) -> bool:
        return self.check_extension(Cap.PIT2) != 0

    def capVCPUEvents(self) -> bool:
        return self.check_extension(Cap.VCPU_EVENTS) != 0

    def capDebugRegs(self) -> bool:
        return self.check_extension(Cap.DEBUGREGS) != 0

    def capXCRs(self) -> bool:
        return self.check_extension(Cap.XCRS) != 0

    def capXSave(self) -> bool:
        return self.check_extension(Cap.XSAVE) != 0

    def capImmediateExit(self) -> bool:
        return self.check_extension(Cap.IMMEDIATE_EXIT) != 0

    def capExitHypercall(self) -> bool:
        return self.check_extension(Cap.EXIT_HYPERCALL) != 0

    def capNumVCPUs(self) -> int:
        """The recommended number of vCPUs (KVM_CAP_NR_VCPUS; 4 when the backend does
        not say, as the KVM API document prescribes)."""
        n = self.check_extension(Cap.NR_VCPUS)
        return n if n > 0 else 4

    def capMaxNumVCPUs(self) -> int:
        """The most vCPUs a VM may have (KVM_CAP_MAX_VCPUS; KVM_CAP_NR_VCPUS when 0)."""
        n = self.check_extension(Cap.MAX_VCPUS)
        return n if n > 0 else self.capNumVCPUs()

    def getSupportedCPUID(self) -> List[uapi.kvm_cpuid_entry2]:
        """KVM_GET_SUPPORTED_CPUID, cached."""
        if self._cpuid is None:
            self._cpuid = self.backend.get_supported_cpuid()
        return self._cpuid

    def getSupportedMSRs(self) -> List[int]:
        """KVM_GET_MSR_INDEX_LIST, cached."""
        if self._msrs is None:
            self._msrs = self.backend.get_msr_index_list()
        return self._msrs


#: The most CPUs the user-space local APICs address (xAPIC IDs 0-254; 255 is broadcast).
MAX_APIC_CPUS = 255


def smp_limit(kvm: Kvm) -> int:
    """The most CPUs a System may have on ``kvm``'s backend: KVM_CAP_MAX_VCPUS (the
    mock answers 8), at most :data:`MAX_APIC_CPUS`."""
    return min(kvm.capMaxNumVCPUs(), MAX_APIC_CPUS)


@dataclasses.dataclass
class KvmVMParams(SimObjectParams):
    """Parameters of the VM."""

    coalesced_mmio: List[Tuple[int, int]] = param(
        default_factory=list, desc="(start, size) MMIO ranges whose writes KVM may coalesce"
    )
    coalesced_pio: List[Tuple[int, int]] = param(
        default_factory=list, desc="(start, size) port ranges whose writes KVM may coalesce"
    )
    irqchip: bool = param(
        False, "create KVM's in-kernel irqchip (PIC/IOAPIC/LAPIC) when the backend has one"
    )
    pit: bool = param(False, "create KVM's in-kernel PIT (needs the irqchip)")
    tss_addr: int = param(0xFFFB_D000, "guest address of the three TSS pages Intel KVM needs")


class KvmVM(SimObject):
    """The VM every KVM CPU of one memory domain shares.

    Args:
        name, parent: position in the SimObject tree.
        backend: a Backend, or a name for ``get_backend`` ("auto", "kvm", "mock");
            a backend opened from a name is owned and closed with the VM.
    """

    params_class = KvmVMParams
    params: KvmVMParams

    def __init__(self, name: str = "kvm_vm", parent: Optional[SimObject] = None, *,
                 backend: Union[Backend, str] = "auto", **overrides: Any) -> None:
        super().__init__(name, parent, **overrides)
        self._owns_backend = isinstance(backend, str)
        self.backend: Backend = get_backend(backend) if isinstance(backend, str) else backend
        try:
            self.vm: Vm = self.backend.create_vm()
        except BaseException:
            if self._owns_backend:
                self.backend.close()
            raise
        self.kvm = Kvm(self.backend, self.vm)
        self._next_vcpu_id = 0
        self._free_slots: List[int] = []
        self._next_slot = 0
        self._ram: List[Tuple[int, HostMemory, int]] = []  # (gpa, memory, flags)
        self._started = False
        self.has_irqchip = False
        #: KVM_CAP_SPLIT_IRQCHIP enabled: local APICs in KVM, IOAPIC/PIC in user space.
        self.split_irqchip = False
        self.has_pit = False
        #: The x2APIC/TSC-deadline MSRs go to user space (X86KvmCPU._take_apic_msrs).
        self.apic_msrs_taken = False
        #: In-kernel chip state read from a checkpoint, applied once the chips exist.
        self._restored_chips: Dict[str, bytes] = {}
        #: (start, size, pio) of every coalesced zone registered at delayed startup.
        self.coalesced_zones: List[Tuple[int, int, bool]] = []
        if self.kvm.capSetTSSAddress():
            try:
                self.vm.set_tss_addr(self.params.tss_addr)
            except KvmIoctlError as err:  # pragma: no cover - AMD/PVM accept it
                log.debug("KVM_SET_TSS_ADDR refused: %s", err)

    # -- memory ---------------------------------------------------------------
    def add_ram(self, gpa: int, memory: HostMemory, *, flags: int = 0) -> None:
        """Declare a RAM region; it is mapped at delayed startup (or at once if started)."""
        self._ram.append((gpa, memory, flags))
        if self._started:
            self.setup_memory_slot(self.alloc_memory_slot(), gpa, memory, flags)

    def alloc_memory_slot(self) -> int:
        """A free slot id (freed ones are reused first).

        Raises:
            KvmCpuError: all KVM_CAP_NR_MEMSLOTS slots are in use.
        """
        if self._free_slots:
            return self._free_slots.pop(0)
        if self._next_slot >= self.kvm.capNumMemSlots():
            raise KvmCpuError(
                f"out of KVM memory slots: all {self.kvm.capNumMemSlots()} are in use"
            )
        slot = self._next_slot
        self._next_slot += 1
        return slot

    allocMemorySlot = alloc_memory_slot

    def setup_memory_slot(self, slot: int, gpa: int, memory: HostMemory, flags: int = 0) -> None:
        """Map ``memory`` at ``gpa`` in ``slot`` (KVM_SET_USER_MEMORY_REGION)."""
        self.vm.set_user_memory_region(slot, gpa, memory, flags)

    setupMemSlot = setup_memory_slot

    def disable_memory_slot(self, slot: int) -> None:
        """Remove a slot's mapping (size 0)."""
        self.vm.set_user_memory_region(slot, 0, None)

    disableMemSlot = disable_memory_slot

    def free_memory_slot(self, slot: int) -> None:
        """Disable ``slot`` and make it available again."""
        if slot in self._free_slots or slot >= self._next_slot:
            raise ValueError(f"memory slot {slot} is not allocated")
        if slot in self.vm.slots:  # allocated but never mapped: nothing to disable
            self.disable_memory_slot(slot)
        self._free_slots.append(slot)
        self._free_slots.sort()

    freeMemSlot = free_memory_slot

    # -- startup --------------------------------------------------------------
    def cpu_startup(self) -> None:
        """Called by each CPU's startup(); the first call performs the delayed startup."""
        if not self._started:
            self.delayed_startup()

    cpuStartup = cpu_startup

    def delayed_startup(self) -> None:
        """Map every RAM region, register coalesced ranges, create the irqchip."""
        self._started = True
        for gpa, memory, flags in self._ram:
            self.setup_memory_slot(self.alloc_memory_slot(), gpa, memory, flags)
        if self.params.coalesced_mmio or self.params.coalesced_pio:
            if not self.kvm.capCoalescedMMIO():
                log.warning("coalesced MMIO requested but the backend does not offer it")
            else:
                for start, size in self.params.coalesced_mmio:
                    self.vm.register_coalesced_mmio(start, size)
                    self.coalesced_zones.append((start, size, False))
                for start, size in self.params.coalesced_pio:
                    self.vm.register_coalesced_mmio(start, size, pio=True)
                    self.coalesced_zones.append((start, size, True))
        if self.params.irqchip:
            self.create_irq_chip()
            if self.params.pit:
                if not self.kvm.capPIT2():
                    raise ConfigError("pit: the backend has no in-kernel PIT (KVM_CAP_PIT2 = 0)")
                self.vm.create_pit2()
                self.has_pit = True
            self._apply_restored_chips()

    delayedStartup = delayed_startup

    def create_irq_chip(self) -> None:
        """KVM_CREATE_IRQCHIP.

        Raises:
            ConfigError: the backend has no in-kernel irqchip.
        """
        if not self.kvm.capIRQChip():
            raise ConfigError("irqchip: the backend has no in-kernel irqchip (KVM_CAP_IRQCHIP = 0)")
        self.vm.create_irqchip()
        self.has_irqchip = True

    createIRQChip = create_irq_chip

    @property
    def kernel_lapic(self) -> bool:
        """The local APICs are KVM's (KVM_CREATE_IRQCHIP or KVM_CAP_SPLIT_IRQCHIP)."""
        return self.has_irqchip or self.split_irqchip

    def enable_split_irqchip(self, ioapic_pins: int = 24) -> None:
        """KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP, ``ioapic_pins`` routes reserved for
        the user-space IOAPIC): KVM's local APICs, with the IOAPIC and the 8259
        pair in user space. KVM takes it only before the first vCPU exists.

        Raises:
            ConfigError: the backend does not offer KVM_CAP_SPLIT_IRQCHIP, or a
                vCPU already exists.
        """
        if not 1 <= ioapic_pins <= 256:
            raise ValueError(f"ioapic_pins must be 1-256, got {ioapic_pins}")
        if not self.kvm.capSplitIRQChip():
            raise ConfigError(f"irqchip='split': the {self.backend.name} backend has no "
                              "KVM_CAP_SPLIT_IRQCHIP (no in-kernel local APIC)")
        if self._next_vcpu_id or self.has_irqchip:
            raise ConfigError("irqchip='split' must be enabled before any vCPU or irqchip")
        self.vm.enable_cap(Cap.SPLIT_IRQCHIP, ioapic_pins)
        self.split_irqchip = True

    def signal_msi(self, address: int, data: int) -> None:
        """KVM_SIGNAL_MSI to the in-kernel local APICs (split irqchip)."""
        self.vm.signal_msi(address, data)

    def set_msi_routes(self, routes: Sequence[Tuple[int, int, int]]) -> None:
        """KVM_SET_GSI_ROUTING with MSI routes ``(gsi, address, data)`` (split irqchip:
        tells KVM which IOAPIC vectors are level triggered, for their EOI exits)."""
        self.vm.set_gsi_routing(routes)

    def set_irq_line(self, irq: int, level: int) -> None:
        """KVM_IRQ_LINE on the in-kernel irqchip."""
        self.vm.irq_line(irq, 1 if level else 0)

    setIRQLine = set_irq_line

    # -- vCPUs ----------------------------------------------------------------
    def alloc_vcpu_id(self) -> int:
        """The next vCPU id."""
        vid = self._next_vcpu_id
        self._next_vcpu_id += 1
        return vid

    allocVCPUID = alloc_vcpu_id

    def create_vcpu(self, vcpu_id: int) -> Vcpu:
        """KVM_CREATE_VCPU."""
        return self.vm.create_vcpu(vcpu_id)

    createVCPU = create_vcpu

    def create_device(self, dev_type: int) -> int:
        """KVM_CREATE_DEVICE where the backend has it.

        Raises:
            KvmIoctlError: ENOTTY when the backend does not implement devices.
        """
        create = getattr(self.vm, "create_device", None)
        if create is None:
            import errno

            raise KvmIoctlError("KVM_CREATE_DEVICE", errno.ENOTTY,
                                f"backend {self.backend.name!r} has no KVM devices")
        return int(create(dev_type))

    createDevice = create_device

    # -- checkpoints ----------------------------------------------------------
    #: The in-kernel chips a checkpoint holds: (key, KVM_GET_IRQCHIP chip id).
    _CHIPS = (("pic_master", uapi.KVM_IRQCHIP_PIC_MASTER),
              ("pic_slave", uapi.KVM_IRQCHIP_PIC_SLAVE),
              ("ioapic", uapi.KVM_IRQCHIP_IOAPIC))

    def serialize(self, cp: CheckpointOut) -> None:
        """The in-kernel PIC pair, IOAPIC (KVM_GET_IRQCHIP) and PIT (KVM_GET_PIT2),
        as raw structures, when the VM has them (the local APICs are in each
        CPU's thread context, KVM_GET_LAPIC)."""
        if self.has_irqchip:
            for key, chip_id in self._CHIPS:
                cp.param_out(f"irqchip.{key}", bytes(self.vm.get_irqchip(chip_id)))
        if self.has_pit:
            cp.param_out("pit2", bytes(self.vm.get_pit2()))

    def unserialize(self, cp: CheckpointIn) -> None:
        section = cp.current
        self._restored_chips = {}
        for key, _ in self._CHIPS:
            if section.has(f"irqchip.{key}"):
                self._restored_chips[key] = section.get_bytes(
                    f"irqchip.{key}", ctypes.sizeof(uapi.kvm_irqchip))
        if section.has("pit2"):
            self._restored_chips["pit2"] = section.get_bytes(
                "pit2", ctypes.sizeof(uapi.kvm_pit_state2))
        if self._started:
            self._apply_restored_chips()

    def _apply_restored_chips(self) -> None:
        chips, self._restored_chips = self._restored_chips, {}
        if chips and not self.has_irqchip:
            log.warning("checkpoint holds in-kernel irqchip state but this VM has no "
                        "in-kernel irqchip: ignored")
            return
        for key, chip_id in self._CHIPS:
            if key in chips:
                chip = uapi.kvm_irqchip.from_buffer_copy(chips[key])
                chip.chip_id = chip_id
                self.vm.set_irqchip(chip)
        if "pit2" in chips and self.has_pit:
            self.vm.set_pit2(uapi.kvm_pit_state2.from_buffer_copy(chips["pit2"]))

    # -- teardown -------------------------------------------------------------
    def close(self) -> None:
        """Close the VM (and the backend when this object opened it). Idempotent."""
        self.vm.close()
        if self._owns_backend:
            self.backend.close()
