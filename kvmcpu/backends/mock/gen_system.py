"""Generators for system, IO, string and segment instructions (mostly calls into
the Python helpers of system.py, transfer.py and strings.py), plus the opcodes
the engine deliberately refuses (#UD or INTERNAL_ERROR)."""

from __future__ import annotations

from typing import Any, Callable, Optional

from . import strings, system, transfer
from .codegen import Translator, gen
from .decode import Insn
from .helpers import raise_ud, unimplemented

Helper = Callable[[Any, Insn], None]


def _then_next(t: Translator, d: Insn, fn: Helper) -> bool:
    """Call ``fn`` and end the block at the next instruction (state/mode may have changed)."""
    t.call_helper(fn, d)
    t.stop_check(d)
    return t.jump(f"{d.next_ip & _ipm(t):#x}")


def _ipm(t: Translator) -> int:
    return {16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}[t.bits]


def _plain(fn: Helper) -> Callable[[Translator, Insn], Optional[bool]]:
    def g(t: Translator, d: Insn) -> Optional[bool]:
        t.call_helper(fn, d)
        return None
    return g


def _ending(fn: Helper) -> Callable[[Translator, Insn], Optional[bool]]:
    def g(t: Translator, d: Insn) -> Optional[bool]:
        return _then_next(t, d, fn)
    return g


def _transfer(fn: Helper) -> Callable[[Translator, Insn], Optional[bool]]:
    def g(t: Translator, d: Insn) -> Optional[bool]:
        return t.call_helper(fn, d, terminator=True)
    return g


def _not64(g: Callable[[Translator, Insn], Optional[bool]]
           ) -> Callable[[Translator, Insn], Optional[bool]]:
    def w(t: Translator, d: Insn) -> Optional[bool]:
        if t.bits == 64:
            return t.call_helper(raise_ud, d, terminator=True)
        return g(t, d)
    return w


def reg(opcodes: Any, g: Callable[[Translator, Insn], Optional[bool]], not64: bool = False
        ) -> None:
    gen(*opcodes)(_not64(g) if not64 else g)


# string instructions and port IO
reg((0xA4, 0xA5, 0xA6, 0xA7, 0xAA, 0xAB, 0xAC, 0xAD, 0xAE, 0xAF), _plain(strings.string_op))
reg(range(0x6C, 0x70), _plain(strings.string_op))
reg((0xE4, 0xE5, 0xEC, 0xED), _plain(system.io_in))
reg((0xE6, 0xE7, 0xEE, 0xEF), _plain(system.io_out))
# privileged / system
reg((0xF4,), _ending(system.hlt))
reg((0xFA,), _plain(transfer.cli))
reg((0xFB,), _ending(transfer.sti))
reg((0x9C,), _plain(transfer.pushf))
reg((0x9D,), _ending(transfer.popf))
reg((0xCC, 0xCD, 0xCE), _transfer(transfer.int_n))
reg((0xCF,), _transfer(transfer.iret))
reg((0xCA, 0xCB), _transfer(transfer.far_ret))
reg((0x9A, 0xEA), _transfer(transfer.far_jmp_call_imm), not64=True)
reg((0xC8,), _plain(transfer.enter))
reg((0x8E,), _ending(transfer.mov_sreg))
reg((0x06, 0x0E, 0x16, 0x1E), _plain(transfer.push_sreg), not64=True)
reg((0x07, 0x17, 0x1F), _ending(transfer.pop_sreg), not64=True)
reg((0x1A0, 0x1A8), _plain(transfer.push_sreg))
reg((0x1A1, 0x1A9), _ending(transfer.pop_sreg))
reg((0x1B2, 0x1B4, 0x1B5), _ending(transfer.load_far_ptr))
reg((0x100,), _ending(system.grp6))
reg((0x101,), _ending(system.grp7))
reg((0x120, 0x122), _ending(system.mov_cr))
reg((0x121, 0x123), _ending(system.mov_dr))
reg((0x130,), _ending(system.wrmsr))
reg((0x132,), _ending(system.rdmsr))  # may exit to user space (MSR filter)
reg((0x131,), _plain(system.rdtsc))
reg((0x1A2,), _plain(system.cpuid))
reg((0x105,), _transfer(transfer.syscall))
reg((0x107,), _transfer(transfer.sysret))
reg((0x106,), _plain(system.clts))
reg((0x108, 0x109), _plain(system.wbinvd))
reg((0x1AE,), _plain(system.grp15))


