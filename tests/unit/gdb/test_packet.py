"""The GDB remote protocol's framing (kvmcpu.gdb.packet) against the protocol's
rules and against traffic recorded from gdb 13 (``set remotelogfile``) talking to
the stub."""

from __future__ import annotations

import pytest

from kvmcpu.gdb.packet import (
    INTERRUPT,
    Ack,
    BadPacket,
    Packet,
    PacketReader,
    checksum,
    decode_body,
    encode,
    escape,
)

#: What gdb sent, byte for byte (the log writes byte 0x03 as \x03).
RECORDED = [
    (b"+$qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;fork-events+;vfork-events+;"
     b"exec-events+;vContSupported+;QThreadEvents+;no-resumed+;memory-tagging+;"
     b"xmlRegisters=i386#77",
     [Ack(True), Packet(b"qSupported:multiprocess+;swbreak+;hwbreak+;qRelocInsn+;"
                        b"fork-events+;vfork-events+;exec-events+;vContSupported+;"
                        b"QThreadEvents+;no-resumed+;memory-tagging+;xmlRegisters=i386")]),
    (b"+$vMustReplyEmpty#3a", [Ack(True), Packet(b"vMustReplyEmpty")]),
    (b"$qXfer:features:read:target.xml:0,1000#0c",
     [Packet(b"qXfer:features:read:target.xml:0,1000")]),
    (b"$Z0,100032,1#39", [Packet(b"Z0,100032,1")]),
    (b"$vCont;s:1#23", [Packet(b"vCont;s:1")]),
    # set var *(char *)&counter = 0x23: a binary write of '#', escaped as } 0x03
    (b"$X100040,1:}\x03#94", [Packet(b"X100040,1:#")]),
    (b"$X100040,0:#13", [Packet(b"X100040,0:")]),
    (b"$D#44", [Packet(b"D")]),
]


@pytest.mark.parametrize("wire, items", RECORDED)
def test_recorded_gdb_packets(wire: bytes, items: list) -> None:
    assert PacketReader().feed(wire) == items


def test_replies_the_stub_sent_are_framed_as_recorded() -> None:
    assert encode("OK") == b"$OK#9a"
    assert encode("") == b"$#00"
    assert encode("PacketSize=4000;qXfer:features:read+;QStartNoAckMode+;swbreak+;"
                  "hwbreak+;vContSupported+") == (
        b"$PacketSize=4000;qXfer:features:read+;QStartNoAckMode+;swbreak+;hwbreak+;"
        b"vContSupported+#ba")


def test_checksum_is_the_byte_sum_modulo_256() -> None:
    assert checksum(b"") == 0
    assert checksum(b"g") == 0x67
    assert checksum(b"\xff\x02") == 1


def test_escaping_the_four_special_bytes() -> None:
    assert escape(b"a#b$c}d*e") == b"a}\x03b}\x04c}]d}\x0ae"
    assert escape(b"plain") == b"plain"
    for payload in (b"#", b"$$", b"}}*", bytes(range(256))):
        framed = encode(payload)
        assert PacketReader().feed(framed) == [Packet(payload)]


def test_run_length_encoding_gdb_may_send() -> None:
    # "0* " is '0' and 3 more (' ' is 32, 32 - 29 = 3)
    assert decode_body(b"0* ") == b"0000"
    assert decode_body(b"ab*\"c") == b"a" + b"b" * 6 + b"c"
    body = b"1f* 2"
    framed = b"$" + body + b"#%02x" % checksum(body)
    assert PacketReader().feed(framed) == [Packet(b"1ffff2")]
    for bad in (b"*  ", b"a*", b"a*#", b"a*$", b"a}"):
        with pytest.raises(ValueError):
            decode_body(bad)


def test_bad_checksums_and_malformed_frames_are_reported_not_raised() -> None:
    r = PacketReader()
    assert r.feed(b"$g#68") == [BadPacket("checksum 67 != 68")]
    assert r.feed(b"$g#zz") == [BadPacket("bad checksum digits b'zz'")]
    assert r.feed(b"$a*#") + r.feed(b"00") == [BadPacket("checksum 8b != 00")]
    body = b"a*"
    assert r.feed(b"$" + body + b"#%02x" % checksum(body)) == [
        BadPacket("run-length marker with nothing to repeat")]
    # A '$' in the middle starts over; the packet after it is still read.
    assert r.feed(b"$m10$g#67") == [BadPacket("packet cut short by '$'"), Packet(b"g")]
    # The reader keeps working after all of that.
    assert r.feed(b"$?#3f") == [Packet(b"?")]


def test_oversized_packets_are_dropped() -> None:
    r = PacketReader(max_packet=16)
    assert r.feed(b"$" + b"M" * 40) == [BadPacket("packet longer than 16 bytes")]
    assert r.feed(b"#00$g#67") == [Packet(b"g")]


def test_packets_split_across_reads_acks_and_interrupts() -> None:
    r = PacketReader()
    wire = b"+-\x03$m100000,40#1e\x03+"
    items = []
    for b in wire:
        items += r.feed(bytes((b,)))
    assert items == [Ack(True), Ack(False), INTERRUPT, Packet(b"m100000,40"), INTERRUPT,
                     Ack(True)]
    assert r.feed(b"noise\r\n$g#67") == [Packet(b"g")]  # bytes between packets are ignored
