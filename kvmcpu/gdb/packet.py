"""The GDB remote serial protocol's framing: packets, checksums, escapes, acks.

A packet on the wire is ``$payload#cc``: ``cc`` is the modulo-256 sum of the
payload bytes in two lower-case hex digits. Inside a payload, ``#``, ``$``,
``}`` and ``*`` are escaped as ``}`` followed by the byte XOR 0x20 (gdb does
this in binary ``X`` and ``vFile`` data; the other side must accept it
anywhere), and ``c*n`` is run-length encoding: ``c`` repeated ``ord(n) - 29``
more times. Until ``QStartNoAckMode`` each packet is acknowledged with ``+``
(``-`` asks for it again). Outside a packet a ``0x03`` byte is an interrupt
request (Ctrl-C).

:class:`PacketReader` is fed raw bytes and returns what they contain
(:class:`Packet`, :data:`INTERRUPT`, acks, :class:`BadPacket`), keeping partial
packets between calls; :func:`encode` frames a payload. Nothing here knows
sockets or targets, so the layer is tested against the protocol's rules alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Union

#: The interrupt request (Ctrl-C) gdb sends outside a packet.
INTERRUPT_BYTE = 0x03
ESCAPE = 0x7D
#: Bytes that must be escaped in a payload we send.
_MUST_ESCAPE = frozenset(b"#$}*")
#: Largest payload we accept (gdb never sends more than our PacketSize).
MAX_PACKET = 0x4000


@dataclass(frozen=True)
class Packet:
    """A well-formed packet; ``payload`` is unescaped and run-length decoded."""

    payload: bytes


@dataclass(frozen=True)
class BadPacket:
    """A packet that cannot be used: a wrong checksum, bad hex digits, too long."""

    reason: str


@dataclass(frozen=True)
class Ack:
    """``+`` (``ok``) or ``-`` (``ok=False``: send the last packet again)."""

    ok: bool


class _Interrupt:
    def __repr__(self) -> str:
        return "INTERRUPT"


#: An interrupt request (0x03 outside a packet).
INTERRUPT = _Interrupt()

Item = Union[Packet, BadPacket, Ack, _Interrupt]


def checksum(data: bytes) -> int:
    """The modulo-256 sum of ``data``."""
    return sum(data) & 0xFF


def escape(payload: bytes) -> bytes:
    """Escape ``#``, ``$``, ``}`` and ``*`` (``}`` then the byte XOR 0x20)."""
    if not any(b in _MUST_ESCAPE for b in payload):
        return payload
    out = bytearray()
    for b in payload:
        if b in _MUST_ESCAPE:
            out += bytes((ESCAPE, b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def encode(payload: Union[bytes, str]) -> bytes:
    """Frame ``payload`` as ``$escaped#cc`` (no run-length encoding: it is optional)."""
    data = escape(payload.encode("latin-1") if isinstance(payload, str) else payload)
    return b"$" + data + b"#" + b"%02x" % checksum(data)


def decode_body(body: bytes) -> bytes:
    """Undo run-length encoding and escapes of a packet body (checksum already checked).

    Raises:
        ValueError: a run-length marker with nothing to repeat or a bad count,
            or an escape at the end of the packet.
    """
    out = bytearray()
    i, n = 0, len(body)
    while i < n:
        b = body[i]
        if b == ESCAPE:
            if i + 1 >= n:
                raise ValueError("escape character at the end of the packet")
            out.append(body[i + 1] ^ 0x20)
            i += 2
        elif b == 0x2A:  # '*': repeat the previous byte
            if not out or i + 1 >= n:
                raise ValueError("run-length marker with nothing to repeat")
            count = body[i + 1] - 29
            if count < 3 or body[i + 1] in (0x23, 0x24):  # gdb never sends '#' or '$' counts
                raise ValueError(f"bad run-length count {body[i + 1]!r}")
            out += bytes((out[-1],)) * count
            i += 2
        else:
            out.append(b)
            i += 1
    return bytes(out)


class PacketReader:
    """Splits the byte stream from gdb into acks, interrupts and packets."""

    def __init__(self, max_packet: int = MAX_PACKET) -> None:
        self.max_packet = max_packet
        self._buf = bytearray()
        self._in_packet = False

    def feed(self, data: bytes) -> List[Item]:
        """Everything complete in ``data`` (and what earlier calls left)."""
        items: List[Item] = []
        buf = self._buf
        for b in data:
            if not self._in_packet:
                if b == 0x24:  # '$'
                    self._in_packet = True
                    buf.clear()
                elif b == 0x2B:
                    items.append(Ack(True))
                elif b == 0x2D:
                    items.append(Ack(False))
                elif b == INTERRUPT_BYTE:
                    items.append(INTERRUPT)
                # anything else between packets is line noise: ignored, as gdbserver does
                continue
            buf.append(b)
            if b == 0x24 and (len(buf) < 2 or buf[-2] != ESCAPE):
                # A '$' inside a packet starts a new one (the old one was cut short).
                buf.clear()
                items.append(BadPacket("packet cut short by '$'"))
                continue
            hash_at = len(buf) - 3
            if hash_at >= 0 and buf[hash_at] == 0x23 and (hash_at == 0 or
                                                          buf[hash_at - 1] != ESCAPE):
                self._in_packet = False
                items.append(self._finish(bytes(buf[:hash_at]), bytes(buf[hash_at + 1:])))
                buf.clear()
            elif len(buf) > self.max_packet + 3:
                self._in_packet = False
                buf.clear()
                items.append(BadPacket(f"packet longer than {self.max_packet} bytes"))
        return items

    @staticmethod
    def _finish(body: bytes, digits: bytes) -> Item:
        try:
            want = int(digits, 16)
        except ValueError:
            return BadPacket(f"bad checksum digits {digits!r}")
        if checksum(body) != want:
            return BadPacket(f"checksum {checksum(body):02x} != {want:02x}")
        try:
            return Packet(decode_body(body))
        except ValueError as err:
            return BadPacket(str(err))
