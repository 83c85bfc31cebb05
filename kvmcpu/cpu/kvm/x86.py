"""X86KvmCPU: the x86-64 KVM CPU (gem5 ``arch/x86/kvm/x86_cpu.hh``).

Adds to :class:`~kvmcpu.cpu.kvm.base.BaseKvmCPU` what is x86-specific:

* moving the whole architectural state between the
  :class:`~kvmcpu.cpu.thread.ThreadContext` and the vCPU (registers, special
  registers with gem5's segment fix-ups, XSAVE or FPU, XCRs, the MSRs both
  sides know, vCPU events, debug registers, MP state), and CPUID set up from
  the backend's supported list with an optional vendor override;
* port IO exits, including ``count > 1`` (string IO) — every element goes to
  the IO bus in order;
* interrupt delivery without an in-kernel irqchip: when the interrupt
  controller (e.g. the userspace 8259 pair) has a vector pending, it is
  injected with KVM_INTERRUPT only when ``ready_for_interrupt_injection`` says
  the guest can take it, otherwise an interrupt window is requested;
* drain safety from the vCPU events (nothing injected or pending);
* the start states each boot protocol needs (:func:`real_mode_context`,
  :func:`protected_mode_context`, :func:`long_mode_context`).
"""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
from typing import Any, Callable, Dict, List, Optional, Sequence

from ... import uapi
from ...backends import modes
from ...backends.exits import (
    DebugExit,
    Exit,
    HltExit,
    InternalErrorExit,
    IntrExit,
    IoapicEoiExit,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    MsrExit,
    ShutdownExit,
)
from ...errors import KvmIoctlError
from ...sim.eventq import TICKS_PER_SECOND
from ...sim.simobject import DrainState
from ...uapi import Cap
from ..thread import (
    MSR_IA32_TSC,
    CpuidEntry,
    DescriptorTable,
    Segment,
    ThreadContext,
    VcpuEvents,
)
from .base import BaseKvmCPU
from .fallback import Burst, EmulationFallback
from .hybrid import HybridBursts, emulates_cpl0, hybrid_cpuid, syscall_keeps_cpl3

_Draining = DrainState.Draining  # a global: cheaper than the Enum attribute per entry

log = logging.getLogger("kvmcpu.cpu.kvm")

#: IA32_APIC_BASE and its BSP flag (SDM vol. 3, 11.4.4).
MSR_IA32_APIC_BASE = 0x1B
APIC_BASE_BSP = 1 << 8

#: MSRs worth carrying in the thread context when the backend knows them.
ARCH_MSRS = (
    0x10,  # IA32_TSC
    0x1B,  # IA32_APIC_BASE (also in sregs)
    0x174, 0x175, 0x176,  # SYSENTER_CS/ESP/EIP
    0x277,  # IA32_PAT
    0xC0000081, 0xC0000082, 0xC0000083, 0xC0000084,  # STAR, LSTAR, CSTAR, SFMASK
    0xC0000100, 0xC0000101, 0xC0000102,  # FS_BASE, GS_BASE, KERNEL_GS_BASE
    0xC0000103,  # TSC_AUX
)

#: The MSRs a user-space local APIC takes from KVM through the MSR filter,
#: (first, count): IA32_TSC_DEADLINE. The x2APIC MSRs 0x800-0x8ff cannot be
#: filtered (KVM handles them itself); without an in-kernel APIC their accesses
#: fail in KVM, and KVM_MSR_EXIT_REASON_INVAL brings those failures here.
USER_APIC_MSR_RANGES = ((0x6E0, 1),)
#: The MSRs handleKvmExitMSR gives the local APIC (the others keep their #GP).
_APIC_MSRS = frozenset(range(0x800, 0x900)) | {0x6E0}

#: How long kvmRunDrain lets the guest run to take an injected event (1 ms, as gem5).
DRAIN_RUN_TICKS = 1_000_000_000

_VENDORS = {
    "intel": b"GenuineIntel",
    "amd": b"AuthenticAMD",
}


