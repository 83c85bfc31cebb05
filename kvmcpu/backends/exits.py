"""Typed, decoded VM exits.

``Vcpu.run()`` returns one of these. Each is a thin object over the vCPU's
``kvm_run`` page: the scalar fields are copied out when the exit is decoded,
while the data a handler may have to complete (``IoExit.data``,
``MmioExit.data``, ``HypercallExit.ret``) are *views into the run page*. To
complete an IN or an MMIO read, write the value into ``exit.data`` and call
``run()`` again, exactly as with KVM.
"""

from __future__ import annotations

from typing import Callable, ClassVar, Dict, Tuple

from .. import uapi
from ..uapi import ExitReason

_MMIO_DATA_OFFSET = uapi.kvm_run.u.offset + uapi._kvm_run_mmio.data.offset


def _hex(v: int) -> str:
    return f"{v:#x}"


class Exit:
    """Base of every decoded exit. ``reason`` is the raw KVM_EXIT_* value."""

    __slots__ = ("reason", "_run")
    kind: ClassVar[str] = "exit"

    def __init__(self, run: uapi.kvm_run) -> None:
        self._run = run
        self.reason: int = run.exit_reason

    def fields(self) -> Dict[str, object]:
        """The decoded fields, for logs, traces and comparisons between backends."""
        return {}

    def __repr__(self) -> str:
        def show(k: str, v: object) -> str:
            if isinstance(v, int) and not isinstance(v, bool) and k in _HEX:
                return _hex(v)
            return repr(v)

        inner = ", ".join(f"{k}={show(k, v)}" for k, v in self.fields().items())
        return f"{type(self).__name__}({inner})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Exit):
            return NotImplemented
        return type(self) is type(other) and self.fields() == other.fields()

    __hash__ = None  # type: ignore[assignment]


_HEX = {"port", "phys_addr", "pc", "dr6", "dr7", "hardware_entry_failure_reason",
        "hardware_exit_reason", "nr"}


class IoExit(Exit):
    """KVM_EXIT_IO. ``data`` views ``size * count`` bytes of the run page at data_offset."""

    __slots__ = ("port", "size", "count", "is_write", "data_offset", "data")
    kind = "io"

    def __init__(self, run: uapi.kvm_run, page: memoryview) -> None:
        super().__init__(run)
        io = run.io
        self.port: int = io.port
        self.size: int = io.size
        self.count: int = io.count
        self.is_write: bool = io.direction == uapi.KVM_EXIT_IO_OUT
        off = io.data_offset
        self.data_offset: int = off
        self.data: memoryview = page[off : off + self.size * self.count]

    def fields(self) -> Dict[str, object]:
        return {"port": self.port, "size": self.size, "count": self.count,
                "is_write": self.is_write, "data": bytes(self.data)}


class MmioExit(Exit):
    """KVM_EXIT_MMIO. ``data`` views the first ``len`` bytes of run.mmio.data."""

    __slots__ = ("phys_addr", "len", "is_write", "data")
    kind = "mmio"

    def __init__(self, run: uapi.kvm_run, page: memoryview) -> None:
        super().__init__(run)
        m = run.mmio
        self.phys_addr: int = m.phys_addr
        self.len: int = m.len
        self.is_write: bool = bool(m.is_write)
        self.data: memoryview = page[_MMIO_DATA_OFFSET : _MMIO_DATA_OFFSET + min(self.len, 8)]

    def fields(self) -> Dict[str, object]:
        return {"phys_addr": self.phys_addr, "len": self.len, "is_write": self.is_write,
                "data": bytes(self.data) if self.is_write else None}


class HltExit(Exit):
    """KVM_EXIT_HLT: the guest executed HLT (no in-kernel irqchip)."""

    __slots__ = ()
    kind = "hlt"


class IrqWindowOpenExit(Exit):
    """KVM_EXIT_IRQ_WINDOW_OPEN: the guest can take an interrupt now."""

    __slots__ = ()
    kind = "irq_window_open"


class IntrExit(Exit):
    """KVM_RUN returned EINTR (a signal, immediate_exit, or the mock's budget ran out).

    ``exit_reason`` in the run page is whatever it was before; ``reason`` here is
    ExitReason.INTR.
    """

    __slots__ = ()
    kind = "intr"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        self.reason = ExitReason.INTR


