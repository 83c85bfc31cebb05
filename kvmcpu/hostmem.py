"""Host memory that backs guest RAM.

A :class:`HostMemory` is an anonymous, page-aligned ``mmap`` owned by Python.
The System allocates it, registers it with ``Vm.set_user_memory_region`` and
devices, loaders and the mock vCPU all read and write the very same bytes, so
guest memory looks identical whichever backend runs the guest.

With ``noreserve`` (the default) the mapping is a memfd (shared memory with a
file descriptor): pages are reserved lazily, when first touched, and
:meth:`HostMemory.data_extents` can ask the kernel (``SEEK_DATA``/``SEEK_HOLE``)
which pages were ever touched, so a checkpoint of a large guest does not read
(and so allocate) the RAM it never used.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import warnings
import weakref
from typing import Any, Iterator, Optional, Tuple, Union, overload

from .errors import ClosedError

PAGE_SIZE = mmap.PAGESIZE
_MAP_NORESERVE = getattr(mmap, "MAP_NORESERVE", 0x4000)


class HostMemory:
    """An anonymous shared mapping of ``size`` bytes (a multiple of the page size).

    ``view`` is a writable memoryview of the whole mapping and ``address`` its
    host virtual address (what KVM's ``userspace_addr`` wants). Large sizes are
    mapped with MAP_NORESERVE so that untouched guest RAM costs nothing; they
    are a memfd (see the module docstring) where the host has ``memfd_create``.
    ``write`` and ``[]=`` tell the buffer's watchers what they wrote; a host
    writing through ``view`` (or the address) calls ``notify_written`` after.
    """

    _fd: Optional[int] = None

    def __init__(self, size: int, *, noreserve: bool = True) -> None:
        if not isinstance(size, int) or isinstance(size, bool):
            raise TypeError(f"size must be an int, got {type(size).__name__}")
        if size <= 0 or size % PAGE_SIZE:
            raise ValueError(f"size must be a positive multiple of {PAGE_SIZE}, got {size:#x}")
        self.size = size
        memfd = getattr(os, "memfd_create", None)
        if noreserve and memfd is not None:
            fd = memfd("kvmcpu-ram", getattr(os, "MFD_CLOEXEC", 1))
            try:
                os.ftruncate(fd, size)
                self._mm: Optional[mmap.mmap] = mmap.mmap(
                    fd, size, flags=mmap.MAP_SHARED | _MAP_NORESERVE)
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
        else:
            flags = mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | (_MAP_NORESERVE if noreserve else 0)
            self._mm = mmap.mmap(-1, size, flags=flags)
        # The ctypes anchor exports a pointer into the mmap; it lives until close(),
        # which drops it (and every view) before closing the mapping.
        self._anchor: Optional[ctypes.Array[ctypes.c_char]] = (ctypes.c_char * size).from_buffer(
            self._mm
        )
        self.address: int = ctypes.addressof(self._anchor)
        self.view: memoryview = memoryview(self._mm)
        self._watchers: "weakref.WeakSet[Any]" = weakref.WeakSet()

    @property
    def closed(self) -> bool:
        return self._mm is None

    def _check(self) -> mmap.mmap:
        if self._mm is None:
            raise ClosedError("HostMemory is closed")
        return self._mm

    def read(self, offset: int, length: int) -> bytes:
        """Copy ``length`` bytes starting at ``offset``."""
        self._check()
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(
                f"read [{offset:#x}, +{length:#x}) outside a {self.size:#x}-byte buffer"
            )
        return bytes(self.view[offset : offset + length])

    def write(self, offset: int, data: bytes) -> None:
        """Copy ``data`` in at ``offset``."""
        self._check()
        if offset < 0 or offset + len(data) > self.size:
            raise ValueError(
                f"write [{offset:#x}, +{len(data):#x}) outside a {self.size:#x}-byte buffer"
            )
        self.view[offset : offset + len(data)] = data
        if self._watchers:
            self.notify_written(offset, len(data))

    # -- host-side writes -----------------------------------------------------------
    def watch(self, watcher: Any) -> None:
        """Call ``watcher.host_written(self, offset, length)`` after each host-side write
        (``write``, ``[]=``, ``notify_written``); held weakly. A mock VM watches the
        buffers of its slots to drop code it translated from them."""
        self._watchers.add(watcher)

    def unwatch(self, watcher: Any) -> None:
        self._watchers.discard(watcher)

    def notify_written(self, offset: int, length: int) -> None:
        """Say that ``[offset, offset + length)`` was written through ``view`` (or any other
        alias of the buffer) rather than through ``write``/``[]=``, which say so
        themselves. A mock vCPU executes code written behind its back only after this."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range [{offset:#x}, +{length:#x}) outside a "
                             f"{self.size:#x}-byte buffer")
        for w in list(self._watchers):
            w.host_written(self, offset, length)

    def data_extents(self, start: int = 0, length: Optional[int] = None
                     ) -> Iterator[Tuple[int, int]]:
        """``(offset, length)`` ranges in ``[start, start + length)`` that may hold
        non-zero bytes: the pages ever touched (the rest reads as zero).

        Without a memfd (``noreserve=False``) the whole range is one extent.
        """
        self._check()
        end = self.size if length is None else min(self.size, start + length)
        fd = self._fd
        if fd is None:
            if start < end:
                yield start, end - start
            return
        pos = start
        while pos < end:
            try:
                data = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as err:
                if err.errno == errno.ENXIO:  # no data after pos
                    return
                raise
            if data >= end:
                return
            hole = min(end, os.lseek(fd, data, os.SEEK_HOLE))
            yield data, hole - data
            pos = hole

    def __len__(self) -> int:
        return self.size

    @overload
    def __getitem__(self, key: int) -> int: ...

    @overload
    def __getitem__(self, key: slice) -> bytes: ...

    def __getitem__(self, key: Union[int, slice]) -> Union[int, bytes]:
        """Index like a ``bytearray``: ``mem[i]`` is the byte at ``i`` as an int
        (negative counts from the end), ``mem[a:b]`` a copy as bytes; an index
        out of range raises IndexError."""
        self._check()
        if isinstance(key, slice):
            return bytes(self.view[key])
        if not isinstance(key, int):
            raise TypeError(f"HostMemory indices must be integers or slices, "
                            f"not {type(key).__name__}")
        try:
            return int(self.view[key])
        except IndexError:
            raise IndexError(f"HostMemory index {key} out of range "
                             f"({self.size:#x} bytes)") from None

    @overload
    def __setitem__(self, key: int, value: int) -> None: ...

    @overload
    def __setitem__(self, key: slice, value: Union[bytes, bytearray, memoryview]) -> None: ...

    def __setitem__(self, key: Union[int, slice], value: Any) -> None:
        """Assign like a ``bytearray``: an int in 0..255 at an index, bytes of the
        same length to a slice (the buffer never changes size)."""
        self._check()
        if not isinstance(key, (int, slice)):
            raise TypeError(f"HostMemory indices must be integers or slices, "
                            f"not {type(key).__name__}")
        self.view[key] = value
        if self._watchers:
            if isinstance(key, slice):
                start, stop, step = key.indices(self.size)
                lo, hi = (start, stop) if step > 0 else (stop + 1, start + 1)
                if hi > lo:
                    self.notify_written(lo, hi - lo)
            else:
                self.notify_written(key % self.size, 1)

    def close(self) -> None:
        """Unmap. Idempotent. A view handed out earlier keeps the mapping until it goes."""
        if self._mm is None:
            return
        try:
            self.view.release()
        except BufferError:
            pass
        self._anchor = None
        mm, self._mm = self._mm, None
        try:
            mm.close()
        except BufferError:
            # Someone still holds an exported view; the mapping stays until it is freed.
            pass
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # the mapping keeps the memory while it exists

    def __enter__(self) -> "HostMemory":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_mm", None) is not None:
            warnings.warn(
                f"HostMemory of {self.size:#x} bytes was not closed", ResourceWarning, stacklevel=2
            )
            self.close()

    def __repr__(self) -> str:
        state = "closed" if self._mm is None else f"at {self.address:#x}"
        return f"<HostMemory {self.size:#x} bytes {state}>"
