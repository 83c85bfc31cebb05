"""The exception tree of kvmcpu.

Every error the package raises on purpose derives from :class:`KvmCpuError`.
Errors from the kernel are :class:`KvmIoctlError`, which is also an
:class:`OSError` carrying ``errno`` and ``strerror``, so ``except OSError``
callers keep working. Bad arguments raise :class:`ValueError` or
:class:`TypeError` before any system call is made.
"""

from __future__ import annotations

import errno as _errno
import os
from typing import Any, Optional


class KvmCpuError(Exception):
    """Base class of every error raised by kvmcpu."""


class BackendUnavailableError(KvmCpuError):
    """The requested backend cannot be used here; ``reason`` says why."""

    def __init__(self, backend: str, reason: str) -> None:
        super().__init__(f"backend {backend!r} is unavailable: {reason}")
        self.backend = backend
        self.reason = reason


class KvmIoctlError(KvmCpuError, OSError):
    """A KVM ioctl (or another system call) failed.

    ``str(err)`` reads ``KVM_SET_SREGS: Invalid argument (errno 22)``, with any
    detail the caller added after it.
    """

    def __init__(self, call: str, errno: int, detail: str = "") -> None:
        strerror = os.strerror(errno)
        OSError.__init__(self, errno, strerror)
        self.call = call
        self.detail = detail

    def __str__(self) -> str:
        text = f"{self.call}: {self.strerror} (errno {self.errno}"
        name = _errno.errorcode.get(self.errno or 0)
        if name:
            text += f" {name}"
        text += ")"
        if self.detail:
            text += f": {self.detail}"
        return text

    def __reduce__(self) -> Any:
        return (type(self), (self.call, self.errno, self.detail))


class ClosedError(KvmCpuError, ValueError):
    """An operation was attempted on a closed backend, VM, vCPU or buffer."""


class VcpuRunError(KvmCpuError):
    """The vCPU stopped in a way the caller must handle.

    Raised for fail-entry, internal errors, unknown exits and triple faults
    that nobody handled. ``exit`` is the decoded exit, ``regs_dump`` a
    human-readable register dump taken when the error was raised (may be
    empty when the state could not be read).
    """

    def __init__(self, message: str, exit: Optional[object] = None, regs_dump: str = "") -> None:
        full = message if not regs_dump else f"{message}\n{regs_dump}"
        super().__init__(full)
        self.message = message
        self.exit = exit
        self.regs_dump = regs_dump


class GuestError(KvmCpuError):
    """A guest image or a system configuration is invalid."""


class ConfigError(GuestError, ValueError):
    """A parameter or configuration value is invalid (names the parameter)."""


class CheckpointError(KvmCpuError):
    """A checkpoint could not be written, or is invalid and was not restored."""


class SimulationError(KvmCpuError):
    """The simulation core was used against its rules (e.g. scheduling in the past)."""


class DebugUnsupportedError(SimulationError):
    """A debugging request the backend cannot serve exactly (more PC events at
    distinct addresses than the debug registers hold, instruction-count events
    without an exact instruction counter). kvmcpu refuses rather than approximates."""


class InstEventOvershootError(DebugUnsupportedError):
    """An instruction-count event could not land exactly: the instruction
    counter's overflow came later than the margin before the event (its skid),
    and the guest ran past the event's instruction. ``target`` and ``reached``
    are instruction counts, ``margin`` the margin that was asked for."""

    def __init__(self, message: str, *, target: int, reached: int, margin: int) -> None:
        super().__init__(message)
        self.target = target
        self.reached = reached
        self.margin = margin