class ShutdownExit(Exit):
    """KVM_EXIT_SHUTDOWN: the guest triple-faulted (or shut down)."""

    __slots__ = ()
    kind = "shutdown"


class FailEntryExit(Exit):
    """KVM_EXIT_FAIL_ENTRY with the hardware's reason."""

    __slots__ = ("hardware_entry_failure_reason", "cpu")
    kind = "fail_entry"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        self.hardware_entry_failure_reason: int = run.fail_entry.hardware_entry_failure_reason
        self.cpu: int = run.fail_entry.cpu

    def fields(self) -> Dict[str, object]:
        return {"hardware_entry_failure_reason": self.hardware_entry_failure_reason,
                "cpu": self.cpu}


class InternalErrorExit(Exit):
    """KVM_EXIT_INTERNAL_ERROR: suberror, data[ndata], and for EMULATION the insn bytes."""

    __slots__ = ("suberror", "ndata", "data", "insn_bytes")
    kind = "internal_error"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        internal = run.internal
        self.suberror: int = internal.suberror
        self.ndata: int = internal.ndata
        self.data: Tuple[int, ...] = tuple(internal.data[: min(internal.ndata, 16)])
        insn = b""
        ef = run.emulation_failure
        if (
            self.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION
            and self.ndata >= 3
            and ef.flags & uapi.KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES
        ):
            insn = bytes(ef.insn_bytes[: min(ef.insn_size, 15)])
        self.insn_bytes: bytes = insn

    def fields(self) -> Dict[str, object]:
        return {"suberror": self.suberror, "ndata": self.ndata, "data": self.data,
                "insn_bytes": self.insn_bytes}


class HypercallExit(Exit):
    """KVM_EXIT_HYPERCALL. Set ``ret`` (written into the run page) before the next run."""

    __slots__ = ("nr", "args", "longmode")
    kind = "hypercall"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        h = run.hypercall
        self.nr: int = h.nr
        self.args: Tuple[int, ...] = tuple(h.args)
        self.longmode: int = h.longmode

    @property
    def ret(self) -> int:
        return int(self._run.hypercall.ret)

    @ret.setter
    def ret(self, value: int) -> None:
        self._run.hypercall.ret = value & 0xFFFFFFFFFFFFFFFF

    def fields(self) -> Dict[str, object]:
        return {"nr": self.nr, "args": self.args, "longmode": self.longmode}


class SystemEventExit(Exit):
    """KVM_EXIT_SYSTEM_EVENT: ``type`` is a KVM_SYSTEM_EVENT_* value."""

    __slots__ = ("type", "ndata", "data")
    kind = "system_event"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        se = run.system_event
        self.type: int = se.type
        self.ndata: int = se.ndata
        self.data: Tuple[int, ...] = tuple(se.data[: min(se.ndata, 16)])

    def fields(self) -> Dict[str, object]:
        return {"type": self.type, "ndata": self.ndata, "data": self.data}


class DebugExit(Exit):
    """KVM_EXIT_DEBUG: single step or breakpoint (kvm_debug_exit_arch)."""

    __slots__ = ("exception", "pc", "dr6", "dr7")
    kind = "debug"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        a = run.debug.arch
        self.exception: int = a.exception
        self.pc: int = a.pc
        self.dr6: int = a.dr6
        self.dr7: int = a.dr7

    def fields(self) -> Dict[str, object]:
        return {"exception": self.exception, "pc": self.pc, "dr6": self.dr6, "dr7": self.dr7}


class ExceptionExit(Exit):
    """KVM_EXIT_EXCEPTION: exception vector and error code."""

    __slots__ = ("exception", "error_code")
    kind = "exception"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        self.exception: int = run.ex.exception
        self.error_code: int = run.ex.error_code

    def fields(self) -> Dict[str, object]:
        return {"exception": self.exception, "error_code": self.error_code}


