"""REP MOVS/STOS with DF=1 (downwards) over several pages: the mock against the host CPU.

The mock copies whole page runs at once in both directions (strings.py: ``_fast`` up,
``_fast_down`` down; a kernel moves itself up in memory with ``std; rep movsq``) and
falls back to element order where an overlap makes it matter. Each case runs natively
at CPL3 and on the mock at CPL3 and CPL0; registers (RSI/RDI relative to the buffer),
flags and the 12 KiB buffer must be identical. SERIALIZE, which a kernel's
sync_core() runs after each text patch, is checked the same way where the host has it.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path
from typing import Dict

import pytest
from diffkit import compare, host_mock, native_available, run_backend, run_native

_reason = native_available()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

SIZE = 0x3000


def _lea(reg: str, off: int) -> bytes:
    modrm = {"rsi": 0xB7, "rdi": 0xBF}[reg]
    return bytes([0x49, 0x8D, modrm]) + struct.pack("<i", off)


def _body(insn: bytes, rsi: int, rdi: int, count: int) -> bytes:
    return (_lea("rsi", rsi) + _lea("rdi", rdi) + b"\xb9" + struct.pack("<I", count)
            + b"\xfd" + insn + b"\xfc"  # std; rep ...; cld
            + bytes.fromhex("4c29fe" "4c29ff"))  # sub rsi, r15; sub rdi, r15


CASES = {
    # insn, RSI, RDI (offsets in the buffer of the first element moved), count
    "movsq apart": (b"\xf3\x48\xa5", 0x2FF8, 0x0FF8, 0x1FF),
    "movsq dst above src, overlapping": (b"\xf3\x48\xa5", 0x1FF8, 0x2FF8, 0x3FF),
    "movsq dst below src, overlapping": (b"\xf3\x48\xa5", 0x2FF8, 0x1FF8, 0x3FF),
    "movsd unaligned, crossing pages": (b"\xf3\xa5", 0x2A03, 0x2E01, 0x900),
    "movsb": (b"\xf3\xa4", 0x2FFF, 0x27FF, 0x1800),
    "movsb dst below src, near": (b"\xf3\xa4", 0x2FFF, 0x2FFD, 0x2000),
    "stosb": (b"\xf3\xaa", 0, 0x2FFF, 0x1234),
    "stosq element across a page": (b"\xf3\x48\xab", 0, 0x2FFC, 0x300),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_rep_down_matches_the_host_cpu(name: str) -> None:
    insn, rsi, rdi, count = CASES[name]
    rng = random.Random(name)
    buf = bytes(rng.getrandbits(8) for _ in range(SIZE))
    regs: Dict[str, int] = {"rax": 0x1122334455667788}
    body = _body(insn, rsi, rdi, count)
    native = run_native(body, regs, 0, buf)
    with host_mock() as mock:
        for cpl in (3, 0):
            res = run_backend(mock, body, regs, 0, buf, cpl=cpl)
            assert compare(native, res[:3]) == [], (name, cpl)


def test_serialize_matches_the_host_cpu() -> None:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    if " serialize" not in cpuinfo:
        pytest.skip("the host CPU has no SERIALIZE")
    body = bytes.fromhex("0f01e8" "b805000000")  # serialize; mov eax, 5
    native = run_native(body, {"rax": 1}, 0, bytes(16))
    with host_mock() as mock:
        for cpl in (3, 0):
            res = run_backend(mock, body, {"rax": 1}, 0, bytes(16), cpl=cpl)
            assert compare(native, res[:3]) == []
            assert res[3][-1][0] == "io"  # it ran to the end, no emulation failure