@gen(0xC4, 0xC5)
def g_les(t: Translator, d: Insn) -> Optional[bool]:
    if t.bits == 64:
        return t.call_helper(unimplemented, d, terminator=True)  # VEX prefix: AVX
    return _then_next(t, d, transfer.load_far_ptr)


@gen(0x8C)
def g_mov_from_sreg(t: Translator, d: Insn) -> Optional[bool]:
    idx = d.reg & 7
    if idx > 5:
        return t.call_helper(raise_ud, d, terminator=True)
    sel = f"c.seg[{idx}].selector"
    if d.mod == 3:
        sz = d.osz if d.osz != 2 else 2
        if sz == 2:
            t.rset(d.rm, 2, d, sel)
        else:
            t.emit(f"R[{d.rm}] = {sel}")
    else:
        t.store(t.ea(d), 2, sel)
    return None


@gen(0x10B, 0x1B9, 0x1FF)
def g_ud(t: Translator, d: Insn) -> bool:
    return t.call_helper(raise_ud, d, terminator=True)


@gen(0x10D, 0x118, 0x119, 0x11A, 0x11B, 0x11C, 0x11D, 0x11E, 0x11F, 0x9B)
def g_nop(t: Translator, d: Insn) -> None:
    return None  # hint NOPs, PREFETCH*, FWAIT with no x87 exception pending


@gen(0x60)
def g_pusha(t: Translator, d: Insn) -> Optional[bool]:
    if t.bits == 64:
        return t.call_helper(raise_ud, d, terminator=True)
    n = d.osz
    sm = t.sp_mask()
    sp0 = t.var()
    t.emit(f"{sp0} = R[4] & {sm:#x}")
    vals = [t.rget(i, n, d) for i in range(8)]
    vs = t.var()
    t.emit(f"{vs} = ({', '.join(vals)})")
    for i in range(8):
        addr = t.sp_lin(f"(({sp0} - {(i + 1) * n}) & {sm:#x})")
        t.store(addr, n, f"{vs}[{i}]")
    sp = t.var()
    t.emit(f"{sp} = ({sp0} - {8 * n}) & {sm:#x}")
    t.set_sp(sp)
    return None


@gen(0x61)
def g_popa(t: Translator, d: Insn) -> Optional[bool]:
    if t.bits == 64:
        return t.call_helper(raise_ud, d, terminator=True)
    n = d.osz
    sm = t.sp_mask()
    sp0 = t.var()
    t.emit(f"{sp0} = R[4] & {sm:#x}")
    vs = []
    for i in range(8):
        v = t.var()
        t.emit(f"{v} = rd{n}({t.sp_lin(f'(({sp0} + {i * n}) & {sm:#x})')})")
        vs.append(v)
    for i, v in enumerate(vs):
        r = 7 - i
        if r != 4:
            t.rset(r, n, d, v)
    sp = t.var()
    t.emit(f"{sp} = ({sp0} + {8 * n}) & {sm:#x}")
    t.set_sp(sp)
    return None


# Instructions refused on purpose (x87, BCD adjust, BOUND, SALC, ICEBP, 3DNow!, SSE...):
# anything without a generator ends in INTERNAL_ERROR/EMULATION, like KVM's emulator.
@gen(0x62)
def g_bound(t: Translator, d: Insn) -> bool:
    if t.bits == 64:  # EVEX in 64-bit mode: AVX-512
        return t.call_helper(unimplemented, d, terminator=True)
    return t.call_helper(unimplemented, d, terminator=True)  # BOUND is not emulated


@gen(0x27, 0x2F, 0x37, 0x3F, 0xD4, 0xD5, 0xD6)
def g_bcd(t: Translator, d: Insn) -> Optional[bool]:
    if t.bits == 64:
        return t.call_helper(raise_ud, d, terminator=True)
    imm = d.imm if d.opc in (0xD4, 0xD5) else 0
    t.emit(f"H.bcd(c, {d.opc}, {imm})")
    return None