class UnknownExit(Exit):
    """Any exit this package does not decode (including KVM_EXIT_UNKNOWN itself).

    ``reason`` is the raw exit_reason; ``hardware_exit_reason`` is meaningful
    only for KVM_EXIT_UNKNOWN.
    """

    __slots__ = ("hardware_exit_reason",)
    kind = "unknown"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        self.hardware_exit_reason: int = run.hw.hardware_exit_reason

    def fields(self) -> Dict[str, object]:
        return {"reason": self.reason, "hardware_exit_reason": self.hardware_exit_reason}


class MsrExit(Exit):
    """KVM_EXIT_X86_RDMSR / KVM_EXIT_X86_WRMSR: an MSR access the MSR filter hands to
    user space (KVM_CAP_X86_USER_SPACE_MSR). For a read set ``data``; set ``error``
    to 1 to make the guest take #GP. The next KVM_RUN completes the instruction."""

    __slots__ = ("index", "is_write", "msr_reason")
    kind = "msr"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        m = run.msr
        self.index: int = m.index
        self.is_write: bool = run.exit_reason == ExitReason.X86_WRMSR
        self.msr_reason: int = m.reason

    @property
    def data(self) -> int:
        return int(self._run.msr.data)

    @data.setter
    def data(self, value: int) -> None:
        self._run.msr.data = value & 0xFFFFFFFFFFFFFFFF

    @property
    def error(self) -> int:
        return int(self._run.msr.error)

    @error.setter
    def error(self, value: int) -> None:
        self._run.msr.error = 1 if value else 0

    def fields(self) -> Dict[str, object]:
        return {"index": self.index, "is_write": self.is_write, "data": self.data,
                "msr_reason": self.msr_reason}


class IoapicEoiExit(Exit):
    """KVM_EXIT_IOAPIC_EOI: with KVM_CAP_SPLIT_IRQCHIP, the in-kernel local APIC
    took an EOI of a level-triggered vector the user-space IOAPIC routes
    (``struct { __u8 vector; } eoi``)."""

    __slots__ = ("vector",)
    kind = "ioapic_eoi"

    def __init__(self, run: uapi.kvm_run) -> None:
        super().__init__(run)
        self.vector = int(run.eoi.vector)

    def fields(self) -> Dict[str, object]:
        return {"vector": self.vector}


_Decoder = Callable[[uapi.kvm_run, memoryview], Exit]

_DECODERS: Dict[int, _Decoder] = {
    ExitReason.IO: IoExit,
    ExitReason.MMIO: MmioExit,
    ExitReason.HLT: lambda run, page: HltExit(run),
    ExitReason.IRQ_WINDOW_OPEN: lambda run, page: IrqWindowOpenExit(run),
    ExitReason.INTR: lambda run, page: IntrExit(run),
    ExitReason.SHUTDOWN: lambda run, page: ShutdownExit(run),
    ExitReason.FAIL_ENTRY: lambda run, page: FailEntryExit(run),
    ExitReason.INTERNAL_ERROR: lambda run, page: InternalErrorExit(run),
    ExitReason.HYPERCALL: lambda run, page: HypercallExit(run),
    ExitReason.SYSTEM_EVENT: lambda run, page: SystemEventExit(run),
    ExitReason.DEBUG: lambda run, page: DebugExit(run),
    ExitReason.EXCEPTION: lambda run, page: ExceptionExit(run),
    ExitReason.IOAPIC_EOI: lambda run, page: IoapicEoiExit(run),
    ExitReason.X86_RDMSR: lambda run, page: MsrExit(run),
    ExitReason.X86_WRMSR: lambda run, page: MsrExit(run),
}


def _unknown(run: uapi.kvm_run, page: memoryview) -> Exit:
    return UnknownExit(run)


def decode_exit(run: uapi.kvm_run, page: memoryview) -> Exit:
    """Decode ``run.exit_reason`` into a typed exit over the run page ``page``."""
    return _DECODERS.get(run.exit_reason, _unknown)(run, page)


__all__ = [
    "Exit", "IoExit", "MmioExit", "HltExit", "IrqWindowOpenExit", "IntrExit", "ShutdownExit",
    "FailEntryExit", "InternalErrorExit", "HypercallExit", "SystemEventExit", "DebugExit",
    "ExceptionExit", "MsrExit", "IoapicEoiExit", "UnknownExit", "decode_exit",
]
