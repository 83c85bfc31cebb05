"""The mock's data breakpoints (DR7 R/W and LEN through KVM_SET_GUEST_DEBUG,
checked in its MMU): every load and store to a watched page takes the slow path,
also where the TLB already held the page and in REP string instructions (the
exit comes after each iteration that hit, RIP still at the REP while iterations
remain, as the SDM says of repeated string instructions, 17.3.1.2)."""

from __future__ import annotations

from typing import Iterator, List, Tuple

import pytest

from kvmcpu import uapi
from kvmcpu.backends import DebugExit, IoExit, get_backend
from kvmcpu.backends.base import Vcpu

HW = uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_USE_HW_BP


@pytest.fixture
def vcpu_with() -> Iterator:
    made: List = []

    def make(code: bytes) -> Vcpu:
        b = get_backend("mock")
        vm = b.create_vm()
        made.append(b)
        ram = vm.add_ram(0, 0x10000)
        ram[0x2000:0x2000 + len(code)] = code
        v = vm.create_vcpu(0)
        v.set_long_mode(rip=0x2000, rsp=0x8000)
        return v

    yield make
    for b in made:
        b.close()


def _exits(v: Vcpu, n: int = 40) -> List[Tuple[str, int, int, int]]:
    out = []
    for _ in range(n):
        ex = v.run()
        r = v.get_regs()
        if isinstance(ex, DebugExit):
            out.append(("debug", ex.pc, ex.dr6 & 0xF, r.rcx))
        else:
            assert isinstance(ex, IoExit)
            out.append(("io", r.rip, 0, r.rcx))
            break
    return out


def test_a_page_the_tlb_already_holds_is_watched_once_armed(vcpu_with) -> None:  # noqa: ANN001
    # mov [0x3020], al; out 0x80, al; mov [0x3020], al; out 0x80, al; hlt
    store = bytes.fromhex("88042520300000")
    v = vcpu_with(store + b"\xe6\x80" + store + b"\xe6\x80\xf4")
    assert isinstance(v.run(), IoExit)  # the first store filled the write TLB
    dr7 = 0x700 | 2 | 1 << 16  # DR0: writes, 1 byte
    v.set_guest_debug(HW, [0x3020, 0, 0, 0, 0, 0, 0, dr7])
    ex = v.run()
    assert isinstance(ex, DebugExit) and ex.exception == 1
    assert (ex.pc, ex.dr6) == (0x2010, 0xFFFF0FF1)  # after the second store
    v.set_guest_debug(0)
    assert isinstance(v.run(), IoExit)


def test_rep_movsb_reports_each_iteration_that_hits(vcpu_with) -> None:  # noqa: ANN001
    # mov rdi, 0x3000; mov rsi, 0x4000; mov ecx, 64; rep movsb; out 0x80, al; hlt
    v = vcpu_with(bytes.fromhex("48c7c700300000" "48c7c600400000" "b940000000" "f3a4"
                                "e680" "f4"))
    # DR0: writes to 0x3020 (8 bytes); DR1: reads or writes of 0x4010 (4 bytes)
    dr7 = 0x700 | 2 | 1 << 16 | 2 << 18 | 8 | 3 << 20 | 3 << 22
    v.set_guest_debug(HW, [0x3020, 0x4010, 0, 0, 0, 0, 0, dr7])
    exits = _exits(v)
    rep = 0x2013
    assert exits == ([("debug", rep, 2, 64 - 17 - i) for i in range(4)]  # reads 0x4010..3
                     + [("debug", rep, 1, 64 - 33 - i) for i in range(8)]  # writes 0x3020..7
                     + [("io", 0x2017, 0, 0)])


def test_a_store_across_a_page_boundary_hits_the_next_page(vcpu_with) -> None:  # noqa: ANN001
    # mov rax, -1; mov [0x2ffc], rax; out 0x80, al (8 bytes: 0x2ffc..0x3003)
    v = vcpu_with(bytes.fromhex("48c7c0ffffffff" "48890425fc2f0000" "e680"))
    dr7 = 0x700 | 2 | 1 << 16 | 1 << 18  # DR0: writes, 2 bytes at 0x3002
    v.set_guest_debug(HW, [0x3002, 0, 0, 0, 0, 0, 0, dr7])
    ex = v.run()
    assert isinstance(ex, DebugExit) and (ex.pc, ex.dr6 & 0xF) == (0x200F, 1)
    assert isinstance(v.run(), IoExit)


def test_a_watched_read_and_an_mmio_write_of_one_instruction_are_two_exits(
        vcpu_with) -> None:  # noqa: ANN001
    # mov rsi, 0x3000; mov rdi, 0x20000 (not RAM: MMIO); movsq; out 0x80, al
    v = vcpu_with(bytes.fromhex("48c7c600300000" "48c7c700000200" "48a5" "e680"))
    dr7 = 0x700 | 2 | 3 << 16 | 2 << 18  # DR0: reads or writes of 0x3000, 8 bytes
    v.set_guest_debug(HW, [0x3000, 0, 0, 0, 0, 0, 0, dr7])
    first = v.run()
    assert first.kind == "mmio" and first.is_write
    second = v.run()  # the data breakpoint, still after the movsq
    assert isinstance(second, DebugExit) and (second.pc, second.dr6 & 0xF) == (0x2010, 1)
    assert isinstance(v.run(), IoExit)
