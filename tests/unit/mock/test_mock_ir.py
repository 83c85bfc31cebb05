"""The compiled tier's IR (ir.py), its passes (ir_opt.py) and its emitter (ir_emit.py).

Expected values come from the SDM's definitions of the instructions and of fault
semantics (a faulting instruction leaves the state as it was before it), computed here
independently of the engine."""

from __future__ import annotations

from typing import Any, List

import pytest
from mockasm import asm
from mockrig import Machine

from kvmcpu.backends.mock import tier0
from kvmcpu.backends.mock.decode import decode
from kvmcpu.backends.mock.ir import Ctx, IrInsn, lower
from kvmcpu.backends.mock.ir_emit import emit_block
from kvmcpu.backends.mock.ir_opt import dce, flag_liveness, fold_masks
from kvmcpu.backends.mock.state import LZ_LOGIC, LZ_SUB

RAM = 4 << 20
CF, PF, AF, ZF, SF, OF = 0x1, 0x4, 0x10, 0x40, 0x80, 0x800


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every block compiled (the IR tier) before its first run."""
    monkeypatch.setattr(tier0, "PROMOTE_AFTER", 1)


def _ir(source: str, at: int = 0x100000) -> List[IrInsn]:
    code = asm(source, 64, at)
    out, off, ip = [], 0, at
    ctx = Ctx(64, 64, "intel", at, True)
    while off < len(code):
        d = decode(code[off:off + 15], 64, ip)
        ins = lower(d, ctx)
        assert ins is not None, source
        out.append(ins)
        off += d.len
        ip += d.len
    return out


def _kinds(items: List[IrInsn]) -> List[List[str]]:
    return [[op.kind for op in it.ops] for it in items]


# -- passes on IR inputs ------------------------------------------------------------------
def test_fold_masks_drops_masks_that_change_nothing() -> None:
    items = _ir("lea rsi, [rsi]\nmovzx eax, byte [rdi]")
    fold_masks(items)
    dce(items)
    # lea rsi, [rsi] is rsi = rsi: nothing left; movzx: the byte load is already 0..255
    assert _kinds(items) == [[], ["get", "ld", "set"]]


def test_flag_liveness_keeps_only_observed_flags() -> None:
    # ADD's flags are overwritten by XOR before anything can observe them (XOR cannot
    # fault); XOR's are observed by the store's fault path; SHL's by nothing before SUB
    items = _ir("add rax, rcx\nxor rdx, rax\nmov [rsi], rdx\nshl rax, 3\nsub rdx, rax\nhlt"
                .replace("\nhlt", ""))
    flag_liveness(items, False)
    dce(items)
    flags = [[op.args[0] for op in it.ops if op.kind == "flags"] for it in items]
    assert flags == [[], [LZ_LOGIC], [], [], [LZ_SUB]]
    # SHL's CF and OF computations went with its flags
    assert all(op.kind != "bin" or op.args[0] != ">>" for op in items[3].ops)


def test_cmp_jcc_is_a_plain_comparison() -> None:
    items = _ir("cmp rax, rbx\njb 0x100000")
    src = emit_block(items, 0x100000, True, 0x100009, True)
    assert "H.cond" not in src and " < " in src
    assert src.count("c.lz =") == 2  # once per exit (loop budget exit, fall-through)


# -- behaviour of compiled blocks ---------------------------------------------------------
def test_fault_mid_block_leaves_the_state_before_the_faulting_instruction(
        compiled: None) -> None:
    """A load from unbacked memory (an MMIO exit) after two register instructions: the
    registers hold their results, RIP is the load's, RFLAGS is ADD's (SDM: ADD sets
    CF/PF/AF/ZF/SF/OF from the result), and the load has not retired."""
    m = Machine(RAM)
    try:
        m.long("mov eax, 7\nadd ebx, eax\nmov rcx, [rsi]\nmov edx, 5\nhlt")
        r = m.regs()
        r.rbx, r.rsi, r.rcx = 0xFFFFFFFF, RAM + 0x100, 0x1234
        m.vcpu.set_regs(r)
        ex = m.run()
        assert ex.kind == "mmio" and ex.phys_addr == RAM + 0x100 and not ex.is_write
        r = m.regs()
        assert (r.rax, r.rbx, r.rcx, r.rdx) == (7, 6, 0x1234, 0)
        assert r.rip == 0x100000 + 5 + 2  # mov eax, imm32 (5) + add ebx, eax (2)
        # 0xFFFFFFFF + 7 = 0x1_00000006: CF, AF (0xF + 7 carries out of bit 3), PF (6 has
        # two bits set); not ZF, SF, OF
        assert r.rflags & (CF | PF | AF | ZF | SF | OF) == CF | PF | AF
        assert m.vcpu.instructions_retired == 2
        ex.data[:] = (0x1122334455667788).to_bytes(8, "little")
        assert m.run().kind == "hlt"
        r = m.regs()
        assert (r.rcx, r.rdx) == (0x1122334455667788, 5)
        assert m.vcpu.instructions_retired == 5
    finally:
        m.close()


def test_fault_in_a_compiled_loop_on_a_later_iteration(compiled: None) -> None:
    """The loop reads 8 bytes per iteration up to the end of RAM: the read past it (an
    MMIO exit) happens on iteration 3 with iteration 2's results in the registers and
    its DEC's flags in RFLAGS."""
    m = Machine(RAM)
    try:
        m.long("l: mov rax, [rsi]\nadd rsi, 8\ndec ecx\njnz l\nhlt")
        m.ram[RAM - 16:RAM] = bytes(range(1, 17))
        r = m.regs()
        r.rsi, r.rcx = RAM - 16, 10
        m.vcpu.set_regs(r)
        ex = m.run()
        assert ex.kind == "mmio" and ex.phys_addr == RAM
        r = m.regs()
        assert r.rip == 0x100000 and r.rsi == RAM and r.rcx == 8
        assert r.rax == int.from_bytes(bytes(range(9, 17)), "little")
        # DEC ecx 9 -> 8: no ZF/SF/OF; PF: 8 has one bit set (odd); AF: 9 -> 8 borrows
        # nothing from bit 4; CF is ADD's (rsi + 8 did not carry out)
        assert r.rflags & (CF | PF | AF | ZF | SF | OF) == 0
        assert m.vcpu.instructions_retired == 8
    finally:
        m.close()


