"""Instructions bound parametrically in the mock's tier 0, against the host CPU.

Tier 0 binds every instruction of one decoder head (same prefixes, opcode, ModRM and
SIB; another displacement, immediate or RIP) from one run of its generator on symbolic
fields (kvmcpu/backends/mock/tier0.py, ``_Sym``). This program holds hundreds of such
instructions, each once, with immediates and displacements at the edges where a
generator's own arithmetic differs (sign bits of imm8/imm32, displacement 0, negative
displacements, RIP-relative loads): the registers, flags and the memory they leave
must be the host CPU's.
"""

from __future__ import annotations

import random
import struct
from typing import Any, Callable, List

import pytest
from diffkit import compare, host_mock, native_available, random_inputs, run_backend, run_native

from kvmcpu.backends.mock import tier0

_reason = native_available()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

FLAG_MASK = 0x8D5 | 0x400
#: lea r14, [r15 + 0x800]: memory operands are [r14 + disp], disp in -0x800..0x7F8
PROLOGUE = bytes.fromhex("4d8db700080000")
EPILOGUE = bytes.fromhex("4531f6")  # xor r14d, r14d (its value is the buffer's address)
REGS = (0, 1, 2, 3, 5, 6, 7)  # eax..edi but esp
EDGE8 = (0, 1, 0x7F, 0x80, 0x81, 0xFE, 0xFF)
EDGE32 = (0, 1, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x12345678, 0xFFFFFF80)


def _imm8(rng: random.Random) -> int:
    return rng.choice(EDGE8) if rng.random() < 0.4 else rng.randrange(256)


def _imm32(rng: random.Random) -> int:
    return rng.choice(EDGE32) if rng.random() < 0.4 else rng.getrandbits(32)


def _disp8(rng: random.Random) -> int:
    return rng.choice((0, -0x80, 0x7C, -4)) if rng.random() < 0.4 else rng.randrange(-0x80, 0x7D)


def _disp32(rng: random.Random) -> int:
    if rng.random() < 0.4:
        return rng.choice((0, -0x800, 0x7F8, -8))
    return rng.randrange(-0x800, 0x7F9)


def _modrm(mod: int, reg: int, rm: int) -> int:
    return mod << 6 | (reg & 7) << 3 | (rm & 7)


Maker = Callable[[random.Random, int], bytes]

#: instruction makers: (rng, offset of the instruction in the body) -> bytes
MAKERS: List[Maker] = [
    # mov r32, imm32
    lambda r, _: bytes([0xB8 + r.choice(REGS)]) + struct.pack("<I", _imm32(r)),
    # mov r64, imm64
    lambda r, _: bytes([0x48, 0xB8 + r.choice(REGS)]) + r.getrandbits(64).to_bytes(8, "little"),
    # grp1 r32, imm8; the same at 16 bits
    lambda r, _: bytes([0x83, _modrm(3, r.randrange(8), r.choice(REGS)), _imm8(r)]),
    lambda r, _: bytes([0x66, 0x83, _modrm(3, r.randrange(8), r.choice(REGS)), _imm8(r)]),
    # grp1 r64, imm32
    lambda r, _: bytes([0x48, 0x81, _modrm(3, r.randrange(8), r.choice(REGS))])
    + struct.pack("<I", _imm32(r)),
    # mov [r14+d8], r
    lambda r, _: bytes([0x41, 0x89, _modrm(1, r.choice(REGS), 6)])
    + struct.pack("<b", _disp8(r)),
    # mov r, [r14+d32]
    lambda r, _: bytes([0x41, 0x8B, _modrm(2, r.choice(REGS), 6)])
    + struct.pack("<i", _disp32(r)),
    # alu [r14+d8], imm32
    lambda r, _: bytes([0x41, 0x81, _modrm(1, r.randrange(8), 6)])
    + struct.pack("<b", _disp8(r) & ~3) + struct.pack("<I", _imm32(r)),
    # mov byte [r14+d8], imm8
    lambda r, _: bytes([0x41, 0xC6, _modrm(1, 0, 6)]) + struct.pack("<b", _disp8(r))
    + bytes([_imm8(r)]),
    # lea rax, [rbx+rcx*2+d8]
    lambda r, _: bytes([0x48, 0x8D, 0x44, 0x4B]) + struct.pack("<b", _disp8(r)),
    # push imm8; pop r
    lambda r, _: bytes([0x6A, _imm8(r), 0x58 + r.choice(REGS)]),
    # imul r, r, imm8
    lambda r, _: bytes([0x6B, _modrm(3, r.choice(REGS), r.choice(REGS)), _imm8(r)]),
    # test eax, imm32
    lambda r, _: bytes([0xA9]) + struct.pack("<I", _imm32(r)),
    # cmp al, imm8
    lambda r, _: bytes([0x3C, _imm8(r)]),
    # shifts
    lambda r, _: bytes([0xC1, _modrm(3, r.choice((4, 5, 7)), r.choice(REGS)), _imm8(r)]),
    # mov eax, [rip + d32] back into the body (its bytes are the same natively)
    lambda r, off: bytes([0x8B, 0x05]) + struct.pack("<i", -(off + 6) + r.randrange(0, off + 1)),
    # the same bytes at many RIPs (bound by bytes from their second sighting on)
    lambda r, _: r.choice(REPEATED),
    lambda r, _: r.choice(REPEATED),
]
REPEATED = (
    bytes.fromhex("8b05faffffff"),  # mov eax, [rip - 6]: its own bytes
    bytes.fromhex("8b0df0ffffff"),  # mov ecx, [rip - 16]
    bytes.fromhex("41895e10"),      # mov [r14 + 0x10], ebx (a store: may stop)
    bytes.fromhex("83c003"),        # add eax, 3
)


def _program(seed: int, count: int) -> bytes:
    rng = random.Random(seed)
    body = bytearray(PROLOGUE)
    for _ in range(count):
        body += rng.choice(MAKERS)(rng, len(body))
    return bytes(body + EPILOGUE)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_parametric_bindings_match_the_host_cpu(seed: int, mock_tier: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    made: List[Any] = []
    real = tier0.InsnBinder._parametric

    def counting(self: tier0.InsnBinder, d: Any, generate: Any) -> Any:
        out = real(self, d, generate)
        made.append(out)
        return out

    monkeypatch.setattr(tier0.InsnBinder, "_parametric", counting)
    body = _program(seed, 600)
    rng = random.Random(seed)
    regs, flags, buf = random_inputs(rng)
    buf = bytes(rng.getrandbits(8) for _ in range(0x1000))
    silicon = run_native(body, regs, flags, buf)
    with host_mock() as b:
        mock = run_backend(b, body, regs, flags, buf)
    assert mock[3][-1][0] == "io", mock[3]
    diffs = compare(silicon, mock[:3], flag_mask=FLAG_MASK)
    assert not diffs, f"seed {seed}: {diffs}"
    if mock_tier == "tiered":
        # the path under test ran: heads bound parametrically (and some refused: the
        # shifts by a constant, whose code depends on the count)
        assert sum(1 for m in made if isinstance(m, tuple)) >= 10
