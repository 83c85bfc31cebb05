"""The AML encoder's constructs against the encodings ACPI 6.4 chapter 20 gives."""

from __future__ import annotations

import pytest

from kvmcpu.firmware import aml


def test_pkg_length_encodings() -> None:
    # One byte up to a total of 63; then a lead byte (bits 7-6: the count of bytes
    # that follow, bits 3-0: the low nibble) and the rest of the total, little-endian.
    assert aml.pkg_length(0) == b"\x01"
    assert aml.pkg_length(62) == b"\x3f"
    assert aml.pkg_length(63) == b"\x41\x04"              # total 65 = 0x041
    assert aml.pkg_length(0xFFD) == b"\x4f\xff"           # total 0xfff: the 2-byte maximum
    assert aml.pkg_length(0xFFE) == b"\x81\x00\x01"       # total 0x1001
    with pytest.raises(ValueError, match="too long"):
        aml.pkg_length(1 << 28)


def test_names_and_integers() -> None:
    assert aml.name_string("_S5") == b"_S5_"
    assert aml.name_string("\\_SB.PCI0") == b"\\\x2e_SB_PCI0"
    assert aml.name_string("\\A.B.C") == b"\\\x2f\x03A___B___C___"
    assert aml.name_string("^^FOO") == b"^^FOO_"
    assert aml.name_string("\\") == b"\\\x00"
    assert [aml.integer(v) for v in (0, 1, 2, 0x100, 0x10000, 1 << 32, (1 << 64) - 1)] == [
        b"\x00", b"\x01", b"\x0a\x02", b"\x0b\x00\x01", b"\x0c\x00\x00\x01\x00",
        b"\x0e" + (1 << 32).to_bytes(8, "little"), b"\xff"]
    assert aml.string("PNP") == b"\x0dPNP\x00"
    assert aml.eisa_id("PNP0A03") == 0x030AD041 and aml.eisa_id("PNP0501") == 0x0105D041
    for bad, call in (("1ABC", aml.name_string), ("TOOLONG", aml.name_string),
                      ("pnp0a03", aml.eisa_id), ("PNP0A0G", aml.eisa_id)):
        with pytest.raises(ValueError):
            call(bad)
    with pytest.raises(ValueError):
        aml.integer(-1)


def test_objects() -> None:
    # The bytes ACPICA's iasl (20200925) compiles the same ASL to.
    # Name (_S5, Package () { Zero, Zero, Zero, Zero })
    assert aml.name("_S5", aml.package([0, 0, 0, 0])) == bytes.fromhex(
        "08 5f53355f 12 06 04 00000000")
    # Method (_PIC, 1) { Store (Arg0, PICF) }
    assert aml.method("_PIC", 1, aml.store(aml.ARG0, "PICF")) == bytes.fromhex(
        "14 0c 5f504943 01 70 68 50494346")
    assert aml.device("PCI0") == bytes.fromhex("5b82 05 50434930")
    assert aml.buffer(b"\x79\x00") == bytes.fromhex("11 05 0a02 7900")
    # IO (Decode16, 0xcf8, 0xcf8, 1, 8) and the end tag with checksum 0.
    assert aml.resource_template(aml.io_port(0xCF8, 8)) == bytes.fromhex(
        "11 0d 0a0a 47 01 f80c f80c 01 08 7900")
    with pytest.raises(ValueError):
        aml.word_io(0x10, 0x10000)
    with pytest.raises(ValueError):
        aml.method("X", 8)