_CMPS = [(0, 0), (1, 2), (2, 1), (0x80000000, 1), (1, 0x80000000), (0xFFFFFFFF, 0),
         (0x7FFFFFFF, 0xFFFFFFFF), (5, 5)]


def _expected_conditions(a: int, b: int) -> List[int]:
    """SETcc 0..15 after CMP a, b (32-bit), from the SDM's flag definitions."""
    r = (a - b) & 0xFFFFFFFF
    cf = a < b
    zf = r == 0
    sf = bool(r & 0x80000000)
    of = bool((a ^ b) & (a ^ r) & 0x80000000)
    pf = bin(r & 0xFF).count("1") % 2 == 0
    base = [of, cf, zf, cf or zf, sf, pf, sf != of, zf or (sf != of)]
    out: List[int] = []
    for cc in range(16):
        v = base[cc >> 1]
        out.append(int(v != bool(cc & 1)))
    return out


@pytest.mark.parametrize("a,b", _CMPS)
def test_cmp_then_every_condition(compiled: None, a: int, b: int) -> None:
    sets = "\n".join(f"set{c} byte [rdi+{i}]" for i, c in enumerate(
        ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le",
         "g"]))
    m = Machine(RAM)
    try:
        m.long(f"cmp eax, ebx\n{sets}\nhlt")
        r = m.regs()
        r.rax, r.rbx, r.rdi = a, b, 0x300000
        m.vcpu.set_regs(r)
        assert m.run().kind == "hlt"
        assert list(m.ram[0x300000:0x300010]) == _expected_conditions(a, b)
    finally:
        m.close()


