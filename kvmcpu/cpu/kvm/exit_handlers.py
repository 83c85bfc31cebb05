"""The exits a KVM CPU cannot service: they raise :class:`~kvmcpu.errors.VcpuRunError`.

A mixin of :class:`~kvmcpu.cpu.kvm.base.BaseKvmCPU` (gem5's handleKvmExitUnknown,
Exception, FailEntry, plus SHUTDOWN and INTERNAL_ERROR): every error carries the
decoded exit and a register dump, and each handler can be overridden.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from ...backends.exits import (
    ExceptionExit,
    Exit,
    FailEntryExit,
    InternalErrorExit,
    ShutdownExit,
    UnknownExit,
)
from ...errors import VcpuRunError
from ...uapi import ExitReason


class GuestTripleFault(VcpuRunError):
    """The guest triple-faulted (KVM_EXIT_SHUTDOWN) and nothing handled it."""


class FatalExitHandlers:
    """handleKvmExit* for the fatal exits (mixed into BaseKvmCPU after SimObject)."""

    if TYPE_CHECKING:
        def path(self) -> str: ...

        def dump(self) -> str: ...

    def _fatal(self, message: str, ex: Optional[Exit], cls: type = VcpuRunError) -> VcpuRunError:
        try:
            dump = self.dump()
        except Exception as err:  # noqa: BLE001 - the state may be unreadable
            dump = f"(register dump unavailable: {err})"
        err_obj: VcpuRunError = cls(f"{self.path()}: {message}", ex, dump)
        return err_obj

    def handleKvmExitShutdown(self, ex: ShutdownExit) -> int:
        """Triple fault."""
        raise self._fatal("guest triple fault (KVM_EXIT_SHUTDOWN)", ex, GuestTripleFault)

    def handleKvmExitFailEntry(self, ex: FailEntryExit) -> int:
        """KVM could not enter the guest."""
        raise self._fatal(
            "failed to enter the guest (KVM_EXIT_FAIL_ENTRY, hardware reason "
            f"{ex.hardware_entry_failure_reason:#x}, cpu {ex.cpu})", ex,
        )

    def handleKvmExitInternalError(self, ex: InternalErrorExit) -> int:
        """KVM's internal error (e.g. an instruction its emulator cannot run)."""
        insn = f", instruction bytes {ex.insn_bytes.hex(' ')}" if ex.insn_bytes else ""
        raise self._fatal(
            f"KVM internal error (suberror {ex.suberror}, data "
            f"{[hex(d) for d in ex.data]}{insn})", ex,
        )

    def handleKvmExitException(self, ex: ExceptionExit) -> int:
        """An exception KVM could not deliver."""
        raise self._fatal(
            f"unhandled guest exception {ex.exception} (error code {ex.error_code:#x})", ex
        )

    def handleKvmExitUnknown(self, ex: UnknownExit) -> int:
        """An exit the package does not know."""
        try:
            name = ExitReason(ex.reason).name
        except ValueError:
            name = "unknown"
        raise self._fatal(
            f"unexpected exit reason {ex.reason} ({name}), hardware reason "
            f"{ex.hardware_exit_reason:#x}", ex,
        )
