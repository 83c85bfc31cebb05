"""32-bit code: the mock in flat protected mode against the host CPU in compatibility
mode (``diffkit.run_native32``), every arithmetic flag compared.

This is where the instructions 64-bit mode lacks are checked against silicon: DAA,
DAS, AAA, AAS, AAM, AAD and SALC (their undefined flags, and Intel's AAS borrow, are
vendor choices: kvmcpu/backends/mock/undefined.py), plus the random register-only
16/32-bit programs that test_diff_legacy runs against KVM's emulator.
"""

from __future__ import annotations

import os
import random
from typing import Dict, Tuple

import pytest
from diffkit import REG32, host_mock, native_available, run_legacy, run_native32
from x86enc import legacy_program

from kvmcpu.backends.base import Backend

LONG = os.environ.get("KVMCPU_LONG", "") not in ("", "0")
_reason = native_available()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")

ARITH = 0x8D5
GPRS = [n for n in REG32 if n != "esp"]


def _mock32(b: Backend, body: bytes, regs: Dict[str, int], flags: int
            ) -> Tuple[Dict[str, int], int]:
    """``body`` in flat 32-bit protected mode on ``b``: (eax..edi but esp, arithmetic flags)."""
    got, exits = run_legacy(b, body, "prot", {"r" + n[1:]: v & 0xFFFFFFFF
                                             for n, v in regs.items()}, flags)
    assert exits[-1][0] == "io", (body.hex(), exits)
    return {n: got["r" + n[1:]] & 0xFFFFFFFF for n in GPRS}, int(got["flags"])


@pytest.fixture(scope="module")
def mock() -> Backend:
    b = host_mock()
    yield b  # type: ignore[misc]
    b.close()


def _check(mock: Backend, body: bytes, regs: Dict[str, int], flags: int,
           flag_mask: int = ARITH) -> None:
    n_regs, n_fl = run_native32(body, regs, flags)
    m_regs, m_fl = _mock32(mock, body, regs, flags)
    assert m_regs == n_regs, f"{body.hex()}: registers {m_regs} != silicon {n_regs}"
    assert m_fl & flag_mask == n_fl & flag_mask, \
        f"{body.hex()}: flags {m_fl & flag_mask:#x} != silicon {n_fl & flag_mask:#x}"


#: (name, code, the flags both manuals define after it)
BCD_OPS = [("daa", "27", 0x0D5), ("das", "2f", 0x0D5), ("aaa", "37", 0x011),
           ("aas", "3f", 0x011), ("aam", "d40a", 0x0C4), ("aam 7", "d407", 0x0C4),
           ("aad", "d50a", 0x0C4), ("aad 0x33", "d533", 0x0C4), ("salc", "d6", ARITH)]
#: Vendors whose undefined BCD flags the mock's profile was measured for. Elsewhere only
#: the defined flags are compared (and the results, which the manuals define).
BCD_MEASURED = ("intel",)


@pytest.mark.parametrize("name,code,defined", BCD_OPS, ids=[n for n, _, _ in BCD_OPS])
def test_decimal_adjust(mock: Backend, name: str, code: str, defined: int) -> None:
    """Each BCD instruction over 150 random AX values and input flags (fixed seeds)."""
    from kvmcpu.backends.mock.vendor import host_vendor

    mask = ARITH if host_vendor() in BCD_MEASURED else defined
    rng = random.Random(sum(map(ord, name)))
    for _ in range(150):
        regs = {"eax": rng.getrandbits(32), "ebx": rng.getrandbits(32)}
        _check(mock, bytes.fromhex(code), regs, rng.getrandbits(12) & ARITH, mask)


def _legacy(mock: Backend, seed: int, n: int) -> None:
    rng = random.Random(seed)
    body = b"".join(legacy_program(rng, n, 32))
    regs = {r: rng.getrandbits(32) for r in GPRS}
    _check(mock, body, regs, rng.getrandbits(12) & ARITH)


def test_random_32bit_programs(mock: Backend) -> None:
    """200 random register-only programs of 12 instructions (fixed seeds)."""
    for seed in range(200):
        _legacy(mock, seed, 12)


@pytest.mark.slow
def test_random_32bit_programs_long(mock: Backend) -> None:
    """KVMCPU_LONG=1: 5,000 programs of 1-40 instructions."""
    rng = random.Random(99)
    for seed in range(5000 if LONG else 1):
        _legacy(mock, 10_000 + seed, rng.randint(1, 40))