class X86KvmCPU(HybridBursts, BaseKvmCPU):
    """The x86 KVM CPU.

    Args:
        interrupts: the interrupt source used without an in-kernel irqchip
            (anything with ``has_pending()`` and ``acknowledge() -> vector``: the
            8259 pair, or :class:`~kvmcpu.devices.lapic.ApicInterrupts`, whose
            ``attach_cpu(cpu)`` is called so that the local APIC's NMI, INIT,
            SIPI and wake-ups reach this CPU).
        cpuid_vendor: "intel", "amd", a 12-character vendor string, or None to
            keep the backend's.
        cpuid_overrides: ``{(function, index): (eax, ebx, ecx, edx)}`` applied
            after the supported list.
    """

    USER_MSRS = _APIC_MSRS  # the MSRs handleKvmExitMSR serves (HybridBursts)

    def __init__(self, name: str, parent: Any = None, *, vm: Any,
                 interrupts: Any = None, cpuid_vendor: Optional[str] = None,
                 cpuid_overrides: Optional[Dict[Any, Sequence[int]]] = None,
                 **kw: Any) -> None:
        super().__init__(name, parent, vm=vm, **kw)
        self.interrupts = interrupts
        #: The user-space local APIC behind ``interrupts`` (None: none, or KVM's).
        self.lapic: Any = None
        self._attach_interrupts()
        self.cpuid_vendor = cpuid_vendor
        self.cpuid_overrides = dict(cpuid_overrides or {})
        self.pending_nmi = False
        #: The user-space IOAPIC's EOI (irqchip "split": KVM_EXIT_IOAPIC_EOI's vector).
        self.on_ioapic_eoi: Optional[Callable[[int], object]] = None
        self._wait_for_sipi = False
        self._cpuid_applied: Optional[List[CpuidEntry]] = None
        self._msr_list: Optional[List[int]] = None
        self._use_xsave = False
        self._fallback: Optional[EmulationFallback] = None
        self._fallback_cpuid: Optional[List[uapi.kvm_cpuid_entry2]] = None
        self._fallback_cpuid_of: Optional[List[CpuidEntry]] = None
        #: CPL0 code runs in bursts on the mock (KVM emulates it here; hybrid.py)
        self.hybrid = False
        self.user_on_mock = False
        self._kvm_once = False
        self._burst: Optional[Burst] = None
        self._msr_bitmaps: List[Any] = []
        #: the KVM VM's slots with dirty logging (hybrid), and whether KVM ran since
        self._dirty_slots: List[Any] = []
        self._kvm_ran = False

    def _attach_interrupts(self) -> None:
        src = self.interrupts
        attach = getattr(src, "attach_cpu", None)
        if attach is not None:
            attach(self)
        self.lapic = getattr(src, "lapic", None)

    # ------------------------------------------------------------------ startup
    def startup_thread(self) -> None:
        super().startup_thread()
        kvm = self.vm.kvm
        self._use_xsave = kvm.capXSave()
        self.hybrid = bool(self.params.emulationFallback and self.params.emulationFallbackBurst
                           and not self.vm.kernel_lapic and self.vcpu is not None
                           and self.can_fall_back(self.vcpu)
                           and emulates_cpl0(self.vm.kvm.backend))
        #: burst mode where the host's SYSCALL at CPL3 leaves CS at CPL3: user code runs
        #: on the mock too (its SYSCALL is the SDM's), else KVM runs it natively
        self.user_on_mock = self.hybrid and syscall_keeps_cpl3(self.vm.kvm.backend)
        if self.hybrid:
            self._log_kvm_writes()
        if not self.tc.cpuid:
            self.tc.cpuid = self.default_cpuid()
            if self.hybrid:
                self.tc.cpuid = [CpuidEntry.from_kvm(e)
                                 for e in hybrid_cpuid([e.to_kvm() for e in self.tc.cpuid])]
        if self.lapic is not None and not self.vm.has_irqchip:
            self._take_apic_msrs()

    def _take_apic_msrs(self) -> None:
        """With a user-space local APIC on a backend that offers KVM_CAP_X86_USER_SPACE_MSR
        and KVM_X86_SET_MSR_FILTER (KVM and the mock), have the backend hand RDMSR/WRMSR
        of the x2APIC MSRs and IA32_TSC_DEADLINE to :meth:`handleKvmExitMSR`, and give
        the APIC the guest's TSC. Elsewhere those MSRs stay the backend's (x2APIC and
        TSC-deadline mode are then not reachable from the guest)."""
        vm = self.vm
        kvm = vm.kvm
        lapic = self.lapic
        # Until told otherwise the TSC is simulated cycles (a CPU switched in from
        # KVM must not leave the old vCPU as the APIC's TSC source).
        lapic.set_tsc_source(lapic._simulated_tsc, TICKS_PER_SECOND // self.clock_period())
        if not (kvm.check_extension(Cap.X86_USER_SPACE_MSR)
                and kvm.check_extension(Cap.X86_MSR_FILTER)):
            log.info("%s: no user-space MSRs on this backend: the local APIC's x2APIC "
                     "and TSC-deadline MSRs are not reachable", self.path())
            return
        if not vm.apic_msrs_taken:
            self._msr_exits_on(vm.vm)
            vm.apic_msrs_taken = True
        vcpu = self._vcpu()
        try:
            khz = int(vcpu.get_tsc_khz())
        except KvmIoctlError as err:
            log.warning("%s: KVM_GET_TSC_KHZ: %s; TSC-deadline mode assumes the CPU "
                        "clock", self.path(), err)
            return
        if khz > 0:
            lapic.set_tsc_source(self._guest_tsc, khz * 1000)

    def _guest_tsc(self) -> int:
        return int(self._vcpu().get_msrs([MSR_IA32_TSC])[MSR_IA32_TSC])

    def default_cpuid(self) -> List[CpuidEntry]:
        """The backend's supported CPUID with the vendor and overrides applied."""
        entries = [CpuidEntry.from_kvm(e) for e in self.vm.kvm.getSupportedCPUID()]
        vendor = self.cpuid_vendor
        if vendor is not None:
            raw = _VENDORS.get(vendor.lower(), vendor.encode("ascii"))
            if len(raw) != 12:
                raise ValueError(f"cpuid_vendor must be 'intel', 'amd' or 12 chars, got {vendor!r}")
            ebx, edx, ecx = struct.unpack("<III", raw)
            entries = [e._replace(ebx=ebx, ecx=ecx, edx=edx) if e.function == 0 else e
                       for e in entries]
        apic_id = self.apic_id
        entries = [_with_apic_id(e, apic_id) for e in entries]
        for (function, index), regs in self.cpuid_overrides.items():
            eax, ebx, ecx, edx = regs
            entries = [e for e in entries if (e.function, e.index) != (function, index)]
            entries.append(CpuidEntry(function, index, 0, eax, ebx, ecx, edx))
        return entries

    def _msr_exits_on(self, vm: Any) -> None:
        """User-space exits for the x2APIC and TSC-deadline MSRs (and unknown ones) on the
        backend VM ``vm``: the KVM VM, and the emulation fallback's mock VM."""
        vm.enable_cap(Cap.X86_USER_SPACE_MSR, uapi.KVM_MSR_EXIT_REASON_FILTER
                      | uapi.KVM_MSR_EXIT_REASON_INVAL | uapi.KVM_MSR_EXIT_REASON_UNKNOWN)
        flt = uapi.kvm_msr_filter()
        flt.flags = uapi.KVM_MSR_FILTER_DEFAULT_ALLOW
        bitmaps = []
        for i, (base, count) in enumerate(USER_APIC_MSR_RANGES):
            bitmap = (ctypes.c_uint8 * ((count + 7) // 8))()  # all 0: deny -> exit
            bitmaps.append(bitmap)
            rng = flt.ranges[i]
            rng.flags = uapi.KVM_MSR_FILTER_READ | uapi.KVM_MSR_FILTER_WRITE
            rng.nmsrs, rng.base = count, base
            rng.bitmap = ctypes.addressof(bitmap)
        vm.set_msr_filter(flt)
        self._msr_bitmaps = bitmaps  # alive while a backend may read them

    @property
    def apic_id(self) -> int:
        """This CPU's APIC ID: its user-space local APIC's, else its vCPU id (KVM's
        in-kernel APIC takes the vCPU id as its APIC ID)."""
        lapic = self.lapic
        return int(lapic.apic_id) if lapic is not None else int(self.vcpu_id)

    def msr_list(self) -> List[int]:
        """The MSRs synced with the TC: ARCH_MSRS the backend lists, plus the TC's own."""
        if self._msr_list is None:
            supported = set(self.vm.kvm.getSupportedMSRs())
            self._msr_list = [m for m in ARCH_MSRS if m in supported]
        extra = [m for m in self.tc.msrs if m not in self._msr_list]
        return self._msr_list + extra

    # -------------------------------------------------------------- state sync
    def updateKvmState(self) -> None:
        """Push the whole TC into the vCPU."""
        vcpu = self._vcpu()
        tc = self.tc
        if tc.cpuid and tc.cpuid != self._cpuid_applied:
            try:
                vcpu.set_cpuid2([e.to_kvm() for e in tc.cpuid])
                self._cpuid_applied = list(tc.cpuid)
            except KvmIoctlError as err:
                # Modern KVM refuses a *different* CPUID after the first KVM_RUN.
                log.warning("%s: KVM_SET_CPUID2 refused (%s); keeping the vCPU's", self.path(), err)
                self._cpuid_applied = list(tc.cpuid)
        vcpu.set_sregs(fixup_sregs(tc.to_sregs()))
        vcpu.set_regs(tc.to_regs())
        if self._use_xsave:
            vcpu.set_xsave(tc.to_xsave())
        else:
            vcpu.set_fpu(tc.to_fpu())
        kvm = self.vm.kvm
        if kvm.capXCRs():
            try:
                vcpu.set_xcrs(tc.to_xcrs())
            except KvmIoctlError as err:
                log.debug("%s: KVM_SET_XCRS: %s", self.path(), err)
        msrs = {m: v for m, v in tc.msrs.items()}
        msrs[MSR_IA32_TSC] = tc.tsc
        known = set(self.msr_list())
        to_set = [(m, v) for m, v in msrs.items() if m in known]
        while to_set:
            # KVM_SET_MSRS stops at the first MSR it refuses: skip it, set the rest.
            done = vcpu.set_msrs(to_set)
            if done >= len(to_set):
                break
            log.warning("%s: KVM_SET_MSRS refused MSR %#x (value %#x); not restored",
                        self.path(), to_set[done][0], to_set[done][1])
            to_set = to_set[done + 1:]
        if kvm.capVCPUEvents():
            vcpu.set_vcpu_events(tc.to_events())
        if kvm.capDebugRegs():
            vcpu.set_debugregs(tc.to_debugregs())
        if self.vm.kernel_lapic and len(tc.lapic) == uapi.KVM_APIC_REG_SIZE:
            vcpu.set_lapic(tc.to_lapic())  # KVM's in-kernel local APIC
        try:
            vcpu.set_mp_state(tc.mp_state)
        except KvmIoctlError as err:
            log.debug("%s: KVM_SET_MP_STATE: %s", self.path(), err)

    def updateThreadContext(self) -> None:
        """Pull the whole vCPU state into the TC."""
        vcpu = self._vcpu()
        tc = self.tc
        tc.load_regs(vcpu.get_regs())
        tc.load_sregs(vcpu.get_sregs())
        if self._use_xsave:
            tc.load_xsave(vcpu.get_xsave())
        else:
            tc.load_fpu(vcpu.get_fpu())
        kvm = self.vm.kvm
        if kvm.capXCRs():
            try:
                tc.load_xcrs(vcpu.get_xcrs())
            except KvmIoctlError as err:
                log.debug("%s: KVM_GET_XCRS: %s", self.path(), err)
        wanted = self.msr_list()
        while wanted:
            # KVM_GET_MSRS stops at the first MSR it does not know: skip it, read the rest.
            values = vcpu.get_msrs(wanted)
            for index, value in values.items():
                if index == MSR_IA32_TSC:
                    tc.tsc = value
                else:
                    tc.msrs[index] = value
            if len(values) >= len(wanted):
                break
            log.debug("%s: KVM_GET_MSRS does not know MSR %#x", self.path(), wanted[len(values)])
            wanted = wanted[len(values) + 1:]
        if kvm.capVCPUEvents():
            tc.load_events(vcpu.get_vcpu_events())
        if kvm.capDebugRegs():
            tc.load_debugregs(vcpu.get_debugregs())
        if self.vm.kernel_lapic:
            tc.load_lapic(vcpu.get_lapic())
        try:
            tc.mp_state = vcpu.get_mp_state()
        except KvmIoctlError as err:
            log.debug("%s: KVM_GET_MP_STATE: %s", self.path(), err)

    # ---------------------------------------------------------------- exits
    def handleKvmExitIO(self, ex: IoExit) -> int:
        """Each element of the (string) access goes to the IO bus, in order."""
        bus = self.io_bus
        size = ex.size
        data = ex.data
        if ex.count == 1:
            if bus is None:
                return self._io_access(ex.port, data, ex.is_write)
            ticks: int = bus.access(ex.port, data, ex.is_write, requestor=self)
            return ticks
        ticks = 0
        for i in range(ex.count):
            ticks += self._io_access(ex.port, data[i * size : (i + 1) * size], ex.is_write)
        return ticks

    def handleKvmExitMMIO(self, ex: MmioExit) -> int:
        """As the base; with a user-space local APIC, first follow IA32_APIC_BASE
        (``kvm_run.apic_base``: the guest may have moved or disabled the page)."""
        if self.lapic is not None:
            self._sync_apic_base()
        return self.doMMIOAccess(ex.phys_addr, ex.data, ex.len, ex.is_write)

    def _sync_apic_base(self) -> None:
        # KVM (and the mock) keep IA32_APIC_BASE; kvm_run.apic_base reports it at exits.
        base = self._vcpu().kvm_run.apic_base
        if base != self.lapic.base_msr:
            self.lapic.set_base(base)

    def handleKvmExitMSR(self, ex: MsrExit) -> int:
        """RDMSR/WRMSR of an MSR the user-space local APIC took (x2APIC, TSC deadline).
        An x2APIC MSR outside x2APIC mode is a #GP, as on hardware, and so is any
        other MSR KVM failed on (the #GP KVM would have given).

        Raises:
            GuestError: what the APIC refuses outright (an SMI by IPI).
        """
        lapic = self.lapic
        if lapic is not None:
            self._sync_apic_base()
        if lapic is None or ex.index not in _APIC_MSRS or (
                0x800 <= ex.index <= 0x8FF and not lapic.x2apic):
            log.debug("%s: #GP for MSR %#x", self.path(), ex.index)
            ex.error = 1
            return 0
        if ex.is_write:
            lapic.write_msr(ex.index, ex.data)
        else:
            ex.data = lapic.read_msr(ex.index)
        ex.error = 0
        return 0

    def handleKvmExitInternalError(self, ex: InternalErrorExit) -> int:
        """An instruction KVM's emulator refused runs on the mock (the hybrid CPU).

        Only for suberror KVM_INTERNAL_ERROR_EMULATION, with ``emulationFallback``
        on and a backend that is not the mock itself; anything else, or an
        instruction the mock cannot run either, is reported as before.
        """
        vcpu = self.vcpu
        if ex.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION and self.software_breakpoint_exit():
            return 0  # KVM's emulator stopped at an INT3 breakpoint (debug.py)
        if (ex.suberror != uapi.KVM_INTERNAL_ERROR_EMULATION or not self.params.emulationFallback
                or vcpu is None or not self.can_fall_back(vcpu)):
            return super().handleKvmExitInternalError(ex)
        self.syncKvmState()
        fallback = self._fallback_for(vcpu)
        try:
            result = fallback.run(vcpu, msrs=self.msr_list(), cpuid=self._fallback_cpuid or [],
                                  use_xsave=self._use_xsave, io=self.handleKvmExitIO,
                                  mmio=self.handleKvmExitMMIO,
                                  guest_debug=self.guest_debug_args())
        except KvmIoctlError as err:
            raise self._fatal(f"KVM internal error (emulation, instruction bytes "
                              f"{ex.insn_bytes.hex(' ')}); the emulation fallback could not "
                              f"move the state: {err}", ex) from err
        done = result.instructions
        log.debug("%s: emulation fallback for %s: %d instruction(s) on the mock, stop %r",
                  self.path(), ex.insn_bytes.hex(" ") or "(no bytes)", done, result.stop)
        stats = self.stats
        stats.numEmulatedInstructions.value += done
        stats.numInsts.value += done
        self.ctr_insts += done
        ticks = result.ticks + done * self._clock_period
        stop = result.stop
        if stop is None:
            return ticks
        if isinstance(stop, InternalErrorExit) and done == 0:
            why = ""
            if stop.insn_bytes:
                why = f" (mock: bytes {stop.insn_bytes.hex(' ')})"
            log.info("%s: the emulation fallback cannot run it either%s", self.path(), why)
            return super().handleKvmExitInternalError(ex)
        if isinstance(stop, HltExit):
            return ticks + self.handleKvmExitHalt(stop)
        if isinstance(stop, ShutdownExit):
            return self.handleKvmExitShutdown(stop)
        if isinstance(stop, DebugExit):  # a step or breakpoint of the guest debugging
            return ticks + self.handleKvmExitDebug(stop)
        if isinstance(stop, InternalErrorExit):
            return ticks  # the state is written back: KVM tries the next instruction
        raise self._fatal(f"exit {stop!r} during the emulation fallback", stop)

    def _fallback_for(self, vcpu: Any) -> EmulationFallback:
        """The emulation fallback (created on first use) with the CPUID the guest sees."""
        fallback = self._fallback
        if fallback is None:
            fallback = self._fallback = EmulationFallback(
                self.vm._ram, max_instructions=self.params.emulationFallbackInsts,
                vm_setup=self._msr_exits_on if self.vm.apic_msrs_taken else None)
        if self._fallback_cpuid_of is not self.tc.cpuid:
            # What the guest sees: KVM_GET_CPUID2 (KVM may have adjusted what was set).
            try:
                self._fallback_cpuid = list(vcpu.get_cpuid2())
            except KvmIoctlError:
                self._fallback_cpuid = [e.to_kvm() for e in self.tc.cpuid]
            if self.hybrid:  # KVM may have put bits back that neither CPU runs
                self._fallback_cpuid = hybrid_cpuid(self._fallback_cpuid)
            self._fallback_cpuid_of = self.tc.cpuid
        return fallback

    @staticmethod
    def can_fall_back(vcpu: Any) -> bool:
        """Whether the emulation fallback serves ``vcpu``: not when it has an exact run
        clock, i.e. is an interpreter such as the mock itself (an instruction it does not
        implement has nowhere else to go)."""
        return vcpu.run_clock() is None

    def close(self) -> None:
        if self._fallback is not None:
            self._fallback.close()
            self._fallback = None
        self._burst = None
        super().close()

    def handleKvmExitHalt(self, ex: HltExit) -> int:
        """HLT: keep running when an interrupt is already waiting, else suspend."""
        if self.step_ends_at_halt():
            return 0  # a requested single step ends here (see KvmDebug.request_step)
        if self.pending_nmi or (self.interrupts is not None and not self.vm.has_irqchip
                                and self.interrupts.has_pending()):
            return 0
        return super().handleKvmExitHalt(ex)

    def handleKvmExitIoapicEoi(self, ex: IoapicEoiExit) -> int:
        """Split irqchip: KVM's local APIC took the EOI of a level-triggered vector the
        user-space IOAPIC sent; its remote IRR clears (and a line still up sends again)."""
        if self.on_ioapic_eoi is None:
            return super().handleKvmExitIoapicEoi(ex)
        self.on_ioapic_eoi(ex.vector)
        return 0

    def handleKvmExitIRQWindowOpen(self, ex: IrqWindowOpenExit) -> int:
        """The guest can take an interrupt: the next entry delivers it."""
        return 0

    # ------------------------------------------------------------ interrupts
    def ioctlRun(self) -> Exit:
        """Deliver pending interrupts (no in-kernel irqchip), then enter KVM_RUN."""
        vcpu = self.vcpu
        if vcpu is None:
            vcpu = self._vcpu()  # raises
        if self.drain_state is _Draining:
            # As gem5's kvmRunDrain: inject nothing new while draining, and keep
            # the interrupt window kvmRunDrain may have requested.
            return vcpu.run()
        if self.hybrid and not vcpu.kvm_run.immediate_exit:  # (a half entry: KVM's)
            if self._kvm_once:
                self._kvm_once = False  # what the mock refused, or a KVM MSR: KVM runs
            else:
                ex = self._run_burst(vcpu)
                if ex is not None:
                    return ex
            self._kvm_ran = True
        src = self.interrupts
        if src is None and not self.pending_nmi:
            try:
                return vcpu.run()  # nothing to deliver (the common case)
            except KvmIoctlError as err:
                return run_again(vcpu, err)
        if self.pending_nmi:
            self.pending_nmi = False
            self.kvmNonMaskableInterrupt()
        if src is not None and not self.vm.has_irqchip:
            run = vcpu.kvm_run
            if src.has_pending():
                if run.ready_for_interrupt_injection and run.if_flag:
                    self.kvmInterrupt(src.acknowledge())
                    run.request_interrupt_window = 1 if src.has_pending() else 0
                else:
                    run.request_interrupt_window = 1
            elif run.request_interrupt_window:
                run.request_interrupt_window = 0
        return vcpu.run()

    def post_nmi(self) -> None:
        """Queue an NMI for the next entry and wake the thread."""
        self.pending_nmi = True
        self.wakeup()

    # ------------------------------------------------------------ INIT / SIPI
    @property
    def wait_for_sipi(self) -> bool:
        """True after an INIT, until a STARTUP IPI starts the thread again."""
        return self._wait_for_sipi

    def post_init(self) -> None:
        """Deliver an INIT, as gem5's X86KvmCPU does for an InitInterrupt.

        The thread takes the INIT state of the Intel SDM (vol. 3, table 9-1):
        real mode at F000:FFF0 with CS.base 0xFFFF0000, the general registers
        cleared but EDX = the CPUID signature, CR0 = ET (CD and NW kept), CR2-4,
        CR8 and EFER cleared, GDTR/IDTR at 0 with limit 0xFFFF, DR0-3 cleared and
        DR6/DR7 at their reset values, pending events dropped; x87/SSE state, the
        other MSRs and the TSC are kept. Then, for want of firmware, the thread
        waits for a SIPI (suspended, interrupts do not wake it; mp_state
        INIT_RECEIVED in the thread context, which checkpoints carry). KVM's
        in-kernel local APIC would do the same for a multiprocessor guest; this
        is the user-space path every backend supports.
        """
        self.syncThreadContext()
        tc = self.tc
        signature = next((e.eax for e in tc.cpuid if e.function == 1 and e.index == 0), 0x600)
        for name in ("rax", "rbx", "rcx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                     "r11", "r12", "r13", "r14", "r15"):
            setattr(tc, name, 0)
        tc.rdx = signature
        tc.rip = 0xFFF0
        tc.rflags = 0x2
        tc.cr0 = modes.CR0_ET | (tc.cr0 & 0x60000000)  # CD and NW are kept
        tc.cr2 = tc.cr3 = tc.cr4 = tc.cr8 = tc.efer = 0
        tc.cs = Segment(base=0xFFFF0000, limit=0xFFFF, selector=0xF000, type=0xB)
        for name in ("ds", "es", "fs", "gs", "ss"):
            setattr(tc, name, Segment(base=0, limit=0xFFFF, selector=0, type=0x3))
        tc.ldt = Segment(base=0, limit=0xFFFF, selector=0, type=0x2, s=0)
        tc.tr = Segment(base=0, limit=0xFFFF, selector=0, type=0xB, s=0)
        tc.gdt = DescriptorTable(base=0, limit=0xFFFF)
        tc.idt = DescriptorTable(base=0, limit=0xFFFF)
        tc.debug_db = (0, 0, 0, 0)
        tc.dr6, tc.dr7 = 0xFFFF0FF0, 0x400
        tc.events = VcpuEvents()
        tc.mp_state = uapi.KVM_MP_STATE_INIT_RECEIVED
        self.pending_nmi = False
        self.threadContextDirty = True
        self.kvmStateDirty = False
        self._wait_for_sipi = True
        self.suspendContext()

    def wait_in_kernel_for_sipi(self) -> None:
        """Start an AP the in-kernel local APIC will bring up: it enters KVM_RUN with
        KVM's state for an AP (KVM_MP_STATE_UNINITIALIZED: KVM does INIT and SIPI)
        and IA32_APIC_BASE without the BSP bit (else KVM's INIT restarts it at the
        reset vector as a BSP)."""
        tc = self.tc
        tc.mp_state = uapi.KVM_MP_STATE_UNINITIALIZED
        tc.apic_base &= ~APIC_BASE_BSP
        tc.msrs.pop(MSR_IA32_APIC_BASE, None)
        self.threadContextDirty = True
        self.activateContext()

    def post_sipi(self, vector: int) -> None:
        """Deliver a STARTUP IPI: a thread waiting after INIT starts in real mode at
        ``vector`` * 4 KiB (CS = vector << 8, IP = 0). As on hardware, a SIPI that
        finds the thread not waiting for one is ignored.

        Raises:
            ValueError: ``vector`` is not 0-255.
        """
        if not 0 <= vector <= 0xFF:
            raise ValueError(f"SIPI vector must be 0-255, got {vector}")
        if not self._wait_for_sipi:
            log.debug("%s: SIPI %#x ignored (not waiting for one)", self.path(), vector)
            return
        tc = self.tc
        tc.cs = Segment(base=vector << 12, limit=0xFFFF, selector=vector << 8, type=0xB)
        tc.rip = 0
        tc.mp_state = uapi.KVM_MP_STATE_RUNNABLE
        self.threadContextDirty = True
        self._wait_for_sipi = False
        self.wakeup()

    def wakeup(self) -> None:
        """As the base, except that a thread waiting for a SIPI stays asleep."""
        if self._wait_for_sipi:
            return
        super().wakeup()

    def unserializeThread(self, cp: Any) -> None:
        super().unserializeThread(cp)
        self._wait_for_sipi = self.tc.mp_state == uapi.KVM_MP_STATE_INIT_RECEIVED

    def archIsDrained(self) -> bool:
        """Drained only when no exception, interrupt or NMI is injected or pending."""
        vcpu = self.vcpu
        if vcpu is None or not self.vm.kvm.capVCPUEvents():
            return True
        ev = vcpu.get_vcpu_events()
        return not (ev.exception.injected or ev.interrupt.injected or ev.nmi.injected
                    or ev.nmi.pending)

    def kvmRunDrain(self) -> int:
        """Run until nothing is injected (at most 1 ms), or a half entry when already so."""
        if not self.archIsDrained():
            self._vcpu().kvm_run.request_interrupt_window = 1
            return self.kvmRun(DRAIN_RUN_TICKS)
        return self.kvmRun(0)

    def clone_kwargs(self) -> Dict[str, Any]:
        return {"interrupts": self.interrupts, "cpuid_vendor": self.cpuid_vendor,
                "cpuid_overrides": dict(self.cpuid_overrides)}

    def _take_over_arch(self, old: BaseKvmCPU) -> None:
        if self.interrupts is None:
            self.interrupts = getattr(old, "interrupts", None)
        self._attach_interrupts()
        self.pending_nmi = bool(getattr(old, "pending_nmi", False))
        self._wait_for_sipi = bool(getattr(old, "_wait_for_sipi", False))

    # ------------------------------------------------------------ m5ops
    def m5op_args(self, n: int) -> List[int]:
        """The first ``n`` m5op arguments (rdi, rsi, rdx, rcx, r8, r9: gem5's x86 ABI)."""
        if self.threadContextDirty or self.vcpu is None:
            regs: Any = self.tc
        else:
            regs = self.vcpu.get_regs()
        names = ("rdi", "rsi", "rdx", "rcx", "r8", "r9")
        return [int(getattr(regs, names[i])) for i in range(min(n, len(names)))]

    def dump(self) -> str:
        """The register dump (gem5 dumpIntRegs/dumpSpecRegs style)."""
        return super().dump()


def run_again(vcpu: Any, err: KvmIoctlError) -> Exit:
    """KVM_RUN's EAGAIN as an IntrExit: with KVM's in-kernel local APIC an AP still
    waiting for INIT/SIPI (KVM_MP_STATE_UNINITIALIZED) returns it when its wait
    ends without a SIPI ("run again"); any other error is raised."""
    if err.errno != errno.EAGAIN:
        raise err
    return IntrExit(vcpu.kvm_run)


def _with_apic_id(e: CpuidEntry, apic_id: int) -> CpuidEntry:
    """A CPUID entry with one CPU's APIC ID: leaf 1 EBX[31:24] (initial APIC ID) and
    leaf 0xB EDX (x2APIC ID), as KVM and QEMU fill them for each vCPU."""
    if e.function == 1:
        return e._replace(ebx=(e.ebx & 0x00FFFFFF) | ((apic_id & 0xFF) << 24))
    if e.function == 0xB:
        return e._replace(edx=apic_id & 0xFFFFFFFF)
    return e


def fixup_sregs(s: uapi.kvm_sregs) -> uapi.kvm_sregs:
    """gem5's segment fix-ups before KVM_SET_SREGS: accessed bit on usable code/data
    segments, a busy TSS type, SS.DPL equal to CS.DPL in protected mode."""
    protected = bool(s.cr0 & 1)
    for name in ("cs", "ds", "es", "fs", "gs", "ss"):
        seg = getattr(s, name)
        if seg.present and seg.s and not seg.unusable:
            seg.type |= 1
    tr = s.tr
    if tr.type in (1, 9):  # available 16/32-bit TSS -> busy
        tr.type += 2
    if protected and not s.ss.unusable:
        s.ss.dpl = s.cs.dpl
    return s


# ---------------------------------------------------------------------------
# Start states for the boot protocols (the System applies them before startup)
# ---------------------------------------------------------------------------
def _seg(**kw: int) -> Segment:
    return Segment(**kw)


def real_mode_context(cs: int = 0, ip: int = 0, *, sp: int = 0) -> ThreadContext:
    """16-bit real mode at cs:ip, data segments = cs."""
    tc = ThreadContext()
    base = cs << 4
    tc.cs = _seg(base=base, limit=0xFFFF, selector=cs, type=0xB)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(tc, name, _seg(base=base, limit=0xFFFF, selector=cs, type=0x3))
    tc.cr0 = modes.CR0_ET
    tc.rip = ip
    tc.rsp = sp
    tc.rflags = 0x2
    return tc


def protected_mode_context(eip: int, *, esp: int = 0, regs: Optional[Dict[str, int]] = None
                           ) -> ThreadContext:
    """32-bit flat protected mode with paging off (the Multiboot entry state)."""
    tc = ThreadContext()
    tc.cs = _seg(base=0, limit=0xFFFFFFFF, selector=modes.SEL_CODE64, type=0xB, db=1, g=1)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(tc, name, _seg(base=0, limit=0xFFFFFFFF, selector=modes.SEL_DATA, type=0x3,
                               db=1, g=1))
    tc.cr0 = modes.CR0_PE | modes.CR0_ET
    tc.rip = eip
    tc.rsp = esp
    tc.rflags = 0x2
    for name, value in (regs or {}).items():
        setattr(tc, name, value)
    return tc


def long_mode_context(rip: int, *, rsp: int = 0, cpl: int = 0, cr3: int, gdt_base: int,
                      iopl: int = 0) -> ThreadContext:
    """64-bit long mode with paging at ``cr3`` and the GDT of :func:`modes.build_gdt`
    at ``gdt_base`` (write both with :func:`long_mode_tables`)."""
    if cpl not in (0, 3):
        raise ValueError(f"cpl must be 0 or 3, got {cpl}")
    tc = ThreadContext()
    tc.cs = _seg(base=0, limit=0xFFFFFFFF,
                 selector=modes.SEL_UCODE64 if cpl else modes.SEL_CODE64,
                 type=0xB, dpl=cpl, l=1, g=1)
    for name in ("ds", "es", "fs", "gs", "ss"):
        setattr(tc, name, _seg(base=0, limit=0xFFFFFFFF,
                               selector=modes.SEL_UDATA if cpl else modes.SEL_DATA,
                               type=0x3, dpl=cpl, db=1, g=1))
    tc.gdt.base = gdt_base
    tc.gdt.limit = len(modes.build_gdt()) - 1
    tc.cr3 = cr3
    tc.cr4 = modes.CR4_PAE | modes.CR4_OSFXSR | modes.CR4_OSXMMEXCPT
    tc.cr0 = (modes.CR0_PE | modes.CR0_MP | modes.CR0_ET | modes.CR0_NE | modes.CR0_WP
              | modes.CR0_AM | modes.CR0_PG)
    tc.efer = modes.EFER_LME | modes.EFER_LMA | modes.EFER_SCE
    tc.rip = rip
    tc.rsp = rsp
    tc.rflags = 0x2 | ((iopl & 3) << 12)
    return tc


def long_mode_tables(base: int, gib: int = 1) -> Dict[str, Any]:
    """Identity page tables and a GDT laid out from ``base``: returns
    ``{"blob": bytes to write at base, "cr3": base, "gdt_base": ...}``."""
    tables = modes.build_identity_page_tables(base, gib)
    gdt = modes.build_gdt()
    return {"blob": tables + gdt, "cr3": base, "gdt_base": base + len(tables)}
