"""The one place kvmcpu calls libc.

``ioctl`` on the KVM file descriptors, ``mmap``/``munmap`` of the vCPU run
page, and the POSIX timer and perf calls the run timers need. Every failure
becomes a :class:`~kvmcpu.errors.KvmIoctlError` that names the call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from typing import Any, Optional

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

_mmap = libc.mmap
_mmap.argtypes = (
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
)
_mmap.restype = ctypes.c_void_p

_munmap = libc.munmap
_munmap.argtypes = (ctypes.c_void_p, ctypes.c_size_t)
_munmap.restype = ctypes.c_int

MAP_FAILED = ctypes.c_void_p(-1).value
PROT_READ = 0x1
PROT_WRITE = 0x2
MAP_SHARED = 0x01


def ioctl_name(request: int) -> str:
    """The C name of a KVM ioctl number, or its hex value."""
    return uapi.IOCTL_NAMES.get(request, f"ioctl {request:#x}")


def ioctl(fd: int, request: int, arg: Any = None, *, name: Optional[str] = None) -> int:
    """Call ioctl(2) with a ctypes structure (passed by reference) or no argument.

    Returns the non-negative result. Raises KvmIoctlError naming the ioctl.
    """
    ptr = None if arg is None else ctypes.byref(arg)
    ret: int = _ioctl(fd, request, ptr)
    if ret < 0:
        err = ctypes.get_errno()
        raise KvmIoctlError(name or ioctl_name(request), err)
    return ret


def ioctl_int(fd: int, request: int, value: int = 0, *, name: Optional[str] = None) -> int:
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


def mmap_fd(fd: int, length: int, offset: int = 0, *, name: str = "mmap") -> int:
    """mmap(2) a shared read-write mapping of ``fd``; returns the address."""
    addr = _mmap(None, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, offset)
    if addr is None or addr == MAP_FAILED:
        raise KvmIoctlError(name, ctypes.get_errno())
    return int(addr)


def munmap(addr: int, length: int) -> None:
    """munmap(2). Raises KvmIoctlError on failure."""
    if _munmap(addr, length) < 0:
        raise KvmIoctlError("munmap", ctypes.get_errno())


def open_dev(path: str, flags: int = os.O_RDWR | os.O_CLOEXEC) -> int:
    """Open a device node close-on-exec; errors become KvmIoctlError naming the path."""
    try:
        return os.open(path, flags)
    except OSError as err:
        raise KvmIoctlError(f"open {path}", err.errno or 0) from err
