"""Memory images inside checkpoints: sparse, chunked, compressed, streamed.

A memory image file (``NAME.pmem.chunks``) holds only the non-zero pages of
a buffer (guest RAM), as records of at most :data:`RECORD_MAX` raw bytes, each
compressed on its own::

    header   "KVMCPUPM" | u32 container version (1) | u32 page size (4096)
             | u64 raw image size | u8 codec (0 none, 1 zlib, 2 zstd) | 7 zero bytes
    record   u64 offset | u32 raw length | u32 stored length | u32 flags | stored bytes
             ... (offsets ascending, page-aligned, never overlapping; flags bit 0:
             stored uncompressed because compressing did not help)
    trailer  u64 0xffffffffffffffff | u64 record count | u64 raw bytes stored

(all little-endian). Everything not covered by a record is zero. Writing and
reading go one record at a time, so memory use is bounded by the record size
whatever the RAM size; zero pages are found by comparing each page with zeros,
and a buffer that can say where its data is (``extents``, e.g. SEEK_DATA on
the memfd behind guest RAM) is scanned there only, so a 16 GiB guest that
touched 10 MiB is read 10 MiB deep.

The file's SHA-256 is in the checkpoint's manifest (``m5.cpt``), which
:class:`~kvmcpu.sim.checkpoint.CheckpointIn` checks when loading; the reader
here checks the structure again as it goes and hashes what it reads, so a file
changed after loading is noticed too.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zlib
from typing import IO, Any, Callable, Dict, Iterable, Iterator, Optional, Tuple

from kvmcpu.errors import CheckpointError

__all__ = [
    "CODECS",
    "IMAGE_SUFFIX",
    "PAGE",
    "RECORD_MAX",
    "Extents",
    "check_codec",
    "write_image",
    "read_image",
]

#: Zero pages are found, and skipped, at this granularity.
PAGE = 4096
#: The most raw bytes one record holds (and what a reader holds in memory at once).
RECORD_MAX = 1 << 20
#: The file suffix of a memory image.
IMAGE_SUFFIX = ".pmem.chunks"
#: Codec name -> the code stored in the header. ``zstd`` needs the optional
#: ``zstandard`` package (``pip install kvmcpu[zstd]``).
CODECS = {"none": 0, "zlib": 1, "zstd": 2}
#: zlib level: 1 compresses guest RAM nearly as well as 6 at twice the speed.
ZLIB_LEVEL = 1
ZSTD_LEVEL = 3

MAGIC = b"KVMCPUPM"
CONTAINER_VERSION = 1
_HEADER = struct.Struct("<8sIIQB7x")
_RECORD = struct.Struct("<QIII")
_TRAILER = struct.Struct("<QQQ")
_END = 0xFFFF_FFFF_FFFF_FFFF
_FLAG_RAW = 1
_ZERO_PAGE = bytes(PAGE)
_ZERO_RECORD = bytes(RECORD_MAX)

#: ``extents(start, length)`` yields ``(offset, length)`` ranges inside
#: ``[start, start + length)`` that may hold non-zero bytes; the rest is zero.
Extents = Callable[[int, int], Iterable[Tuple[int, int]]]


def _zstandard() -> Any:
    try:
        import zstandard
    except ImportError:
        return None
    return zstandard


def check_codec(name: str) -> None:
    """Raise unless ``name`` is a codec this installation can write.

    Raises:
        ValueError: an unknown codec name.
        CheckpointError: ``zstd`` without the ``zstandard`` package.
    """
    if name not in CODECS:
        raise ValueError(f"unknown checkpoint compression {name!r}; use one of "
                         f"{', '.join(CODECS)}")
    if name == "zstd" and _zstandard() is None:
        raise CheckpointError("checkpoint compression 'zstd' needs the optional 'zstandard' "
                              "package (pip install 'kvmcpu[zstd]'); use 'zlib' or 'none'")


def _compressor(name: str) -> Optional[Callable[[bytes], bytes]]:
    if name == "zlib":
        return lambda data: zlib.compress(data, ZLIB_LEVEL)
    if name == "zstd":
        comp = _zstandard().ZstdCompressor(level=ZSTD_LEVEL)
        return comp.compress  # type: ignore[no-any-return]
    return None


def _decompressor(name: str, where: str) -> Callable[[bytes, int], bytes]:
    if name == "zlib":
        def inflate(data: bytes, size: int) -> bytes:
            dec = zlib.decompressobj()
            out = dec.decompress(data, size + 1)  # bounded: a bomb stops at size + 1
            if not dec.eof:
                raise CheckpointError(f"{where}: a compressed record is truncated or too long")
            return out
        return inflate
    if name == "zstd":
        zstandard = _zstandard()
        if zstandard is None:
            raise CheckpointError(f"{where}: is compressed with zstd, which needs the optional "
                                  f"'zstandard' package (pip install 'kvmcpu[zstd]')")
        dec = zstandard.ZstdDecompressor()

        def unzstd(data: bytes, size: int) -> bytes:
            return dec.decompress(data, max_output_size=size)  # type: ignore[no-any-return]
        return unzstd
    return lambda data, size: data


class _HashingWriter:
    """Writes to a file while counting and hashing what was stored."""

    def __init__(self, f: IO[bytes]) -> None:
        self.f = f
        self.size = 0
        self.sha = hashlib.sha256()

    def write(self, data: Any) -> None:
        self.f.write(data)
        self.sha.update(data)
        self.size += len(data)


def _whole(start: int, length: int) -> Iterable[Tuple[int, int]]:
    return ((start, length),)


def _runs(view: memoryview, extents: Extents) -> Iterator[Tuple[int, bytes]]:
    """Runs of non-zero pages as ``(offset, bytes)``, each at most RECORD_MAX long."""
    size = view.nbytes
    block = bytearray(RECORD_MAX)
    done = 0  # extents may come unsorted, unaligned or overlapping: whole pages, once
    for ext_start, ext_len in sorted(extents(0, size)):
        start = max(done, ext_start - ext_start % PAGE)
        end = min(size, -(-(ext_start + ext_len) // PAGE) * PAGE)
        if start >= end:
            continue
        done = end
        for pos in range(start, end, RECORD_MAX):
            n = min(RECORD_MAX, end - pos)
            block[:n] = view[pos : pos + n]
            if block.startswith(_ZERO_RECORD if n == RECORD_MAX else bytes(n)):
                continue
            run = -1
            for i in range(0, n, PAGE):
                zero = block.startswith(_ZERO_PAGE if n - i >= PAGE else bytes(n - i), i)
                if zero and run >= 0:
                    yield pos + run, bytes(block[run:i])
                    run = -1
                elif not zero and run < 0:
                    run = i
            if run >= 0:
                yield pos + run, bytes(block[run:n])


def write_image(path: str | os.PathLike[str], buffer: memoryview, codec: str,
                extents: Optional[Extents] = None) -> Dict[str, str]:
    """Write ``buffer`` as a memory image file; returns its manifest entries.

    Args:
        path: the file to create.
        buffer: the bytes (a byte memoryview).
        codec: ``none``, ``zlib`` or ``zstd``.
        extents: where ``buffer`` may hold data (default: everywhere).
    """
    check_codec(codec)
    compress = _compressor(codec)
    records = data = 0
    with open(path, "wb") as f:
        out = _HashingWriter(f)
        out.write(_HEADER.pack(MAGIC, CONTAINER_VERSION, PAGE, buffer.nbytes, CODECS[codec]))
        for offset, raw in _runs(buffer, extents or _whole):
            stored, flags = raw, _FLAG_RAW
            if compress is not None:
                packed = compress(raw)
                if len(packed) < len(raw):
                    stored, flags = packed, 0
            out.write(_RECORD.pack(offset, len(raw), len(stored), flags))
            out.write(stored)
            records += 1
            data += len(raw)
        out.write(_TRAILER.pack(_END, records, data))
        f.flush()
        os.fsync(f.fileno())
    return {
        "file": os.path.basename(os.fspath(path)),
        "size": str(buffer.nbytes),
        "compression": codec,
        "data_size": str(data),
        "stored_size": str(out.size),
        "stored_sha256": out.sha.hexdigest(),
    }


def _read_exact(f: IO[bytes], n: int, sha: Any, where: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CheckpointError(f"{where}: the file ends inside a record (truncated?)")
    sha.update(data)
    return data


class _Zeroer:
    """Zeroes the gaps between records, in ascending order, only where the
    destination may hold data (its extents, asked once: asking the kernel per gap
    would rescan the empty rest of a large fresh RAM every time)."""

    def __init__(self, view: memoryview, extents: Optional[Extents]) -> None:
        self.view = view
        self.extents = iter((extents or _whole)(0, view.nbytes))
        self.current: Optional[Tuple[int, int]] = next(self.extents, None)

    def zero(self, start: int, end: int) -> None:
        """Zero ``[start, end)``; calls come in ascending, non-overlapping order."""
        while self.current is not None and start < end:
            ext_start, ext_len = self.current
            ext_end = ext_start + ext_len
            if ext_end <= start:
                self.current = next(self.extents, None)
                continue
            a, b = max(start, ext_start), min(end, ext_end)
            for pos in range(a, b, RECORD_MAX):
                n = min(RECORD_MAX, b - pos)
                self.view[pos : pos + n] = _ZERO_RECORD[:n]
            if ext_end > end:
                return
            start = ext_end
            self.current = next(self.extents, None)


def read_image(path: str | os.PathLike[str], info: Dict[str, str], view: memoryview,
               where: str, extents: Optional[Extents] = None) -> None:
    """Fill ``view`` (exactly the image's size) from a memory image file.

    Args:
        path: the image file.
        info: its manifest entries (``size``, ``compression``, ``stored_sha256``).
        view: the writable destination.
        where: names the image in error messages.
        extents: where ``view`` may already hold data (zeroed where the image has
            none); by default every gap is zeroed.

    Raises:
        CheckpointError: a malformed file, or one that changed since its digest was
            checked (the destination's contents are undefined then).
    """
    size = int(info["size"])
    decompress = _decompressor(info["compression"], where)
    sha = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            magic, version, page, raw_size, codec = _HEADER.unpack(
                _read_exact(f, _HEADER.size, sha, where))
            if magic != MAGIC or version != CONTAINER_VERSION or page != PAGE:
                raise CheckpointError(f"{where}: not a kvmcpu memory image "
                                      f"(container version {version}, page {page})")
            if raw_size != size or codec != CODECS.get(info["compression"]):
                raise CheckpointError(f"{where}: the file's header does not match the manifest")
            pos = records = data = 0
            zeroer = _Zeroer(view, extents)
            while True:
                offset, raw_len, stored_len, flags = _RECORD.unpack(
                    _read_exact(f, _RECORD.size, sha, where))
                if offset == _END:
                    break
                if (offset < pos or offset % PAGE or not 0 < raw_len <= RECORD_MAX
                        or offset + raw_len > size or flags & ~_FLAG_RAW
                        or stored_len > RECORD_MAX + 1024
                        or (flags & _FLAG_RAW and stored_len != raw_len)):
                    raise CheckpointError(f"{where}: record {records} at {offset:#x} "
                                          f"({raw_len} bytes) is malformed")
                stored = _read_exact(f, stored_len, sha, where)
                raw = stored if flags & _FLAG_RAW else decompress(stored, raw_len)
                if len(raw) != raw_len:
                    raise CheckpointError(f"{where}: record {records} at {offset:#x} holds "
                                          f"{len(raw)} bytes, its header says {raw_len}")
                zeroer.zero(pos, offset)
                view[offset : offset + raw_len] = raw
                pos = offset + raw_len
                records += 1
                data += raw_len
            f.seek(f.tell() - _RECORD.size)
            trailer = f.read(_TRAILER.size)
            if len(trailer) != _TRAILER.size:
                raise CheckpointError(f"{where}: the file ends inside its trailer (truncated?)")
            sha.update(trailer[_RECORD.size:])
            _end, count, total = _TRAILER.unpack(trailer)
            if count != records or total != data or f.read(1):
                raise CheckpointError(f"{where}: the trailer does not match the records")
            zeroer.zero(pos, size)
    except (OSError, zlib.error) as err:
        raise CheckpointError(f"{where}: cannot read: {err}") from err
    except Exception as err:  # zstandard.ZstdError and the like
        if isinstance(err, CheckpointError):
            raise
        raise CheckpointError(f"{where}: cannot decompress: {err}") from err
    if sha.hexdigest() != info["stored_sha256"]:
        raise CheckpointError(f"{where}: the file changed since the checkpoint was loaded "
                              f"(SHA-256 does not match)")
