"""A /dev/kvm vCPU: its fd, its mmap'd ``kvm_run`` page and the KVM_RUN hot path.

How ``kick()`` works
--------------------
``kick()`` may be called from any thread. It sets ``kvm_run.immediate_exit``
(so a KVM_RUN that has not started yet returns EINTR at once) and, when a
thread is inside ``run()`` on this vCPU right now, sends that thread
:data:`KICK_SIGNAL` with ``signal.pthread_kill`` (so a KVM_RUN in progress
returns EINTR). A kick stops exactly one run: the ``IntrExit`` it causes
clears ``immediate_exit`` again (an ``immediate_exit`` the caller set itself
is left alone, as KVM leaves it).

The signal needs a handler, otherwise it would kill the process, and Python
can only install handlers from the main thread: :func:`install_kick_handler`
installs a no-op one, and ``KvmBackend()`` calls it, so create the first
backend on the main thread (the usual case). Without the handler ``kick()``
still sets ``immediate_exit`` but cannot interrupt a guest that never exits.
The signal is never blocked inside KVM_RUN: ``set_signal_mask`` removes it
from the mask it passes to the kernel.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import signal
import struct
import threading
from typing import (
    TYPE_CHECKING,
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    Union,
)

from .. import _ioctl, uapi
from ..errors import ClosedError, KvmIoctlError
from ..hostmem import PAGE_SIZE
from ..uapi import Cap, ExitReason
from . import exits
from .base import Vcpu
from .exits import Exit, IntrExit, IoExit, MmioExit

if TYPE_CHECKING:
    from .kvm import KvmVm

#: The signal kick() sends to a thread inside KVM_RUN (SIGRTMIN is the run timer's).
KICK_SIGNAL: int = int(signal.SIGRTMIN) + 1

_kick_handler_installed = False


def _kick_noop(signum: int, frame: object) -> None:
    """The kick signal only has to interrupt KVM_RUN; there is nothing to do."""


def install_kick_handler() -> bool:
    """Install the no-op KICK_SIGNAL handler if possible; True when one is in place.

    Only the main thread can install signal handlers. A handler someone else
    installed (other than SIG_DFL/SIG_IGN) is kept: any handler interrupts KVM_RUN.
    """
    global _kick_handler_installed
    if _kick_handler_installed:
        return True
    current = signal.getsignal(KICK_SIGNAL)
    if callable(current):
        _kick_handler_installed = True
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(KICK_SIGNAL, _kick_noop)
    _kick_handler_installed = True
    return True


def kick_handler_installed() -> bool:
    """True when kick() can interrupt a running KVM_RUN with KICK_SIGNAL."""
    return _kick_handler_installed


def enable_cap_struct(
    cap: Union[Cap, int], args: Tuple[int, ...], flags: int
) -> uapi.kvm_enable_cap:
    """A kvm_enable_cap for KVM_ENABLE_CAP (at most 4 arguments)."""
    if len(args) > 4:
        raise ValueError(f"KVM_ENABLE_CAP takes at most 4 arguments, got {len(args)}")
    ec = uapi.kvm_enable_cap()
    ec.cap = int(cap)
    ec.flags = flags
    for i, a in enumerate(args):
        ec.args[i] = int(a) & 0xFFFFFFFFFFFFFFFF
    return ec


# Offsets inside the run page for the hot-path decoder (kept equal to what
# exits.IoExit / exits.MmioExit read; tests/unit compares the two decoders).
_EXIT_REASON_INDEX = uapi.kvm_run.exit_reason.offset // 4
_U_OFFSET = uapi.kvm_run.u.offset
_IO = struct.Struct("<BBHIQ")  # direction, size, port, count, data_offset
_MMIO = struct.Struct("<Q8xIB")  # phys_addr, (data), len, is_write
_MMIO_DATA = _U_OFFSET + uapi._kvm_run_mmio.data.offset
_KVM_RUN = uapi.KVM_RUN
_EXIT_IO = int(ExitReason.IO)
_EXIT_MMIO = int(ExitReason.MMIO)
_IO_OUT = uapi.KVM_EXIT_IO_OUT
#: Distinct IO (and MMIO) exits the run closure keeps decoded (see KvmVcpu._make_run).
_EXIT_CACHE_LIMIT = 4096


class KvmVcpu(Vcpu):
    """A vCPU fd with its ``kvm_run`` mapping. Created by ``KvmVm.create_vcpu()``.

    ``run`` is an instance attribute: a closure with the fd, the ioctl function
    and the decoder pre-bound (the exit round trip is the hot path). It has the
    same behaviour as ``KvmVcpu.run(vcpu)``; after close() it raises ClosedError.

    The run page is a Python ``mmap`` object, so that every view of it keeps it
    mapped: close() unmaps it at once when nothing else refers to it, and
    otherwise when the last view (an exit returned earlier, a structure made with
    ``from_buffer(run_page)``) goes away. Exits read after close() show the page
    as the vCPU left it; they never point into unmapped memory.
    """

    vm: KvmVm

    def __init__(self, vm: KvmVm, vcpu_id: int, fd: int, mmap_size: int) -> None:
        super().__init__(vm, vcpu_id)
        self.fd = fd
        self.mmap_size = mmap_size
        try:
            self._mm: Optional[mmap.mmap] = mmap.mmap(
                fd, mmap_size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as err:
            raise KvmIoctlError("mmap vcpu", err.errno or errno.EINVAL) from err
        # kvm_run and run_page are exports of the mapping (see the class docstring).
        self.kvm_run = uapi.kvm_run.from_buffer(self._mm)
        self.run_page = memoryview(self._mm)
        ring_pages = vm.check_extension(Cap.COALESCED_MMIO)
        ring_offset = uapi.KVM_COALESCED_MMIO_PAGE_OFFSET * PAGE_SIZE
        self._ring_offset: int | None = (
            ring_offset if ring_pages and mmap_size >= ring_offset + PAGE_SIZE else None
        )
        self._kick_lock = threading.Lock()
        self._kicked = False
        run, runner, invalidate = self._make_run()
        # Shadows the class's run(); mypy would call this a method assignment.
        setattr(self, "run", run)  # noqa: B010
        self._runner: Callable[[], int] = runner
        self._invalidate: Callable[[], None] = invalidate
        self._mark_open()

    # -- running --------------------------------------------------------------
    def _make_run(self) -> Tuple[Callable[[], Exit], Callable[[], int], Callable[[], None]]:
        """Build the KVM_RUN closure, an accessor for the thread inside it, and the
        function that disables it on close."""
        fd = self.fd
        call = _ioctl.ioctl_fast
        get_errno = _ioctl.get_errno
        get_ident = threading.get_ident
        krun = self.kvm_run
        # Lifetime: page and words are views of the run mapping, released on close.
        page = self.run_page
        words = page.cast("I")
        io_unpack = _IO.unpack_from
        mmio_unpack = _MMIO.unpack_from
        new = object.__new__
        decode = exits.decode_exit
        lock = self._kick_lock
        me = self
        runner = 0

        def slow_path() -> Exit:
            err = get_errno()
            if fd < 0:
                raise ClosedError("KvmVcpu is closed")
            if err == errno.EINTR:
                with lock:
                    if me._kicked:
                        me._kicked = False
                        krun.immediate_exit = 0
                return IntrExit(krun)
            raise KvmIoctlError("KVM_RUN", err, f"vCPU {me.vcpu_id}")

        # Decoded IO/MMIO exits by their fields. An exit is a read-only snapshot of
        # the fields plus a view of the run page, so two exits with equal fields are
        # interchangeable: a guest's repeated accesses reuse one object instead of
        # building a new one per exit (the hot path of every device loop).
        io_exits: Dict[Tuple[int, int, int, int, int], IoExit] = {}
        mmio_exits: Dict[Tuple[int, int, int], MmioExit] = {}

        def new_io_exit(key: Tuple[int, int, int, int, int]) -> IoExit:
            direction, size, port, count, off = key
            ex = new(IoExit)
            ex._run = krun
            ex.reason = _EXIT_IO
            ex.port = port
            ex.size = size
            ex.count = count
            ex.is_write = direction == _IO_OUT
            ex.data_offset = off
            ex.data = page[off : off + size * count]
            if len(io_exits) >= _EXIT_CACHE_LIMIT:
                io_exits.clear()
            io_exits[key] = ex
            return ex

        def new_mmio_exit(key: Tuple[int, int, int]) -> MmioExit:
            phys_addr, length, is_write = key
            mx = new(MmioExit)
            mx._run = krun
            mx.reason = _EXIT_MMIO
            mx.phys_addr = phys_addr
            mx.len = length
            mx.is_write = bool(is_write)
            mx.data = page[_MMIO_DATA : _MMIO_DATA + (length if length < 8 else 8)]
            if len(mmio_exits) >= _EXIT_CACHE_LIMIT:
                mmio_exits.clear()
            mmio_exits[key] = mx
            return mx

        def run() -> Exit:
            """Wraps KVM_RUN and decodes the exit. EINTR gives an IntrExit."""
            nonlocal runner
            runner = get_ident()
            ret = call(fd, _KVM_RUN, 0)
            runner = 0
            if ret < 0:
                return slow_path()
            reason = words[_EXIT_REASON_INDEX]
            if reason == _EXIT_IO:
                key = io_unpack(page, _U_OFFSET)
                return io_exits.get(key) or new_io_exit(key)
            if reason == _EXIT_MMIO:
                mkey = mmio_unpack(page, _U_OFFSET)
                return mmio_exits.get(mkey) or new_mmio_exit(mkey)
            return decode(krun, page)

        def current_runner() -> int:
            return runner

        def invalidate() -> None:
            nonlocal fd, krun, page, words
            fd = -1
            io_exits.clear()
            mmio_exits.clear()
            words.release()
            # The closure keeps the ctypes structure only as a typed placeholder now.
            krun = uapi.kvm_run()

        return run, current_runner, invalidate

    def run(self) -> Exit:
        """Wraps KVM_RUN and decodes the exit. EINTR gives an IntrExit."""
        self._check_open()
        fn: Callable[[], Exit] = self.__dict__["run"]
        return fn()

    def kick(self) -> None:
        """Make a run() in progress (on any thread) return IntrExit soon.

        Sets immediate_exit and signals the thread inside KVM_RUN, if any, with
        KICK_SIGNAL (see the module docstring). A no-op on a closed vCPU.
        """
        with self._kick_lock:
            if self._closed:
                return
            self._kicked = True
            self.kvm_run.immediate_exit = 1
        tid = self._runner()
        if tid and _kick_handler_installed:
            try:
                signal.pthread_kill(tid, KICK_SIGNAL)
            except ProcessLookupError:  # the thread has just ended
                pass

    @property
    def running_thread(self) -> int:
        """threading ident of the thread inside KVM_RUN on this vCPU (0: none)."""
        return self._runner()

    # -- helpers --------------------------------------------------------------------
    def _get(self, request: int, obj: Any) -> Any:
        self._check_open()
        _ioctl.ioctl(self.fd, request, obj)
        return obj

    def _set(self, request: int, obj: Any) -> None:
        self._check_open()
        _ioctl.ioctl(self.fd, request, obj)

    # -- register state -------------------------------------------------------------
    def get_regs(self) -> uapi.kvm_regs:
        """Wraps KVM_GET_REGS."""
        return self._get(uapi.KVM_GET_REGS, uapi.kvm_regs())  # type: ignore[no-any-return]

    def set_regs(self, regs: uapi.kvm_regs) -> None:
        """Wraps KVM_SET_REGS."""
        self._set(uapi.KVM_SET_REGS, regs)

    def get_sregs(self) -> uapi.kvm_sregs:
        """Wraps KVM_GET_SREGS."""
        return self._get(uapi.KVM_GET_SREGS, uapi.kvm_sregs())  # type: ignore[no-any-return]

    def set_sregs(self, sregs: uapi.kvm_sregs) -> None:
        """Wraps KVM_SET_SREGS (EINVAL for inconsistent CR0/CR4/EFER, old state kept)."""
        self._set(uapi.KVM_SET_SREGS, sregs)

    def get_fpu(self) -> uapi.kvm_fpu:
        """Wraps KVM_GET_FPU."""
        return self._get(uapi.KVM_GET_FPU, uapi.kvm_fpu())  # type: ignore[no-any-return]

    def set_fpu(self, fpu: uapi.kvm_fpu) -> None:
        """Wraps KVM_SET_FPU."""
        self._set(uapi.KVM_SET_FPU, fpu)

    def get_msrs(self, indices: Iterable[int]) -> Dict[int, int]:
        """Wraps KVM_GET_MSRS. KVM stops at the first MSR it does not know: the
        result holds the MSRs read before it."""
        self._check_open()
        idx = [int(i) for i in indices]
        buf = uapi.msrs_buffer(len(idx))
        for i, index in enumerate(idx):
            buf.entries[i].index = index
        n = _ioctl.ioctl(self.fd, uapi.KVM_GET_MSRS, buf)
        return {int(buf.entries[i].index): int(buf.entries[i].data) for i in range(n)}

    def set_msrs(self, values: Union[Mapping[int, int], Sequence[Tuple[int, int]]]) -> int:
        """Wraps KVM_SET_MSRS; returns how many were set (KVM stops at the first failure)."""
        self._check_open()
        items = list(values.items()) if isinstance(values, Mapping) else list(values)
        buf = uapi.msrs_buffer(len(items))
        for i, (index, value) in enumerate(items):
            buf.entries[i].index = int(index)
            buf.entries[i].data = int(value) & 0xFFFFFFFFFFFFFFFF
        return _ioctl.ioctl(self.fd, uapi.KVM_SET_MSRS, buf)

    def get_cpuid2(self) -> List[uapi.kvm_cpuid_entry2]:
        """Wraps KVM_GET_CPUID2 (grows the buffer on E2BIG)."""
        self._check_open()
        n = 64
        while True:
            buf = uapi.cpuid2_buffer(n)
            try:
                _ioctl.ioctl(self.fd, uapi.KVM_GET_CPUID2, buf)
            except KvmIoctlError as err:
                if err.errno == errno.E2BIG and n < 4096:
                    n *= 2
                    continue
                raise
            return [uapi.kvm_cpuid_entry2.from_buffer_copy(buf.entries[i])
                    for i in range(buf.nent)]

    def set_cpuid2(self, entries: Sequence[uapi.kvm_cpuid_entry2]) -> None:
        """Wraps KVM_SET_CPUID2."""
        self._check_open()
        buf = uapi.cpuid2_buffer(len(entries))
        for i, e in enumerate(entries):
            buf.entries[i] = e
        _ioctl.ioctl(self.fd, uapi.KVM_SET_CPUID2, buf)

    def get_xsave(self) -> uapi.kvm_xsave:
        """Wraps KVM_GET_XSAVE2 when the VM reports KVM_CAP_XSAVE2, else KVM_GET_XSAVE.

        The result is ``vm.xsave_size`` bytes long (a kvm_xsave when that is 4096).
        """
        self._check_open()
        size = self.vm.xsave_size
        buf = uapi.xsave2_buffer(size)
        request = uapi.KVM_GET_XSAVE2 if self.vm.check_extension(Cap.XSAVE2) else uapi.KVM_GET_XSAVE
        _ioctl.ioctl(self.fd, request, buf)
        return buf  # type: ignore[no-any-return]

    def set_xsave(self, xsave: uapi.kvm_xsave) -> None:
        """Wraps KVM_SET_XSAVE (the kernel reads ``vm.xsave_size`` bytes)."""
        self._check_open()
        size = self.vm.xsave_size
        buf: Any = xsave
        if ctypes.sizeof(xsave) < size:
            buf = uapi.xsave2_buffer(size)
            ctypes.memmove(ctypes.addressof(buf), ctypes.addressof(xsave), ctypes.sizeof(xsave))
        _ioctl.ioctl(self.fd, uapi.KVM_SET_XSAVE, buf)

    def get_xcrs(self) -> uapi.kvm_xcrs:
        """Wraps KVM_GET_XCRS."""
        return self._get(uapi.KVM_GET_XCRS, uapi.kvm_xcrs())  # type: ignore[no-any-return]

    def set_xcrs(self, xcrs: uapi.kvm_xcrs) -> None:
        """Wraps KVM_SET_XCRS."""
        self._set(uapi.KVM_SET_XCRS, xcrs)

    def get_vcpu_events(self) -> uapi.kvm_vcpu_events:
        """Wraps KVM_GET_VCPU_EVENTS."""
        return self._get(  # type: ignore[no-any-return]
            uapi.KVM_GET_VCPU_EVENTS, uapi.kvm_vcpu_events()
        )

    def set_vcpu_events(self, events: uapi.kvm_vcpu_events) -> None:
        """Wraps KVM_SET_VCPU_EVENTS."""
        self._set(uapi.KVM_SET_VCPU_EVENTS, events)

    def get_debugregs(self) -> uapi.kvm_debugregs:
        """Wraps KVM_GET_DEBUGREGS."""
        return self._get(uapi.KVM_GET_DEBUGREGS, uapi.kvm_debugregs())  # type: ignore[no-any-return]

    def set_debugregs(self, dregs: uapi.kvm_debugregs) -> None:
        """Wraps KVM_SET_DEBUGREGS."""
        self._set(uapi.KVM_SET_DEBUGREGS, dregs)

    def get_mp_state(self) -> int:
        """Wraps KVM_GET_MP_STATE (a KVM_MP_STATE_* value)."""
        state = self._get(uapi.KVM_GET_MP_STATE, uapi.kvm_mp_state())
        return int(state.mp_state)

    def set_mp_state(self, state: int) -> None:
        """Wraps KVM_SET_MP_STATE."""
        mp = uapi.kvm_mp_state()
        mp.mp_state = int(state)
        self._set(uapi.KVM_SET_MP_STATE, mp)

    def get_lapic(self) -> uapi.kvm_lapic_state:
        """Wraps KVM_GET_LAPIC (needs the in-kernel irqchip)."""
        return self._get(uapi.KVM_GET_LAPIC, uapi.kvm_lapic_state())  # type: ignore[no-any-return]

    def set_lapic(self, lapic: uapi.kvm_lapic_state) -> None:
        """Wraps KVM_SET_LAPIC."""
        self._set(uapi.KVM_SET_LAPIC, lapic)

    def _one_reg(self, reg_id: int) -> Tuple[uapi.kvm_one_reg, ctypes.c_uint64]:
        size = uapi.KVM_REG_SIZE(reg_id)
        if size > 8:
            raise ValueError(f"register {reg_id:#x} is {size} bytes; only up to 8 are supported")
        value = ctypes.c_uint64()
        reg = uapi.kvm_one_reg()
        reg.id = reg_id
        # Lifetime: ``value`` is returned with ``reg`` and outlives the ioctl.
        reg.addr = ctypes.addressof(value)
        return reg, value

    def get_one_reg(self, reg_id: int) -> int:
        """Wraps KVM_GET_ONE_REG for registers up to 64 bits."""
        self._check_open()
        reg, value = self._one_reg(reg_id)
        try:
            _ioctl.ioctl(self.fd, uapi.KVM_GET_ONE_REG, reg)
        except KvmIoctlError as err:
            raise KvmIoctlError(err.call, err.errno or 0, f"register id {reg_id:#x}") from err
        size = uapi.KVM_REG_SIZE(reg_id)
        return int(value.value) & ((1 << (8 * size)) - 1)

    def set_one_reg(self, reg_id: int, value: int) -> None:
        """Wraps KVM_SET_ONE_REG for registers up to 64 bits."""
        self._check_open()
        reg, buf = self._one_reg(reg_id)
        buf.value = int(value) & 0xFFFFFFFFFFFFFFFF
        try:
            _ioctl.ioctl(self.fd, uapi.KVM_SET_ONE_REG, reg)
        except KvmIoctlError as err:
            raise KvmIoctlError(err.call, err.errno or 0, f"register id {reg_id:#x}") from err

    def translate(self, linear_address: int) -> uapi.kvm_translation:
        """Wraps KVM_TRANSLATE."""
        tr = uapi.kvm_translation()
        tr.linear_address = linear_address
        return self._get(uapi.KVM_TRANSLATE, tr)  # type: ignore[no-any-return]

    def get_tsc_khz(self) -> int:
        """Wraps KVM_GET_TSC_KHZ."""
        self._check_open()
        return _ioctl.ioctl_int(self.fd, uapi.KVM_GET_TSC_KHZ)

    def set_tsc_khz(self, khz: int) -> None:
        """Wraps KVM_SET_TSC_KHZ."""
        self._check_open()
        _ioctl.ioctl_int(self.fd, uapi.KVM_SET_TSC_KHZ, khz)

    def enable_cap(self, cap: Union[Cap, int], *args: int, flags: int = 0) -> None:
        """Wraps KVM_ENABLE_CAP on the vCPU fd."""
        self._set(uapi.KVM_ENABLE_CAP, enable_cap_struct(cap, args, flags))

    # -- events -------------------------------------------------------------------
    def interrupt(self, irq: int) -> None:
        """Wraps KVM_INTERRUPT (no in-kernel irqchip; ENXIO with one)."""
        if not 0 <= irq < uapi.KVM_NR_INTERRUPTS:
            raise ValueError(f"irq must be 0..255, got {irq}")
        req = uapi.kvm_interrupt()
        req.irq = irq
        self._set(uapi.KVM_INTERRUPT, req)

    def nmi(self) -> None:
        """Wraps KVM_NMI."""
        self._check_open()
        _ioctl.ioctl(self.fd, uapi.KVM_NMI)

    def set_signal_mask(self, signals: Iterable[int] | None) -> None:
        """Wraps KVM_SET_SIGNAL_MASK: the signals *blocked* while inside KVM_RUN.

        None removes the mask (the thread's own mask applies). KICK_SIGNAL is
        never blocked, so that kick() keeps working.
        """
        self._check_open()
        if signals is None:
            _ioctl.ioctl(self.fd, uapi.KVM_SET_SIGNAL_MASK)
            return
        wanted = {int(s) for s in signals} - {int(KICK_SIGNAL)}
        buf = uapi.signal_mask_buffer(_ioctl.kernel_sigset(wanted))
        _ioctl.ioctl(self.fd, uapi.KVM_SET_SIGNAL_MASK, buf)

    def set_guest_debug(self, control: int, debugreg: Sequence[int] | None = None) -> None:
        """Wraps KVM_SET_GUEST_DEBUG (KVM_GUESTDBG_* flags, up to 8 debug registers)."""
        dbg = uapi.kvm_guest_debug()
        dbg.control = int(control)
        if debugreg is not None:
            if len(debugreg) > 8:
                raise ValueError(f"at most 8 debug registers, got {len(debugreg)}")
            for i, v in enumerate(debugreg):
                dbg.arch.debugreg[i] = int(v)
        self._set(uapi.KVM_SET_GUEST_DEBUG, dbg)

    # -- coalesced MMIO ---------------------------------------------------------------
    def _coalesced_ring(self) -> memoryview | None:
        """The coalesced ring page inside the vCPU mapping (page
        KVM_COALESCED_MMIO_PAGE_OFFSET) when the VM has KVM_CAP_COALESCED_MMIO."""
        self._check_open()
        if self._ring_offset is None:
            return None
        return self.run_page[self._ring_offset : self._ring_offset + PAGE_SIZE]

    # -- lifetime -----------------------------------------------------------------------
    def _close_vcpu(self) -> None:
        """Drop this object's views of the run mapping, close the mapping (now, or when
        the last view held elsewhere goes: see the class docstring), close the fd."""
        with self._kick_lock:
            self._invalidate()
            setattr(self, "run", _closed_run)  # noqa: B010
            del self.kvm_run
            try:
                self.run_page.release()
            except BufferError:
                pass  # something made a buffer of run_page itself: it keeps the mapping
            mm, self._mm = self._mm, None
            if mm is not None:
                try:
                    mm.close()
                except BufferError:
                    pass  # views are alive: the mapping goes with the last of them
            os.close(self.fd)
            self.fd = -1


def _closed_run() -> Exit:
    raise ClosedError("KvmVcpu is closed")


__all__ = ["KvmVcpu", "KICK_SIGNAL", "install_kick_handler", "kick_handler_installed",
           "enable_cap_struct"]
