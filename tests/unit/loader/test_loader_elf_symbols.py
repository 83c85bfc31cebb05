"""ELF symbol tables (System.symbol, PC events at symbols) read by loader.elf."""

from __future__ import annotations


def test_elf_symbols_of_the_linked_guest_and_of_images_without_a_table() -> None:
    from kvmcpu import guests
    from kvmcpu.loader.elf import elf_symbols

    syms = elf_symbols(guests.path("debugme").read_bytes())
    assert {k: syms[k] for k in ("_start", "compute", "counter")} == {
        "_start": 0x100000, "compute": 0x100032, "counter": 0x100040}
    assert not any(name.endswith(".asm") for name in syms)  # FILE symbols are left out
    assert elf_symbols(guests.path("hello64").read_bytes()) == {}  # no section headers
    data = bytearray(guests.path("debugme").read_bytes())
    data[0x28:0x30] = (len(data) - 8).to_bytes(8, "little")  # section headers past the end
    assert elf_symbols(bytes(data)) == {}
