"""The one place kvmcpu calls libc.

``ioctl`` on the KVM file descriptors, and the POSIX timer and perf calls the
run timers need (the vCPU run page is a Python ``mmap``). Every failure
becomes a :class:`~kvmcpu.errors.KvmIoctlError` that names the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from typing import Any, Iterable, Set

from . import uapi
from .errors import KvmIoctlError

# The C library of this process; use_errno so that ctypes.get_errno() is exact.
libc = ctypes.CDLL(None, use_errno=True)

_ioctl = libc.ioctl
_ioctl.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p)
_ioctl.restype = ctypes.c_int

# Same symbol, second handle, with an integer third argument (KVM_CHECK_EXTENSION,
# KVM_CREATE_VCPU, KVM_SET_TSS_ADDR ... take a plain value, not a pointer).
_ioctl_int = libc["ioctl"]
_ioctl_int.argtypes = (ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong)
_ioctl_int.restype = ctypes.c_int


def ioctl_name(request: int) -> str:
    """The C name of a KVM ioctl number, or its hex value."""
    return uapi.IOCTL_NAMES.get(request, f"ioctl {request:#x}")


def ioctl(fd: int, request: int, arg: Any = None, *, name: str | None = None) -> int:
    """Call ioctl(2) with a ctypes structure (passed by reference) or no argument.

    Returns the non-negative result. Raises KvmIoctlError naming the ioctl.
    """
    ptr = None if arg is None else ctypes.byref(arg)
    ret: int = _ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmIoctlError(name or ioctl_name(request), err)
    return ret


def ioctl_int(fd: int, request: int, value: int = 0, *, name: str | None = None) -> int:
    """Call ioctl(2) with an integer argument. Raises KvmIoctlError naming the ioctl."""
    ret: int = _ioctl_int(fd, request, value)
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmIoctlError(name or ioctl_name(request), err)
    return ret


def ioctl_raw(fd: int, request: int, value: int = 0) -> int:
    """ioctl(2) returning ``-errno`` instead of raising (hot paths decide themselves)."""
    ret: int = _ioctl_int(fd, request, value)
    if ret < 0:
        return -ctypes.get_errno()
    return ret


def open_dev(path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
    """Open a device node close-on-exec; errors become KvmIoctlError naming the path."""
    try:
        return os.open(path, flags)
    except OSError as err:
        raise KvmIoctlError(f"open {path}", err.errno or 0) from err


# ---------------------------------------------------------------------------
# The hot path: a second ``ioctl`` handle without argtypes (ctypes converts the
# three Python ints itself, which is cheaper than argtypes converters) for
# callers that check the result themselves, as KvmVcpu.run() does.
# ---------------------------------------------------------------------------
ioctl_fast = libc["ioctl"]
ioctl_fast.restype = ctypes.c_int

#: ctypes' copy of errno after the last foreign call of this thread.
get_errno = ctypes.get_errno


# ---------------------------------------------------------------------------
# Signal sets as the kernel sees them (KVM_SET_SIGNAL_MASK)
# ---------------------------------------------------------------------------
#: Bytes of the kernel's sigset_t on x86_64 (64 signals), what KVM_SET_SIGNAL_MASK wants.
KERNEL_SIGSET_SIZE = 8


def kernel_sigset(signals: Iterable[int]) -> bytes:
    """The kernel's 8-byte sigset_t with bit ``signo - 1`` set for each signal."""
    mask = 0
    for sig in signals:
        signo = int(sig)
        if not 1 <= signo <= 64:
            raise ValueError(f"signal number must be 1..64, got {signo}")
        mask |= 1 << (signo - 1)
    return mask.to_bytes(KERNEL_SIGSET_SIZE, "little")


def sigset_signals(sigset: bytes) -> Set[int]:
    """The signal numbers in a kernel sigset (inverse of kernel_sigset)."""
    mask = int.from_bytes(sigset, "little")
    return {bit + 1 for bit in range(len(sigset) * 8) if mask >> bit & 1}


# ---------------------------------------------------------------------------
# POSIX timers delivering a signal to one thread (the KVM run timer)
# ---------------------------------------------------------------------------
SYS_gettid = 186  # x86_64
SYS_perf_event_open = 298  # x86_64

CLOCK_REALTIME = 0
CLOCK_MONOTONIC = 1
CLOCK_PROCESS_CPUTIME_ID = 2
CLOCK_THREAD_CPUTIME_ID = 3

