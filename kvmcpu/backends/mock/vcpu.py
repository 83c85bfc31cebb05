"""MockVcpu: the vCPU contract over the mock engine, with a kvm_run page filled as KVM does."""

from __future__ import annotations

import ctypes
import errno
import logging
import struct
import threading
import traceback
from collections import deque
from typing import (
    Any,
    Callable,
    Deque,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from ... import uapi
from ...errors import KvmIoctlError
from ...uapi import Cap, ExitReason
from ..base import Vcpu, Vm
from ..exits import Exit, IntrExit, decode_exit
from .backend import TSC_KHZ, VCPU_MMAP_SIZE
from .engine import Engine
from .state import (
    CS,
    FS,
    GS,
    IF,
    MSR_EFER,
    MSR_FS_BASE,
    MSR_GS_BASE,
    MSR_IA32_APICBASE,
    MSR_IA32_TSC,
    MSR_INDEX_LIST,
    check_sregs,
)
from .xsave import xcr0_refusal

log = logging.getLogger("kvmcpu.backends.mock")

_PIO_OFFSET = 4096 * uapi.KVM_PIO_PAGE_OFFSET
#: DR7 LEN field -> bytes (SDM 17.2.4: 10b is 8 bytes on processors that have it)
_DR7_LEN = (1, 2, 8, 4)
_GUESTDBG_VALID = (uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP
                   | uapi.KVM_GUESTDBG_USE_SW_BP | uapi.KVM_GUESTDBG_USE_HW_BP
                   | uapi.KVM_GUESTDBG_BLOCKIRQ | uapi.KVM_GUESTDBG_INJECT_DB
                   | uapi.KVM_GUESTDBG_INJECT_BP)

#: exit reason -> name of the kvm_run union member that holds its fields.
_UNION_MEMBER: Dict[int, str] = {
    ExitReason.IO: "io", ExitReason.MMIO: "mmio", ExitReason.FAIL_ENTRY: "fail_entry",
    ExitReason.UNKNOWN: "hw", ExitReason.EXCEPTION: "ex", ExitReason.SYSTEM_EVENT: "system_event",
    ExitReason.INTERNAL_ERROR: "internal", ExitReason.HYPERCALL: "hypercall",
}

ScriptItem = Union[Tuple[int, Dict[str, Any]], Callable[["MockVcpu"], Exit]]


#: Exceptions that push an error code (SDM vol. 3, table 6-1): #DF #TS #NP #SS #GP #PF #AC
_ERROR_CODE_VECTORS = frozenset((8, 10, 11, 12, 13, 14, 17))

class MockVcpu(Vcpu):
    """A software vCPU. Extras over the contract: ``budget``/``set_budget``,
    ``instructions_retired``, ``cycles``, ``script_exit``, ``use_decode_cache``."""

    def __init__(self, vm: Vm, vcpu_id: int) -> None:
        super().__init__(vm, vcpu_id)
        # The run mapping: kvm_run, then the PIO data page, then (in KVM) the coalesced ring.
        # Lifetime: _run_buf owns the bytes; kvm_run and run_page are views dropped in close().
        self._run_buf = (ctypes.c_ubyte * VCPU_MMAP_SIZE)()
        self.kvm_run = uapi.kvm_run.from_buffer(self._run_buf)
        self.run_page = memoryview(self._run_buf).cast("B")
        self.engine = Engine(vm)  # type: ignore[arg-type]
        self._script: Deque[ScriptItem] = deque()
        self._last: Optional[Tuple[Any, ...]] = None
        self._lock = threading.Lock()
        self._sigmask: Optional[List[int]] = None
        self._guest_debug = 0
        self._update_run_flags()
        self._mark_open()

    # -- extras ------------------------------------------------------------------------
    @property
    def budget(self) -> Optional[int]:
        """Instructions left before run() returns IntrExit (None: unlimited).

        Once it reaches 0 every run() returns IntrExit until re-armed."""
        return self.engine.budget

    @budget.setter
    def budget(self, n: Optional[int]) -> None:
        if n is not None and (not isinstance(n, int) or n < 0):
            raise ValueError(f"budget must be None or a non-negative int, got {n!r}")
        self.engine.budget = n

    def run_clock(self) -> "MockVcpu":
        """The mock has an exact run clock: itself (set_budget, instructions_retired,
        cycles)."""
        return self

    def set_budget(self, n_instructions: Optional[int]) -> None:
        """Arm the instruction budget (None disarms it)."""
        self.budget = n_instructions

    @property
    def instructions_retired(self) -> int:
        """Exact count of guest instructions retired since the vCPU was created."""
        return self.engine.instructions_retired

    @property
    def cpl(self) -> int:
        """The current privilege level (KVM has no ioctl for it: SS.DPL in protected mode)."""
        return int(self.engine.cpl)

    @property
    def tsc(self) -> int:
        """The guest TSC now (IA32_TSC, as RDTSC reads it)."""
        return int(self.engine.tsc())

    @property
    def cycles(self) -> int:
        """Guest cycles (one per retired instruction; the guest TSC counts them)."""
        return self.engine.cycles

    @property
    def use_decode_cache(self) -> bool:
        return self.engine.use_cache

    @use_decode_cache.setter
    def use_decode_cache(self, on: bool) -> None:
        self.engine.use_cache = bool(on)
        self.engine.invalidate_all()

    def script_exit(self, reason: Union[int, Callable[["MockVcpu"], Exit]],
                    **fields: Any) -> None:
        """Queue an exit that the next run() returns without running the guest.

        ``reason`` is a KVM_EXIT_* value; ``fields`` name kvm_run fields of that exit
        (``port``, ``size``, ``direction``/``is_write``, ``count``, ``data`` for IO;
        ``phys_addr``, ``data``, ``len``, ``is_write`` for MMIO; ``suberror``, ``data``,
        ``insn_bytes`` for INTERNAL_ERROR; ``type``, ``data`` for SYSTEM_EVENT;
        ``hardware_entry_failure_reason``, ``hardware_exit_reason``, ``exception``,
        ``error_code``, ``nr``, ``args``, ``longmode``, ``pc``, ``dr6``, ``dr7`` ...).
        A callable instead of a reason is called with the vCPU and must return an Exit.
        """
        self._check_open()
        if callable(reason):
            self._script.append(reason)
        else:
            self._script.append((int(reason), dict(fields)))

    # -- running ---------------------------------------------------------------------------
    def run(self) -> Exit:
        """Wraps KVM_RUN: runs the software vCPU until an exit and decodes it."""
        self._check_open()
        run = self.kvm_run
        eng = self.engine
        with self._lock:
            completing = self._complete_last()
            if run.immediate_exit:
                if eng.kicked:  # a kick stops exactly one run (as the KVM backend's)
                    eng.kicked = False
                    run.immediate_exit = 0
                if completing:
                    # KVM finishes the IN/MMIO read before it honours immediate_exit
                    ex = eng.execute(lambda: False, complete_only=True)
                    if ex[0] != "intr":
                        self._update_run_flags()
                        return self._fill(ex)
                self._update_run_flags()
                return IntrExit(run)
            if self._script:
                item = self._script.popleft()
                if callable(item):
                    return item(self)
                self._fill_scripted(*item)
                self._update_run_flags()
                return decode_exit(run, self.run_page)
            pending = eng.mmu.pending
            if pending and pending[0] == ("watch",):
                # a data breakpoint of the last instruction, behind another exit it made
                self._update_run_flags()
                return self._fill(pending.pop(0))
            try:
                eng.check_host_writes()
                ex = eng.execute(lambda: bool(run.request_interrupt_window))
            except Exception as err:  # noqa: BLE001 - never let an engine bug escape run()
                log.error("mock vCPU failure:\n%s", traceback.format_exc())
                ex = ("emulation", b"", f"internal: {err!r}")
            self._update_run_flags()
            return self._fill(ex)

    def _update_run_flags(self) -> None:
        run = self.kvm_run
        st = self.engine.st
        run.if_flag = 1 if st.fl & IF else 0
        run.ready_for_interrupt_injection = 1 if self.engine.ready_for_injection() else 0
        run.cr8 = st.cr8
        run.apic_base = st.apic_base

    def _complete_last(self) -> bool:
        """Deliver what user space put in the run page for the previous exit (IN, MMIO read,
        hypercall return) to the instruction that is re-executed now. True when an
        instruction waits to be re-executed with the data."""
        last, self._last = self._last, None
        if last is None:
            return False
        kind = last[0]
        eng = self.engine
        if kind == "io_in":
            _, port, size, count = last
            off = int(self.kvm_run.io.data_offset)
            data = bytes(self.run_page[off: off + size * count])
            eng.io_replay.append((port, size, count, data))
        elif kind == "mmio_read":
            _, gpa, n = last
            data = bytes(self.kvm_run.mmio.data)[:n]
            eng.mmu.mmio_replay.append((gpa, n, data))
        elif kind == "hypercall":
            eng.st.R[0] = int(self.kvm_run.hypercall.ret)
        elif kind == "msr":
            # as KVM's complete_emulated_{rd,wr}msr: #GP at the instruction on error,
            # else RDMSR's EDX:EAX from the run page's data
            from .faults import GuestFault

            _, write, _, _, _, insn_ip = last
            msr = self.kvm_run.msr
            if msr.error:
                eng.st.rip = insn_ip
                eng.pending_exception = GuestFault(13, 0)
            elif not write:
                value = int(msr.data)
                eng.st.R[0] = value & 0xFFFFFFFF
                eng.st.R[2] = (value >> 32) & 0xFFFFFFFF
        return kind in ("io_in", "mmio_read")

    def _fill(self, ex: Tuple[Any, ...]) -> Exit:
        run = self.kvm_run
        kind = ex[0]
        if kind == "intr":
            run.exit_reason = ExitReason.INTR
            if len(ex) > 1 and ex[1] == "kick":
                run.immediate_exit = 0  # set by kick(); a caller's own flag is left alone
            return IntrExit(run)
        self._last = ex
        if kind in ("io_in", "io_out"):
            if kind == "io_in":
                _, port, size, count = ex
                data = b""
            else:
                _, port, size, count, data = ex
            io = run.io
            io.direction = uapi.KVM_EXIT_IO_OUT if kind == "io_out" else uapi.KVM_EXIT_IO_IN
            io.size, io.port, io.count, io.data_offset = size, port, count, _PIO_OFFSET
            if data:
                self.run_page[_PIO_OFFSET: _PIO_OFFSET + len(data)] = data
            run.exit_reason = ExitReason.IO
        elif kind in ("mmio_read", "mmio_write"):
            m = run.mmio
            m.phys_addr = ex[1]
            if kind == "mmio_write":
                data = ex[2]
                m.len = len(data)
                m.is_write = 1
                ctypes.memmove(ctypes.addressof(m.data), data.ljust(8, b"\0"), 8)
            else:
                m.len = ex[2]
                m.is_write = 0
                ctypes.memset(ctypes.addressof(m.data), 0, 8)
            run.exit_reason = ExitReason.MMIO
        elif kind == "hlt":
            run.exit_reason = ExitReason.HLT
        elif kind == "shutdown":
            run.exit_reason = ExitReason.SHUTDOWN
        elif kind == "irq_window":
            run.exit_reason = ExitReason.IRQ_WINDOW_OPEN
        elif kind == "watch":
            # data breakpoints the instruction just completed hit (a trap, after it)
            eng = self.engine
            st = eng.st
            a = run.debug.arch
            a.exception = 1
            a.pc = (st.sb[CS] + st.rip) & 0xFFFFFFFFFFFFFFFF
            a.dr6 = 0xFFFF0FF0 | eng.mmu.watch_hit | (0x4000 if eng.single_step else 0)
            a.dr7 = eng.hw_dr7
            eng.mmu.watch_hit = 0
            run.exit_reason = ExitReason.DEBUG
        elif kind == "debug":
            _, exc, pc, dr6, dr7 = ex
            a = run.debug.arch
            a.exception, a.pc, a.dr6, a.dr7 = exc, pc, dr6, dr7
            run.exit_reason = ExitReason.DEBUG
        elif kind == "hypercall":
            _, nr, args, longmode = ex
            h = run.hypercall
            h.nr = nr
            for i in range(6):
                h.args[i] = args[i] if i < len(args) else 0
            h.ret = 0
            h.longmode = longmode
            run.exit_reason = ExitReason.HYPERCALL
        elif kind == "msr":
            _, write, index, value, reason, _ = ex
            msr = run.msr
            msr.error = 0
            msr.reason = reason
            msr.index = index
            msr.data = value if write else 0
            run.exit_reason = ExitReason.X86_WRMSR if write else ExitReason.X86_RDMSR
        elif kind == "emulation":
            insn = bytes(ex[1])[:15]
            ef = run.emulation_failure
            ef.suberror = uapi.KVM_INTERNAL_ERROR_EMULATION
            ctypes.memset(ctypes.addressof(run.internal.data), 0, 16 * 8)
            ef.ndata = 3 if insn else 0
            ef.flags = uapi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES if insn else 0
            ef.insn_size = len(insn)
            ctypes.memmove(ctypes.addressof(ef.insn_bytes), insn.ljust(15, b"\0"), 15)
            run.exit_reason = ExitReason.INTERNAL_ERROR
            self._last = None
        else:  # pragma: no cover - engine contract
            raise AssertionError(f"unknown engine exit {ex!r}")
        return decode_exit(run, self.run_page)

    def _fill_scripted(self, reason: int, fields: Dict[str, Any]) -> None:
        run = self.kvm_run
        ctypes.memset(ctypes.addressof(run.u), 0, ctypes.sizeof(run.u))
        run.exit_reason = reason
        member: Any = None
        if reason == ExitReason.DEBUG:
            member = run.debug.arch
        elif reason in _UNION_MEMBER:
            member = getattr(run, _UNION_MEMBER[reason])
        fields = dict(fields)
        if reason == ExitReason.IO:
            if "is_write" in fields:
                fields["direction"] = 1 if fields.pop("is_write") else 0
            data = fields.pop("data", b"")
            fields.setdefault("data_offset", _PIO_OFFSET)
            fields.setdefault("count", 1)
            fields.setdefault("size", max(1, len(data)) if data else 1)
            off = fields["data_offset"]
            self.run_page[off: off + len(data)] = data
        elif reason == ExitReason.MMIO:
            data = bytes(fields.pop("data", b""))
            fields.setdefault("len", len(data) or 1)
            if "is_write" in fields:
                fields["is_write"] = 1 if fields["is_write"] else 0
            ctypes.memmove(ctypes.addressof(run.mmio.data), data.ljust(8, b"\0")[:8], 8)
        elif reason == ExitReason.INTERNAL_ERROR and "insn_bytes" in fields:
            insn = bytes(fields.pop("insn_bytes"))[:15]
            ef = run.emulation_failure
            ef.suberror = fields.pop("suberror", uapi.KVM_INTERNAL_ERROR_EMULATION)
            ef.ndata = fields.pop("ndata", 3)
            ef.flags = fields.pop("flags", uapi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES)
            ef.insn_size = len(insn)
            ctypes.memmove(ctypes.addressof(ef.insn_bytes), insn.ljust(15, b"\0"), 15)
        elif reason in (ExitReason.INTERNAL_ERROR, ExitReason.SYSTEM_EVENT) and "data" in fields:
            data = list(fields.pop("data"))
            fields.setdefault("ndata", len(data))
            for i, v in enumerate(data[:16]):
                member.data[i] = v
        elif reason == ExitReason.HYPERCALL and "args" in fields:
            for i, v in enumerate(list(fields.pop("args"))[:6]):
                run.hypercall.args[i] = v
        for name, value in fields.items():
            if member is not None and hasattr(member, name):
                setattr(member, name, value)
            elif hasattr(run, name):
                setattr(run, name, value)
            else:
                raise ValueError(f"exit {reason} has no field {name!r}")

    def kick(self) -> None:
        """Make run() return IntrExit at the next instruction boundary (or at once if no run
        is in progress). Sets immediate_exit like the KVM backend; the IntrExit the kick
        causes clears it again. Safe from another thread."""
        if self._closed:
            return
        self.kvm_run.immediate_exit = 1  # first: the engine clears it after seeing `kicked`
        self.engine.kicked = True

    # -- register state -------------------------------------------------------------------
    def get_regs(self) -> uapi.kvm_regs:
        """Wraps KVM_GET_REGS."""
        self._check_open()
        return self.engine.st.get_regs()

    def set_regs(self, regs: uapi.kvm_regs) -> None:
        """Wraps KVM_SET_REGS."""
        self._check_open()
        self.engine.st.set_regs(regs)
        self.engine.mode_changed()

    def get_sregs(self) -> uapi.kvm_sregs:
        """Wraps KVM_GET_SREGS."""
        self._check_open()
        return self.engine.st.get_sregs()

    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        """Wraps KVM_SET_SREGS (EINVAL for inconsistent CR0/CR4/EFER, old state kept)."""
        self._check_open()
        why = check_sregs(sregs)
        if why:
            raise KvmIoctlError("KVM_SET_SREGS", errno.EINVAL, why)
        self.engine.st.set_sregs(sregs)
        self.engine.mode_changed()
        self.engine.tlb_flush()

    def flush_tlb(self) -> None:
        """Drop the mock's TLBs (what KVM_SET_SREGS does), for a caller that changed the
        page tables behind the vCPU's back (another backend ran the guest meanwhile)."""
        self._check_open()
        self.engine.tlb_flush()

    def get_fpu(self) -> uapi.kvm_fpu:
        """Wraps KVM_GET_FPU (state is stored, not computed with: no x87/SSE execution)."""
        self._check_open()
        out = uapi.kvm_fpu()
        ctypes.memmove(ctypes.addressof(out), ctypes.addressof(self.engine.st.fpu),
                       ctypes.sizeof(out))
        return out

    def set_fpu(self, fpu: uapi.kvm_fpu) -> None:
        """Wraps KVM_SET_FPU."""
        self._check_open()
        ctypes.memmove(ctypes.addressof(self.engine.st.fpu), ctypes.addressof(fpu),
                       ctypes.sizeof(fpu))

    def _msr_value(self, index: int) -> int:
        st = self.engine.st
        if index == MSR_EFER:
            return st.efer
        if index == MSR_FS_BASE:
            return st.seg[FS].base
        if index == MSR_GS_BASE:
            return st.seg[GS].base
        if index == MSR_IA32_TSC:
            return self.engine.tsc()
        if index == MSR_IA32_APICBASE:
            return st.apic_base
        return st.msrs.get(index, 0)

    def get_msrs(self, indices: Iterable[int]) -> Dict[int, int]:
        """Wraps KVM_GET_MSRS; stops at the first MSR not in the index list."""
        self._check_open()
        out: Dict[int, int] = {}
        for i in indices:
            if i not in MSR_INDEX_LIST:
                break
            out[i] = self._msr_value(i)
        return out

    def set_msrs(self, values: Union[Mapping[int, int], Sequence[Tuple[int, int]]]) -> int:
        """Wraps KVM_SET_MSRS; returns how many were set (stops at the first failure)."""
        self._check_open()
        items = list(values.items()) if isinstance(values, Mapping) else list(values)
        from .system import write_msr

        done = 0
        for index, value in items:
            if index not in MSR_INDEX_LIST:
                break
            if not write_msr(self.engine, index, value & 0xFFFFFFFFFFFFFFFF, host=True):
                break
            done += 1
        return done

    def get_cpuid2(self) -> List[uapi.kvm_cpuid_entry2]:
        """Wraps KVM_GET_CPUID2."""
        self._check_open()
        return [_copy_entry(e) for e in self.engine.cpuid]

    def set_cpuid2(self, entries: Sequence[uapi.kvm_cpuid_entry2]) -> None:
        """Wraps KVM_SET_CPUID2 (E2BIG beyond 256 entries)."""
        self._check_open()
        if len(entries) > 256:
            raise KvmIoctlError("KVM_SET_CPUID2", errno.E2BIG, f"{len(entries)} entries")
        self.engine.cpuid = [_copy_entry(e) for e in entries]

    def get_xsave(self) -> uapi.kvm_xsave:
        """Wraps KVM_GET_XSAVE: the legacy FXSAVE area built from the FPU state."""
        self._check_open()
        x = uapi.kvm_xsave()
        # Lifetime: buf views x, which outlives it (deleted before returning).
        buf = (ctypes.c_ubyte * 4096).from_buffer(x)
        st = self.engine.st
        src = bytes((ctypes.c_ubyte * 4096).from_buffer(st.xsave))  # a copy: no view kept
        ctypes.memmove(ctypes.addressof(buf), src, 4096)
        f = st.fpu
        struct.pack_into("<HHBxHQQII", buf, 0, f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip,
                         f.last_dp, f.mxcsr, 0xFFFF)
        for i in range(8):
            ctypes.memmove(ctypes.addressof(buf) + 32 + 16 * i, bytes(f.fpr[i]), 16)
        for i in range(16):
            ctypes.memmove(ctypes.addressof(buf) + 160 + 16 * i, bytes(f.xmm[i]), 16)
        struct.pack_into("<Q", buf, 512, struct.unpack_from("<Q", buf, 512)[0] | 3)
        del buf
        return x

    def set_xsave(self, xsave: uapi.kvm_xsave) -> None:
        """Wraps KVM_SET_XSAVE."""
        self._check_open()
        st = self.engine.st
        raw = bytes((ctypes.c_ubyte * 4096).from_buffer_copy(xsave))
        ctypes.memmove(ctypes.addressof(st.xsave), raw, 4096)
        f = st.fpu
        (f.fcw, f.fsw, f.ftwx, f.last_opcode, f.last_ip, f.last_dp, f.mxcsr,
         _) = struct.unpack_from("<HHBxHQQII", raw, 0)
        for i in range(8):
            ctypes.memmove(ctypes.addressof(f.fpr[i]), raw[32 + 16 * i: 48 + 16 * i], 16)
        for i in range(16):
            ctypes.memmove(ctypes.addressof(f.xmm[i]), raw[160 + 16 * i: 176 + 16 * i], 16)

    def get_xcrs(self) -> uapi.kvm_xcrs:
        """Wraps KVM_GET_XCRS (XCR0 only)."""
        self._check_open()
        x = uapi.kvm_xcrs()
        x.nr_xcrs = 1
        x.xcrs[0].xcr = 0
        x.xcrs[0].value = self.engine.st.xcr0
        return x

    def set_xcrs(self, xcrs: uapi.kvm_xcrs) -> None:
        """Wraps KVM_SET_XCRS (EINVAL for an XCR0 XSETBV would refuse, against the
        vCPU's CPUID leaf 0xD as KVM checks it)."""
        self._check_open()
        for i in range(min(xcrs.nr_xcrs, uapi.KVM_MAX_XCRS)):
            if xcrs.xcrs[i].xcr == 0:
                v = int(xcrs.xcrs[i].value)
                why = xcr0_refusal(self.engine, v)
                if why:
                    raise KvmIoctlError("KVM_SET_XCRS", errno.EINVAL, f"XCR0 {v:#x}: {why}")
                self.engine.st.xcr0 = v

    def get_vcpu_events(self) -> uapi.kvm_vcpu_events:
        """Wraps KVM_GET_VCPU_EVENTS: queued interrupt, NMI state and interrupt shadow."""
        self._check_open()
        st = self.engine.st
        ev = uapi.kvm_vcpu_events()
        if st.pending_irq is not None:
            ev.interrupt.injected = 1
            ev.interrupt.nr = st.pending_irq
        ev.interrupt.shadow = st.shadow
        fault = self.engine.pending_exception
        if fault is not None:  # queued (e.g. the #GP of a refused user-space MSR)
            ev.exception.injected = 1
            ev.exception.nr = fault.vector
            ev.exception.has_error_code = 1 if fault.vector in _ERROR_CODE_VECTORS else 0
            ev.exception.error_code = fault.error_code
        ev.nmi.pending = st.nmi_pending
        ev.nmi.masked = 1 if st.nmi_masked else 0
        ev.flags = uapi.KVM_VCPUEVENT_VALID_NMI_PENDING | uapi.KVM_VCPUEVENT_VALID_SHADOW
        return ev

    def set_vcpu_events(self, events: uapi.kvm_vcpu_events) -> None:
        """Wraps KVM_SET_VCPU_EVENTS."""
        self._check_open()
        valid = (uapi.KVM_VCPUEVENT_VALID_NMI_PENDING | uapi.KVM_VCPUEVENT_VALID_SHADOW
                 | uapi.KVM_VCPUEVENT_VALID_SIPI_VECTOR | uapi.KVM_VCPUEVENT_VALID_SMM
                 | uapi.KVM_VCPUEVENT_VALID_PAYLOAD | uapi.KVM_VCPUEVENT_VALID_TRIPLE_FAULT)
        if events.flags & ~valid:
            raise KvmIoctlError("KVM_SET_VCPU_EVENTS", errno.EINVAL, f"flags {events.flags:#x}")
        st = self.engine.st
        st.pending_irq = int(events.interrupt.nr) if events.interrupt.injected else None
        if events.flags & uapi.KVM_VCPUEVENT_VALID_NMI_PENDING:
            st.nmi_pending = int(events.nmi.pending)
        st.nmi_masked = bool(events.nmi.masked)
        if events.flags & uapi.KVM_VCPUEVENT_VALID_SHADOW:
            st.shadow = int(events.interrupt.shadow) & 3
        if events.exception.injected or events.exception.pending:
            from .faults import GuestFault

            self.engine.pending_exception = GuestFault(
                int(events.exception.nr), int(events.exception.error_code))
        else:  # as KVM: the structure says there is none
            self.engine.pending_exception = None

    def get_debugregs(self) -> uapi.kvm_debugregs:
        """Wraps KVM_GET_DEBUGREGS."""
        self._check_open()
        st = self.engine.st
        d = uapi.kvm_debugregs()
        for i in range(4):
            d.db[i] = st.dr[i]
        d.dr6, d.dr7 = st.dr6, st.dr7
        return d

    def set_debugregs(self, dregs: uapi.kvm_debugregs) -> None:
        """Wraps KVM_SET_DEBUGREGS (EINVAL for flags or upper DR6/DR7 bits)."""
        self._check_open()
        if dregs.flags or dregs.dr6 >> 32 or dregs.dr7 >> 32:
            raise KvmIoctlError("KVM_SET_DEBUGREGS", errno.EINVAL, "reserved bits")
        st = self.engine.st
        st.dr = [int(dregs.db[i]) for i in range(4)]
        st.dr6, st.dr7 = int(dregs.dr6), int(dregs.dr7)

    def get_mp_state(self) -> int:
        """Wraps KVM_GET_MP_STATE."""
        self._check_open()
        return self.engine.st.mp_state

    def set_mp_state(self, state: int) -> None:
        """Wraps KVM_SET_MP_STATE (RUNNABLE and HALTED; others need a local APIC: EINVAL)."""
        self._check_open()
        if state not in (uapi.KVM_MP_STATE_RUNNABLE, uapi.KVM_MP_STATE_HALTED):
            raise KvmIoctlError("KVM_SET_MP_STATE", errno.EINVAL, f"state {state}")
        self.engine.st.mp_state = state

    def get_lapic(self) -> uapi.kvm_lapic_state:
        """KVM_GET_LAPIC: no in-kernel local APIC -> EINVAL, as KVM."""
        self._check_open()
        raise KvmIoctlError("KVM_GET_LAPIC", errno.EINVAL, "no in-kernel local APIC")

    def set_lapic(self, lapic: uapi.kvm_lapic_state) -> None:
        self._check_open()
        raise KvmIoctlError("KVM_SET_LAPIC", errno.EINVAL, "no in-kernel local APIC")

    def get_one_reg(self, reg_id: int) -> int:
        """KVM_GET_ONE_REG: x86 KVM exposes no ONE_REG registers -> EINVAL (as the host)."""
        self._check_open()
        raise KvmIoctlError("KVM_GET_ONE_REG", errno.EINVAL, f"register id {reg_id:#x}")

    def set_one_reg(self, reg_id: int, value: int) -> None:
        self._check_open()
        raise KvmIoctlError("KVM_SET_ONE_REG", errno.EINVAL, f"register id {reg_id:#x}")

    def translate(self, linear_address: int) -> uapi.kvm_translation:
        """Wraps KVM_TRANSLATE (no A/D updates, no fault)."""
        self._check_open()
        t = uapi.kvm_translation()
        t.linear_address = linear_address
        r = self.engine.mmu.debug_translate(linear_address)
        if r is not None:
            t.physical_address, w, u = r[0], r[1], r[2]
            t.valid, t.writeable, t.usermode = 1, int(w), int(u)
        return t

    def get_tsc_khz(self) -> int:
        """Wraps KVM_GET_TSC_KHZ."""
        self._check_open()
        return TSC_KHZ

    def set_tsc_khz(self, khz: int) -> None:
        """KVM_SET_TSC_KHZ: no TSC scaling (KVM_CAP_TSC_CONTROL = 0): only the current value."""
        self._check_open()
        if khz != TSC_KHZ:
            raise KvmIoctlError("KVM_SET_TSC_KHZ", errno.EINVAL, f"{khz} kHz")

    def enable_cap(self, cap: Union[Cap, int], *args: int, flags: int = 0) -> None:
        """KVM_ENABLE_CAP on the vCPU: nothing is enableable -> EINVAL."""
        self._check_open()
        raise KvmIoctlError("KVM_ENABLE_CAP", errno.EINVAL, f"capability {int(cap)}")

    # -- events -------------------------------------------------------------------------------
    def interrupt(self, irq: int) -> None:
        """Wraps KVM_INTERRUPT: the vector is injected at the next entry (check
        ready_for_interrupt_injection first, as with KVM). EEXIST while one is queued."""
        self._check_open()
        if not 0 <= irq < uapi.KVM_NR_INTERRUPTS:
            raise KvmIoctlError("KVM_INTERRUPT", errno.EINVAL, f"irq {irq}")
        st = self.engine.st
        if st.pending_irq is not None:
            raise KvmIoctlError("KVM_INTERRUPT", errno.EEXIST, "an interrupt is already queued")
        st.pending_irq = irq

    def nmi(self) -> None:
        """Wraps KVM_NMI."""
        self._check_open()
        st = self.engine.st
        st.nmi_pending = min(st.nmi_pending + 1, 2)

    def set_signal_mask(self, signals: Optional[Iterable[int]]) -> None:
        """KVM_SET_SIGNAL_MASK: recorded (the mock runs in the caller's thread, no signals)."""
        self._check_open()
        self._sigmask = None if signals is None else [int(s) for s in signals]

    def set_guest_debug(self, control: int, debugreg: Optional[Sequence[int]] = None) -> None:
        """Wraps KVM_SET_GUEST_DEBUG: single-step, INT3 and execution breakpoints."""
        self._check_open()
        if control & ~_GUESTDBG_VALID:
            raise KvmIoctlError("KVM_SET_GUEST_DEBUG", errno.EINVAL, f"control {control:#x}")
        eng = self.engine
        if control & (uapi.KVM_GUESTDBG_INJECT_DB | uapi.KVM_GUESTDBG_INJECT_BP):
            from .faults import GuestFault

            if eng.pending_exception is not None:
                raise KvmIoctlError("KVM_SET_GUEST_DEBUG", errno.EBUSY, "exception pending")
            eng.pending_exception = GuestFault(
                1 if control & uapi.KVM_GUESTDBG_INJECT_DB else 3)
        regs = list(debugreg or [])[:8] + [0] * (8 - len(list(debugreg or [])[:8]))
        self._guest_debug = control
        on = bool(control & uapi.KVM_GUESTDBG_ENABLE)
        eng.single_step = on and bool(control & uapi.KVM_GUESTDBG_SINGLESTEP)
        eng.sw_bp = on and bool(control & uapi.KVM_GUESTDBG_USE_SW_BP)
        addrs: List[int] = []
        watch: List[Tuple[int, int, bool, int]] = []
        if on and control & uapi.KVM_GUESTDBG_USE_HW_BP:
            dr7 = regs[7]
            for i in range(4):
                enabled = (dr7 >> (2 * i)) & 3
                rw = (dr7 >> (16 + 4 * i)) & 3
                if enabled and rw == 0:
                    addrs.append(regs[i])
                else:
                    addrs.append(-1)
                if enabled and rw in (1, 3):
                    # data breakpoint: LEN 00/01/11/10 = 1/2/4/8 bytes, the address's
                    # low bits ignored as the SDM says (17.2.5); R/W 01 writes, 11 both
                    size = _DR7_LEN[(dr7 >> (18 + 4 * i)) & 3]
                    watch.append((regs[i] & ~(size - 1), size, rw == 1, i))
            eng.hw_dr7 = dr7
        eng.hw_bp_addrs = addrs
        # Any armed debug register makes the engine check each instruction boundary.
        eng.hw_bp = [a for a in addrs if a >= 0] + [w[0] for w in watch]
        if watch or eng.mmu.watch is not None:
            eng.mmu.set_watch(watch)

    # -- lifecycle ------------------------------------------------------------------------------
    def memory_changed(self) -> None:
        """Slots changed: drop TLBs and translations (they hold views of the old buffers)."""
        self.engine.mmu.flush()
        self.engine.invalidate_all()

    def _coalesced_ring(self) -> Optional[memoryview]:
        vm = self.vm
        return vm.ring_page if not vm.closed else None  # type: ignore[attr-defined]

    def _close_vcpu(self) -> None:
        eng = self.engine
        eng.mmu.flush()
        eng.invalidate_all()
        eng.mmu.mmio_replay.clear()
        del self.kvm_run
        try:
            self.run_page.release()
        except BufferError:
            pass  # an exit object still views the page; it is freed with it


def _copy_entry(e: uapi.kvm_cpuid_entry2) -> uapi.kvm_cpuid_entry2:
    out = uapi.kvm_cpuid_entry2()
    ctypes.memmove(ctypes.addressof(out), ctypes.addressof(e), ctypes.sizeof(out))
    return out
