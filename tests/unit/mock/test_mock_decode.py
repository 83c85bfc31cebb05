"""The decoder's fast path (instructions whose head was decoded before) and tier 0's
caches: instructions that share their prefixes/opcode/ModRM/SIB but not their
displacement or immediate decode and run with their own values.

Expected values are the SDM's encodings (Vol. 2, 2.1: ModRM/SIB, displacement and
immediate sizes), written out here, not taken from the decoder."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from mockrig import Machine

from kvmcpu.backends.mock.decode import LEARN_AFTER, Insn, NeedMore, decode


def _fields(raw: str, bits: int = 64, ip: int = 0x1000) -> Dict[str, Any]:
    d = decode(bytes.fromhex(raw), bits, ip)
    return {k: getattr(d, k) for k in ("len", "opc", "reg", "rm", "mod", "base", "index",
                                       "scale", "disp", "imm", "riprel", "osz", "asz",
                                       "ss_default", "raw", "ip", "next_ip")}


@pytest.mark.parametrize("bits,raws,expect", [
    # mov [rdi+disp32], ecx: 89 /r, ModRM 10 001 111
    (64, ["898f10000000", "898ff0ffffff", "898f00000080"],
     [dict(len=6, opc=0x89, reg=1, mod=2, base=7, disp=0x10),
      dict(len=6, disp=-16), dict(len=6, disp=-0x80000000)]),
    # add eax, imm8 (83 /0 ib): the byte as encoded (sign-extended by the instruction)
    (64, ["83c07f", "83c080", "83c001"],
     [dict(len=3, opc=0x83, reg=0, mod=3, imm=0x7F), dict(imm=0x80), dict(imm=1)]),
    # add ebx, imm32 (81 /0 id): a signed 32-bit immediate
    (64, ["81c300000080", "81c3ffffff7f"],
     [dict(len=6, opc=0x81, rm=3, imm=-0x80000000), dict(imm=0x7FFFFFFF)]),
    # mov eax, imm32 / mov rax, imm64 (B8+r): unsigned, the operand size
    (64, ["b8ffffffff", "b801000000", "48b8112233445566778899"[:20]],
     [dict(len=5, opc=0xB8, imm=0xFFFFFFFF, osz=4), dict(imm=1),
      dict(len=10, imm=0x8877665544332211, osz=8)]),
    # mov dword [rip+disp32], imm32 (C7 /0, ModRM 00 000 101): displacement and immediate
    (64, ["c705100000002a000000", "c705f0ffffffffffffff"],
     [dict(len=10, riprel=True, disp=0x10, imm=42, base=-1),
      dict(riprel=True, disp=-16, imm=-1)]),
    # mov eax, [rbx+rcx*4+disp8] (8B /r, SIB 10 001 011)
    (64, ["8b448b08", "8b448bf8"],
     [dict(len=4, base=3, index=1, scale=4, disp=8), dict(base=3, index=1, disp=-8)]),
    # 16-bit: mov ax, [bp+disp8] (SS by default) and [bx+si+disp16]
    (16, ["8b46fe", "8b4604", "8b801234", "8b80f0ff"],
     [dict(len=3, base=5, disp=-2, ss_default=True, asz=2, osz=2), dict(disp=4),
      dict(len=4, base=3, index=6, disp=0x3412), dict(disp=-16)]),
])
def test_instructions_sharing_a_head_decode_with_their_own_values(
        bits: int, raws: list, expect: list) -> None:
    # decoded by the decoder until the head is learnt, then from the head's cache
    for rnd in range(LEARN_AFTER + 1):
        for i, (raw, want) in enumerate(zip(raws, expect)):
            ip = 0x1000 + 0x10 * i + rnd
            got = _fields(raw, bits, ip)
            for key, value in want.items():
                assert got[key] == value, (raw, key, rnd)
            assert got["raw"] == bytes.fromhex(raw)[:got["len"]]
            assert got["ip"] == ip and got["next_ip"] == ip + got["len"]
    # the last round came from the cache (an Insn subclass holding the head's fields)
    assert all(type(decode(bytes.fromhex(raw), bits)) is not Insn for raw in raws)


def test_a_known_head_still_needs_all_its_bytes() -> None:
    for _ in range(LEARN_AFTER):
        decode(bytes.fromhex("898f10000000"), 64)
    with pytest.raises(NeedMore):
        decode(bytes.fromhex("898f1000"), 64)  # the displacement is cut short
    for _ in range(LEARN_AFTER):
        decode(bytes.fromhex("c705100000002a000000"), 64)
    with pytest.raises(NeedMore):
        decode(bytes.fromhex("c705100000002a00"), 64)  # the immediate is cut short


def test_tier0_binds_each_instruction_with_its_own_immediates() -> None:
    """Ten stores of one shape with different immediates and displacements, run three
    times in the interpreter tier (new blocks each time: the code is rewritten to the same
    bytes, so the later runs bind from the binder's caches)."""
    m = Machine()
    try:
        lines = [f"mov ecx, {0x1000 + 77 * i}\nmov [rdi+{8 * i}], ecx\nadd ebx, ecx"
                 for i in range(10)]
        source = "\n".join(lines) + "\nmov rax, [rdi+8]\nmov rdx, [rdi+72]\nhlt"
        for _ in range(3):
            m.long(source)
            regs = m.regs()
            regs.rdi, regs.rbx = 0x300000, 0
            m.vcpu.set_regs(regs)
            assert m.run().kind == "hlt"
            r = m.regs()
            assert r.rbx == sum(0x1000 + 77 * i for i in range(10))
            assert r.rcx == 0x1000 + 77 * 9
            assert r.rax == 0x1000 + 77  # a dword store at +8, nothing at +12
            assert r.rdx == 0x1000 + 77 * 9
    finally:
        m.close()
