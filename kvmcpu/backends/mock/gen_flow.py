"""Generators for control flow and the stack: Jcc/JMP/CALL/RET/LOOP, PUSH/POP,
ENTER/LEAVE and the FF group."""

from __future__ import annotations

from typing import Optional

from .codegen import M, Translator, gen, sx8
from .decode import Insn


def ip_mask(t: Translator, d: Insn) -> int:
    if t.bits == 64:
        return 0xFFFFFFFFFFFFFFFF
    return M[d.osz]


def _rel(d: Insn) -> int:
    v = d.imm
    if d.opc < 0x100 and d.opc != 0xE8 and d.opc != 0xE9:
        v = v - 0x100 if v & 0x80 else v  # rel8
    return v


def _target(t: Translator, d: Insn) -> int:
    return (d.next_ip + _rel(d)) & ip_mask(t, d)


def cond_expr(t: Translator, cc: int) -> str:
    if cc in (4, 5):  # Z / NZ from the lazy result when possible
        z = t.var()
        t.emit(f"{z} = c.lz")
        t.emit(f"{z} = ({z}[3] == 0) if {z} is not None else bool(c.fl & 0x40)")
        return z if cc == 4 else f"not {z}"
    return f"H.cond(c, {cc})"


@gen(*range(0x70, 0x80), *range(0x180, 0x190))
def g_jcc(t: Translator, d: Insn) -> Optional[bool]:
    cond = cond_expr(t, d.opc & 15)
    tgt = _target(t, d)
    if t.loop_ok and tgt != t.start_ip:
        # a side exit: the block (a trace) goes on along the fall-through path
        t.emit(f"if {cond}: c.rip = {tgt:#x}; return n + {t.k + 1}")
        return None
    return t.branch(cond, tgt, d.next_ip & ip_mask(t, d))


@gen(0xEB, 0xE9)
def g_jmp(t: Translator, d: Insn) -> Optional[bool]:
    tgt = _target(t, d)
    if t.loop_ok and tgt != t.start_ip:
        t.follow = tgt  # the trace goes on at the target (engine.translate_block)
        return None
    return t.branch(None, tgt, d.next_ip & ip_mask(t, d))


@gen(0xE8)
def g_call(t: Translator, d: Insn) -> Optional[bool]:
    t.push(f"{d.next_ip & M[d.osz]:#x}", d.osz)
    tgt = _target(t, d)
    if t.loop_ok and tgt != t.start_ip:
        # the push may have produced an exit (MMIO stack) or hit code: stop after the call
        t.emit(f"if STOP[0]: c.rip = {tgt:#x}; return n + {t.k + 1}")
        t.follow = tgt
        return None
    return t.jump(f"{tgt:#x}")


@gen(0xC3, 0xC2)
def g_ret(t: Translator, d: Insn) -> bool:
    v, sp = t.pop(d.osz)
    if d.opc == 0xC2 and d.imm:
        t.emit(f"{sp} = ({sp} + {d.imm}) & {t.sp_mask():#x}")
    t.set_sp(sp)
    return t.jump(f"{v} & {ip_mask(t, d):#x}")


@gen(0xE0, 0xE1, 0xE2, 0xE3)
def g_loop(t: Translator, d: Insn) -> bool:
    asz = d.asz
    m = M[asz]
    tgt = _target(t, d)
    nxt = d.next_ip & ip_mask(t, d)
    cnt = t.var()
    if d.opc == 0xE3:
        return t.branch(f"{t.rget(1, asz, d)} == 0", tgt, nxt)
    t.emit(f"{cnt} = ({t.rget(1, asz, d)} - 1) & {m:#x}")
    t.rset(1, asz, d, cnt)
    if d.opc == 0xE2:
        cond = f"{cnt} != 0"
    else:
        z = cond_expr(t, 4)
        cond = f"{cnt} != 0 and {'' if d.opc == 0xE1 else 'not '}{z}"
    return t.branch(cond, tgt, nxt)


# -- stack ------------------------------------------------------------------------------------
@gen(*range(0x50, 0x58))
def g_push_r(t: Translator, d: Insn) -> None:
    n = (d.opc & 7) | ((d.rex & 1) << 3)
    t.push(t.rget(n, d.osz, d), d.osz)


@gen(*range(0x58, 0x60))
def g_pop_r(t: Translator, d: Insn) -> None:
    n = (d.opc & 7) | ((d.rex & 1) << 3)
    v, sp = t.pop(d.osz)
    t.set_sp(sp)
    t.rset(n, d.osz, d, v)


@gen(0x68, 0x6A)
def g_push_imm(t: Translator, d: Insn) -> None:
    imm = sx8(d.imm) if d.opc == 0x6A else d.imm
    t.push(f"{imm & M[d.osz]:#x}", d.osz)


@gen(0x8F)
def g_pop_rm(t: Translator, d: Insn) -> Optional[bool]:
    if d.reg & 7:
        from .gen_alu import _ud

        return _ud(t, d)
    v, sp = t.pop(d.osz)
    if d.mod == 3:
        t.set_sp(sp)
        t.rset(d.rm, d.osz, d, v)
        return None
    old = t.var()
    t.emit(f"{old} = R[4]")
    t.set_sp(sp)
    t.emit("try:")
    a = t.ea(d)
    t.emit(f"    wr{d.osz}({a}, {v})")
    t.emit("except BaseException:")
    t.emit(f"    R[4] = {old}")
    t.emit("    raise")
    t.may_stop = True
    return None


@gen(0xC9)
def g_leave(t: Translator, d: Insn) -> None:
    sm = t.sp_mask()
    sp = t.var()
    v = t.var()
    t.emit(f"{sp} = R[5] & {sm:#x}")
    t.emit(f"{v} = rd{d.osz}({t.sp_lin(sp)})")
    t.emit(f"{sp} = ({sp} + {d.osz}) & {sm:#x}")
    t.set_sp(sp)
    t.rset(5, d.osz, d, v)


@gen(0xFF)
def g_grp5(t: Translator, d: Insn) -> Optional[bool]:
    from .gen_alu import _incdec, _ud
    from .transfer import far_call_jmp_mem

    op = d.reg & 7
    if op in (0, 1):
        _incdec(t, d, d.osz, op == 1, None)
        return None
    if op in (2, 4):
        sz = 8 if t.bits == 64 else d.osz
        v, _ = t.rm_read(d, sz)
        if op == 2:
            t.push(f"{d.next_ip & M[sz]:#x}", sz)
        return t.jump(f"{v} & {M[sz]:#x}")
    if op in (3, 5):
        if d.mod == 3:
            return _ud(t, d)
        t.call_helper(far_call_jmp_mem, d, terminator=True)
        return True
    if op == 6:
        sz = (2 if d.opsize_prefix else 8) if t.bits == 64 else d.osz
        v, _ = t.rm_read(d, sz)
        t.push(v, sz)
        return None
    return _ud(t, d)