SIGEV_SIGNAL = 0
SIGEV_NONE = 1
SIGEV_THREAD = 2
SIGEV_THREAD_ID = 4

TIMER_ABSTIME = 1


class sigval(ctypes.Union):  # <bits/types/sigval_t.h>
    _fields_ = [("sival_int", ctypes.c_int), ("sival_ptr", ctypes.c_void_p)]


class _sigev_un(ctypes.Union):
    # glibc pads the union so that struct sigevent is 64 bytes; _tid is the
    # kernel's sigev_notify_thread_id.
    _fields_ = [("_tid", ctypes.c_int), ("_pad", ctypes.c_int * 12)]


class sigevent(ctypes.Structure):  # <bits/types/sigevent_t.h>, x86_64
    _anonymous_ = ("_sigev_un",)
    _fields_ = [
        ("sigev_value", sigval),
        ("sigev_signo", ctypes.c_int),
        ("sigev_notify", ctypes.c_int),
        ("_sigev_un", _sigev_un),
    ]


class timespec(ctypes.Structure):  # <time.h>
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class itimerspec(ctypes.Structure):  # <time.h>
    _fields_ = [("it_interval", timespec), ("it_value", timespec)]


if not (ctypes.sizeof(sigevent) == 64 and sigevent.sigev_signo.offset == 8
        and sigevent._tid.offset == 16 and ctypes.sizeof(itimerspec) == 32):
    raise ImportError("kvmcpu._ioctl: struct sigevent/itimerspec layout differs from x86_64 glibc")

_syscall = libc.syscall
_syscall.restype = ctypes.c_long

_timer_create = libc.timer_create
_timer_create.argtypes = (ctypes.c_int, ctypes.POINTER(sigevent), ctypes.POINTER(ctypes.c_void_p))
_timer_create.restype = ctypes.c_int

_timer_settime = libc.timer_settime
_timer_settime.argtypes = (
    ctypes.c_void_p, ctypes.c_int, ctypes.POINTER(itimerspec), ctypes.POINTER(itimerspec),
)
_timer_settime.restype = ctypes.c_int

_timer_gettime = libc.timer_gettime
_timer_gettime.argtypes = (ctypes.c_void_p, ctypes.POINTER(itimerspec))
_timer_gettime.restype = ctypes.c_int

_timer_delete = libc.timer_delete
_timer_delete.argtypes = (ctypes.c_void_p,)
_timer_delete.restype = ctypes.c_int


def gettid() -> int:
    """The kernel thread id of the calling thread (what SIGEV_THREAD_ID wants)."""
    get_native_id = getattr(threading, "get_native_id", None)
    if get_native_id is not None:
        return int(get_native_id())
    return int(_syscall(SYS_gettid))  # pragma: no cover - Python < 3.8


def timer_create(signo: int, *, clock: int = CLOCK_MONOTONIC, tid: int | None = None) -> int:
    """timer_create(2) with SIGEV_THREAD_ID: the timer sends ``signo`` to thread ``tid``
    (default: the calling thread). Returns the timer id (an opaque handle)."""
    sev = sigevent()
    sev.sigev_notify = SIGEV_THREAD_ID
    sev.sigev_signo = signo
    sev._tid = gettid() if tid is None else tid
    timer = ctypes.c_void_p()
    if _timer_create(clock, ctypes.byref(sev), ctypes.byref(timer)) < 0:
        raise KvmIoctlError("timer_create", ctypes.get_errno())
    return int(timer.value or 0)


def _ns_to_timespec(ts: timespec, ns: int) -> None:
    ts.tv_sec, ts.tv_nsec = divmod(int(ns), 1_000_000_000)


def timer_settime(timer: int, value_ns: int, interval_ns: int = 0, *, flags: int = 0) -> int:
    """timer_settime(2): arm ``timer`` to fire in ``value_ns`` (0 disarms), then every
    ``interval_ns``. Returns the nanoseconds that were left on the old setting."""
    new = itimerspec()
    old = itimerspec()
    _ns_to_timespec(new.it_value, value_ns)
    _ns_to_timespec(new.it_interval, interval_ns)
    if _timer_settime(timer, flags, ctypes.byref(new), ctypes.byref(old)) < 0:
        raise KvmIoctlError("timer_settime", ctypes.get_errno())
    return int(old.it_value.tv_sec) * 1_000_000_000 + int(old.it_value.tv_nsec)


