"""A small AML (ACPI Machine Language) encoder: just what the DSDT needs.

Each function returns the bytes of one AML construct (ACPI 6.x, section 20,
"ACPI Machine Language Specification"):

* :func:`name_string` -- a NameString: an optional root prefix ``\\`` (0x5C)
  and parent prefixes ``^`` (0x5E), then one NameSeg (4 characters, padded
  with ``_``), a DualNamePrefix (0x2E) and two segments, or a
  MultiNamePrefix (0x2F), a count and that many segments.
* :func:`pkg_length` -- a PkgLength: one byte for a total under 64 bytes,
  else a lead byte whose bits 7-6 count the 1-3 bytes that follow and whose
  bits 3-0 are the low nibble; the length counts its own bytes.
* :func:`integer` -- ZeroOp (0x00), OneOp (0x01), OnesOp (0xFF) or the
  smallest of BytePrefix (0x0A), WordPrefix (0x0B), DWordPrefix (0x0C),
  QWordPrefix (0x0E) with the little-endian value.
* :func:`string` -- StringPrefix (0x0D), ASCII, NUL.
* :func:`name` -- DefName: NameOp (0x08) NameString DataRefObject.
* :func:`scope`, :func:`device`, :func:`method` -- ScopeOp (0x10),
  DeviceOp (ExtOpPrefix 0x5B, 0x82) and MethodOp (0x14), each followed by a
  PkgLength, the NameString (and for a method its flags byte: argument
  count in bits 2-0, SerializeFlag in bit 3) and the term list.
* :func:`package` -- PackageOp (0x12) PkgLength NumElements (one byte)
  PackageElementList.
* :func:`buffer` -- BufferOp (0x11) PkgLength BufferSize (an integer) bytes.
* :func:`store` -- StoreOp (0x70) TermArg SuperName; :data:`ARG0` is Arg0Op
  (0x68).
* :func:`eisa_id` -- the 32-bit compressed EISA ID of ``EisaId("PNP0A03")``.
* Resource descriptors for ``_CRS`` (ACPI 6.4.2 and 6.4.3): :func:`io_port`
  (small item 0x47), :func:`word_io`/:func:`word_bus` (Word Address Space
  descriptor, large item 0x88), :func:`dword_memory` (DWord Address Space
  descriptor, large item 0x87) and :func:`resource_template`, which appends
  the End Tag (0x79, checksum 0) and wraps the whole in a Buffer.
"""

from __future__ import annotations

import struct
from typing import Sequence, Union

__all__ = [
    "ARG0",
    "buffer",
    "device",
    "dword_memory",
    "eisa_id",
    "integer",
    "io_port",
    "method",
    "name",
    "name_string",
    "package",
    "pkg_length",
    "resource_template",
    "scope",
    "store",
    "string",
    "word_bus",
    "word_io",
]

ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
NAME_OP = 0x08
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
EXT_OP_PREFIX = 0x5B
DEVICE_OP = 0x82
ROOT_CHAR = 0x5C
PARENT_PREFIX = 0x5E
STORE_OP = 0x70
#: Arg0Op.
ARG0 = b"\x68"

#: A package element: an int (encoded with :func:`integer`) or encoded bytes.
Element = Union[int, bytes]

_LEAD = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_REST = _LEAD | set("0123456789")


def _name_seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or seg[0] not in _LEAD or not set(seg) <= _REST:
        raise ValueError(f"invalid AML name segment {seg!r}: 1-4 characters of A-Z, 0-9 "
                         f"and _, not starting with a digit")
    return seg.ljust(4, "_").encode("ascii")


def name_string(path: str) -> bytes:
    """The NameString of ``path`` (``"\\_SB.PCI0"``, ``"_HID"``, ``"^FOO"``)."""
    out = bytearray()
    rest = path
    if rest.startswith("\\"):
        out.append(ROOT_CHAR)
        rest = rest[1:]
    while rest.startswith("^"):
        out.append(PARENT_PREFIX)
        rest = rest[1:]
    segs = rest.split(".") if rest else []
    if not segs:
        out.append(0x00)  # NullName
    elif len(segs) == 1:
        out += _name_seg(segs[0])
    elif len(segs) == 2:
        out.append(DUAL_NAME_PREFIX)
        out += _name_seg(segs[0]) + _name_seg(segs[1])
    else:
        if len(segs) > 255:
            raise ValueError(f"AML name {path!r} has more than 255 segments")
        out += bytes([MULTI_NAME_PREFIX, len(segs)])
        out += b"".join(_name_seg(s) for s in segs)
    return bytes(out)


def pkg_length(body_len: int) -> bytes:
    """The PkgLength for ``body_len`` bytes that follow it."""
    if body_len < 0:
        raise ValueError(f"negative AML package length {body_len}")
    if body_len + 1 < 0x40:
        return bytes([body_len + 1])
    for extra in (1, 2, 3):
        total = body_len + 1 + extra
        if total < 1 << (4 + 8 * extra):
            lead = (extra << 6) | (total & 0x0F)
            return bytes([lead]) + (total >> 4).to_bytes(extra, "little")
    raise ValueError(f"AML package of {body_len} bytes is too long (max 2**28)")