@pytest.mark.parametrize("a,b", _CMPS)
def test_cmp_jcc_in_a_loop_takes_the_sdm_branch(compiled: None, a: int, b: int) -> None:
    """Each Jcc fused with the CMP before it: count how often each is taken."""
    conds = ["o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge",
             "le", "g"]
    body = "\n".join(f"cmp eax, ebx\nj{c} t{i}\njmp n{i}\nt{i}: inc byte [rdi+{i}]\nn{i}:"
                     for i, c in enumerate(conds))
    m = Machine(RAM)
    try:
        m.long(f"mov ecx, 3\nl:\n{body}\ndec ecx\njnz l\nhlt")
        r = m.regs()
        r.rax, r.rbx, r.rdi = a, b, 0x300000
        m.vcpu.set_regs(r)
        for _ in range(50):
            if m.run().kind == "hlt":
                break
        assert [v // 3 for v in m.ram[0x300000:0x300010]] == _expected_conditions(a, b)
    finally:
        m.close()


def test_each_tier_gives_the_same_exits_and_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    """A loop with a memory store, flags carried around the loop (ADC) and a
    generator-made instruction (CPUID) inside: tier 0 only vs compiled at once."""
    src = ("mov esi, 40\nl: adc eax, esi\nmov [rdi], eax\nadd rdi, 4\ncpuid\n"
           "mov eax, esi\ndec esi\njnz l\nhlt")
    results: List[Any] = []
    for promote in (10**9, 1):
        monkeypatch.setattr(tier0, "PROMOTE_AFTER", promote)
        m = Machine(RAM, vendor="intel")
        try:
            m.long(src)
            r = m.regs()
            r.rdi = 0x300000
            m.vcpu.set_regs(r)
            exits = []
            for _ in range(20):
                exits.append(m.run().kind)
                if exits[-1] == "hlt":
                    break
            r = m.regs()
            results.append((exits, m.vcpu.instructions_retired, r.rax, r.rbx, r.rcx,
                            r.rdx, r.rsi, r.rdi, r.rflags,
                            bytes(m.ram[0x300000:0x300000 + 160])))
        finally:
            m.close()
    assert results[0] == results[1]
    assert results[0][0][-1] == "hlt" and results[0][7] == 0x300000 + 160
    # mov esi + 40 iterations of 7 instructions + HLT
    assert results[0][1] == 1 + 40 * 7 + 1


# -- chained blocks (engine._chain) --------------------------------------------------------
_CALL_LOOP = "mov ecx, 1000\nl: call f\ndec ecx\njnz l\nhlt\nf: add eax, 1\nret"


@pytest.mark.parametrize("tiers", ["tiered", "compiled"])
@pytest.mark.parametrize("budget", [1, 2, 47, 48, 49, 50, 51, 52, 53, 500, 4999])
def test_chained_blocks_stop_exactly_at_the_budget(monkeypatch: pytest.MonkeyPatch,
                                                   tiers: str, budget: int) -> None:
    """The budget ends the run after exactly that many instructions while blocks chain
    (call/ret: two blocks per iteration): the registers are the program's after them."""
    if tiers == "compiled":
        monkeypatch.setattr(tier0, "PROMOTE_AFTER", 1)
    m = Machine(RAM)
    try:
        m.long(_CALL_LOOP)
        m.vcpu.set_budget(budget)
        assert m.run().kind == "intr"
        assert m.vcpu.instructions_retired == budget
        # mov ecx; then per iteration: call, add, ret, dec, jnz
        done, part = divmod(budget - 1, 5)
        r = m.regs()
        assert r.rax == done + (part >= 2)
        assert r.rcx == 1000 - done - (part >= 4)
        at = {0: "l", 1: "f", 2: "ret", 3: "dec", 4: "jnz"}[part]
        code = 0x100000
        want = {"l": code + 5, "f": code + 15, "ret": code + 18, "dec": code + 10,
                "jnz": code + 12}[at]
        assert r.rip == want
    finally:
        m.close()


def test_a_kick_stops_chained_blocks(compiled: None) -> None:
    import threading

    m = Machine(RAM)
    try:
        m.long(_CALL_LOOP.replace("1000", "100000000"))
        threading.Timer(0.2, m.vcpu.kick).start()
        ex = m.run()
        assert ex.kind == "intr"
        assert m.vcpu.instructions_retired < 1 + 5 * 100000000
    finally:
        m.close()


def test_sti_ends_a_chain_where_the_interrupt_window_opens(compiled: None) -> None:
    """STI is not chain_safe: the run loop sees the window open after STI's shadow (the
    instruction after STI), as KVM reports IRQ_WINDOW_OPEN there."""
    m = Machine(RAM)
    try:
        m.long("call f\nhlt\nf: add eax, 1\nsti\nadd eax, 2\nadd eax, 4\nret")
        m.vcpu.kvm_run.request_interrupt_window = 1
        ex = m.run()
        assert ex.kind == "irq_window_open"
        r = m.regs()
        assert r.rax == 3 and r.rip == 0x100000 + 6 + 3 + 1 + 3
        assert r.rflags & 0x200
    finally:
        m.close()