def timer_gettime(timer: int) -> int:
    """timer_gettime(2): nanoseconds until the timer fires next (0: disarmed)."""
    cur = itimerspec()
    if _timer_gettime(timer, ctypes.byref(cur)) < 0:
        raise KvmIoctlError("timer_gettime", ctypes.get_errno())
    return int(cur.it_value.tv_sec) * 1_000_000_000 + int(cur.it_value.tv_nsec)


def timer_delete(timer: int) -> None:
    """timer_delete(2)."""
    if _timer_delete(timer) < 0:
        raise KvmIoctlError("timer_delete", ctypes.get_errno())


# ---------------------------------------------------------------------------
# perf_event_open(2): hardware counters where the host has them
# ---------------------------------------------------------------------------
PERF_TYPE_HARDWARE = 0
PERF_TYPE_SOFTWARE = 1
PERF_COUNT_HW_CPU_CYCLES = 0
PERF_COUNT_HW_INSTRUCTIONS = 1
PERF_COUNT_SW_CPU_CLOCK = 0
PERF_COUNT_SW_TASK_CLOCK = 1
PERF_FLAG_FD_CLOEXEC = 1 << 3

# Bits of the perf_event_attr flags word (bit 0 is ``disabled``).
PERF_ATTR_DISABLED = 1 << 0
PERF_ATTR_INHERIT = 1 << 1
PERF_ATTR_PINNED = 1 << 2
PERF_ATTR_EXCLUSIVE = 1 << 3
PERF_ATTR_EXCLUDE_USER = 1 << 4
PERF_ATTR_EXCLUDE_KERNEL = 1 << 5
PERF_ATTR_EXCLUDE_HV = 1 << 6
PERF_ATTR_EXCLUDE_IDLE = 1 << 7
PERF_ATTR_EXCLUDE_HOST = 1 << 19
PERF_ATTR_EXCLUDE_GUEST = 1 << 20

PERF_ATTR_SIZE_VER7 = 128


class perf_event_attr(ctypes.Structure):  # <linux/perf_event.h> (PERF_ATTR_SIZE_VER7)
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("size", ctypes.c_uint32),
        ("config", ctypes.c_uint64),
        ("sample_period", ctypes.c_uint64),  # union with sample_freq
        ("sample_type", ctypes.c_uint64),
        ("read_format", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),  # the bitfield word: disabled, inherit, ... exclude_host
        ("wakeup_events", ctypes.c_uint32),  # union with wakeup_watermark
        ("bp_type", ctypes.c_uint32),
        ("config1", ctypes.c_uint64),
        ("config2", ctypes.c_uint64),
        ("branch_sample_type", ctypes.c_uint64),
        ("sample_regs_user", ctypes.c_uint64),
        ("sample_stack_user", ctypes.c_uint32),
        ("clockid", ctypes.c_int32),
        ("sample_regs_intr", ctypes.c_uint64),
        ("aux_watermark", ctypes.c_uint32),
        ("sample_max_stack", ctypes.c_uint16),
        ("reserved_2", ctypes.c_uint16),
        ("aux_sample_size", ctypes.c_uint32),
        ("reserved_3", ctypes.c_uint32),
        ("sig_data", ctypes.c_uint64),
    ]


if ctypes.sizeof(perf_event_attr) != PERF_ATTR_SIZE_VER7:
    raise ImportError("kvmcpu._ioctl: struct perf_event_attr is not PERF_ATTR_SIZE_VER7 bytes")


def perf_event_open(attr: perf_event_attr, pid: int = 0, cpu: int = -1, group_fd: int = -1,
                    flags: int = PERF_FLAG_FD_CLOEXEC) -> int:
    """perf_event_open(2) through syscall(2); returns the event fd.

    ``attr.size`` is filled in when zero. Raises KvmIoctlError("perf_event_open")
    (ENOENT, ENODEV or EOPNOTSUPP mean the event does not exist on this host).
    """
    if not attr.size:
        attr.size = ctypes.sizeof(perf_event_attr)
    fd = _syscall(
        ctypes.c_long(SYS_perf_event_open), ctypes.byref(attr), ctypes.c_int(pid),
        ctypes.c_int(cpu), ctypes.c_int(group_fd), ctypes.c_ulong(flags),
    )
    if fd < 0:
        raise KvmIoctlError("perf_event_open", ctypes.get_errno())
    return int(fd)