def integer(value: int) -> bytes:
    """The shortest ComputationalData for ``value`` (0 to 2**64 - 1)."""
    if not 0 <= value < 1 << 64:
        raise ValueError(f"AML integer {value} is outside [0, 2**64)")
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value == (1 << 64) - 1:
        return bytes([ONES_OP])
    for prefix, fmt, limit in ((BYTE_PREFIX, "<B", 1 << 8), (WORD_PREFIX, "<H", 1 << 16),
                               (DWORD_PREFIX, "<I", 1 << 32)):
        if value < limit:
            return bytes([prefix]) + struct.pack(fmt, value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    """A String constant (ASCII, no NUL inside)."""
    data = text.encode("ascii")
    if b"\0" in data:
        raise ValueError("an AML string cannot hold NUL")
    return bytes([STRING_PREFIX]) + data + b"\0"


def _element(e: Element) -> bytes:
    return integer(e) if isinstance(e, int) else e


def name(path: str, value: Element) -> bytes:
    """``Name (path, value)``."""
    return bytes([NAME_OP]) + name_string(path) + _element(value)


def _block(op: bytes, head: bytes, body: bytes) -> bytes:
    inner = head + body
    return op + pkg_length(len(inner)) + inner


def scope(path: str, *terms: bytes) -> bytes:
    """``Scope (path) { terms }``."""
    return _block(bytes([SCOPE_OP]), name_string(path), b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    """``Device (path) { terms }``."""
    return _block(bytes([EXT_OP_PREFIX, DEVICE_OP]), name_string(path), b"".join(terms))


def method(path: str, nargs: int, *terms: bytes, serialized: bool = False) -> bytes:
    """``Method (path, nargs, NotSerialized or Serialized) { terms }``."""
    if not 0 <= nargs <= 7:
        raise ValueError(f"an AML method takes 0-7 arguments, not {nargs}")
    flags = nargs | (0x08 if serialized else 0)
    return _block(bytes([METHOD_OP]), name_string(path) + bytes([flags]), b"".join(terms))


def package(elements: Sequence[Element]) -> bytes:
    """``Package () { elements }`` (up to 255 elements)."""
    if len(elements) > 255:
        raise ValueError(f"an AML Package holds up to 255 elements, not {len(elements)}")
    body = bytes([len(elements)]) + b"".join(_element(e) for e in elements)
    return bytes([PACKAGE_OP]) + pkg_length(len(body)) + body


def buffer(data: bytes) -> bytes:
    """``Buffer () { data }``."""
    body = integer(len(data)) + data
    return bytes([BUFFER_OP]) + pkg_length(len(body)) + body


def store(source: bytes, target: str) -> bytes:
    """``Store (source, target)``."""
    return bytes([STORE_OP]) + source + name_string(target)


def eisa_id(text: str) -> int:
    """The compressed EISA ID (``EisaId ("PNP0A03")`` is 0x030AD041)."""
    if len(text) != 7 or not text[:3].isalpha() or not text[:3].isupper():
        raise ValueError(f"invalid EISA ID {text!r}: three capital letters and four hex digits")
    try:
        product = int(text[3:], 16)
    except ValueError:
        raise ValueError(f"invalid EISA ID {text!r}: three capital letters and four hex "
                         f"digits") from None
    c = [ord(ch) - 0x40 for ch in text[:3]]
    vendor = (c[0] << 10) | (c[1] << 5) | c[2]
    # Stored as bytes: vendor (big-endian 16 bits), product (big-endian 16 bits).
    return int.from_bytes(struct.pack(">HH", vendor, product), "little")


# -- resource descriptors (the _CRS buffer) ---------------------------------------
#: General flags of an address space descriptor: MinFixed, MaxFixed, PosDecode,
#: ResourceProducer (bit 0 clear).
_ADDR_FIXED_PRODUCER = 0x0C
_TYPE_MEMORY, _TYPE_IO, _TYPE_BUS = 0, 1, 2


def io_port(base: int, length: int, align: int = 1) -> bytes:
    """``IO (Decode16, base, base, align, length)``: a fixed 16-bit IO range."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, align, length)


def _word_space(kind: int, type_flags: int, lo: int, hi: int) -> bytes:
    if not 0 <= lo <= hi <= 0xFFFF:
        raise ValueError(f"word address range [{lo:#x}, {hi:#x}] is not 16-bit")
    return struct.pack("<BHBBBHHHHH", 0x88, 13, kind, _ADDR_FIXED_PRODUCER, type_flags,
                       0, lo, hi, 0, hi - lo + 1)


def word_io(lo: int, hi: int) -> bytes:
    """``WordIO (ResourceProducer, MinFixed, MaxFixed, PosDecode, EntireRange, 0, lo, hi,
    0, hi - lo + 1)``."""
    return _word_space(_TYPE_IO, 0x03, lo, hi)


def word_bus(lo: int, hi: int) -> bytes:
    """``WordBusNumber (ResourceProducer, MinFixed, MaxFixed, PosDecode, 0, lo, hi, 0,
    hi - lo + 1)``."""
    return _word_space(_TYPE_BUS, 0x00, lo, hi)


def dword_memory(lo: int, hi: int) -> bytes:
    """``DWordMemory (ResourceProducer, PosDecode, MinFixed, MaxFixed, Cacheable,
    ReadWrite, 0, lo, hi, 0, hi - lo + 1)``."""
    if not 0 <= lo <= hi <= 0xFFFFFFFF:
        raise ValueError(f"dword memory range [{lo:#x}, {hi:#x}] is not 32-bit")
    return struct.pack("<BHBBBIIIII", 0x87, 23, _TYPE_MEMORY, _ADDR_FIXED_PRODUCER, 0x03,
                       0, lo, hi, 0, hi - lo + 1)


def resource_template(*descriptors: bytes) -> bytes:
    """``ResourceTemplate () { descriptors }``: a Buffer ending in the End Tag."""
    return buffer(b"".join(descriptors) + b"\x79\x00")
