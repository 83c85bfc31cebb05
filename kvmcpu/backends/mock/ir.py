"""The compiled tier's IR: decoded instructions as small typed operations.

``lower(d, ctx)`` turns one decoded instruction into an :class:`IrInsn` (a list of
:class:`Op`), or returns None when the IR does not cover it (the block then takes
that instruction from its generator, ``codegen``). Values are SSA temporaries
(``"v12"``, assigned once per run of the block, or of each loop iteration) or
integer constants. The operations:

``get dst reg``            dst = the 64-bit register (a snapshot)
``set reg src``            the 64-bit register = src (the caller composed partial writes)
``bin dst sym a b``        dst = a sym b, sym one of + - & | ^ << >> * ==
``sext dst a bits``        dst = a (``bits`` wide) sign-extended (a Python int, unmasked)
``ld dst addr sz``         dst = memory[addr] (may fault)
``st addr sz src``         memory[addr] = src (may fault; may set STOP)
``flags kind a b r bits``  the arithmetic flags are now the lazy tuple (kind, a, b, r,
                           bits) (``state.LZ_*``); r may be None (computed from a, b
                           only where something observes it); kind may be LZ_ADC/LZ_SBB
                           with a carry temp in ``cf``
``cond dst cc``            dst = condition code cc of the current flags
``carry dst``              dst = CF of the current flags (0 or 1)
``exit target``            the block ends: RIP = target (a value)
``side cond target``       if cond: the block ends with RIP = target
``loop cond``              back to the block's start if cond (and the budget allows)

Every instruction's register writes come after its last operation that may fault, so
a fault leaves the registers as they were before the instruction (the SDM's fault
semantics); ``ir_emit`` relies on this to write the register locals back on a fault.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

from .codegen import BITS, M
from .decode import Insn
from .state import LZ_ADC, LZ_ADD, LZ_DEC, LZ_FIXED, LZ_INC, LZ_LOGIC, LZ_SBB, LZ_SUB
from .undefined import const_shift_flags

Val = Union[str, int]
M64 = 0xFFFFFFFFFFFFFFFF


class Op:
    """One IR operation (see the module docstring for the kinds)."""

    __slots__ = ("kind", "dst", "args", "extra")

    def __init__(self, kind: str, dst: Optional[str], args: Sequence[Any],
                 extra: Any = None) -> None:
        self.kind = kind
        self.dst = dst
        self.args = list(args)
        self.extra = extra

    def uses(self) -> List[str]:
        """The temporaries this operation reads."""
        out = [a for a in self.args if isinstance(a, str) and a.startswith("v")]
        if isinstance(self.extra, str):
            out.append(self.extra)
        elif isinstance(self.extra, tuple):
            out += [a for a in self.extra if isinstance(a, str) and a.startswith("v")]
        return out

    def __repr__(self) -> str:
        return f"Op({self.kind}, {self.dst}, {self.args}, {self.extra})"


class IrInsn:
    """The operations of one guest instruction, and what the emitter must know of it."""

    __slots__ = ("d", "ops", "ends", "next_ip")

    def __init__(self, d: Insn, next_ip: int) -> None:
        self.d = d
        self.ops: List[Op] = []
        self.ends = False  # its last op is an exit or loop
        self.next_ip = next_ip


class Ctx:
    """What lowering needs of the block: the mode and where the block starts."""

    def __init__(self, bits: int, stack_bits: int, vendor: str, start_ip: int,
                 loop_ok: bool) -> None:
        self.bits = bits
        self.stack_bits = stack_bits
        self.vendor = vendor
        self.start_ip = start_ip
        self.loop_ok = loop_ok
        self.tmp = 0
        #: set by a direct JMP/CALL: the block goes on at this RIP when it can
        self.follow: Optional[int] = None


class _B:
    """Builds one instruction's operations."""

    def __init__(self, ctx: Ctx, d: Insn) -> None:
        self.ctx = ctx
        self.d = d
        self.ins = IrInsn(d, d.next_ip & self.ip_mask())

    def ip_mask(self) -> int:
        return M64 if self.ctx.bits == 64 else M[self.d.osz]

    def v(self) -> str:
        self.ctx.tmp += 1
        return f"v{self.ctx.tmp}"

    def op(self, kind: str, args: Sequence[Any], extra: Any = None,
           dst: bool = True) -> str:
        name = self.v() if dst else None
        self.ins.ops.append(Op(kind, name, args, extra))
        return name or ""

    def bin(self, sym: str, a: Val, b: Val) -> Val:
        if isinstance(a, int) and isinstance(b, int):
            return _fold(sym, a, b)
        return self.op("bin", [sym, a, b])

    def mask(self, a: Val, sz: int) -> Val:
        return self.bin("&", a, M[sz])

    # -- registers ----------------------------------------------------------------------
    def rget(self, n: int, sz: int) -> Val:
        d = self.d
        if sz == 1 and 4 <= n < 8 and not d.rex:
            full = self.op("get", [n - 4])  # AH CH DH BH
            return self.mask(self.bin(">>", full, 8), 1)
        full = self.op("get", [n])
        return full if sz == 8 else self.mask(full, sz)

    def rset(self, n: int, sz: int, val: Val) -> None:
        """Write a value already masked to ``sz`` bytes (32-bit writes zero-extend)."""
        d = self.d
        if sz >= 4:
            self.op("set", [n, val], dst=False)
            return
        if sz == 1 and 4 <= n < 8 and not d.rex:
            old = self.op("get", [n - 4])
            val = self.bin("|", self.bin("&", old, 0xFFFFFFFFFFFF00FF), self.bin("<<", val, 8))
            self.op("set", [n - 4, val], dst=False)
            return
        old = self.op("get", [n])
        keep = 0xFFFFFFFFFFFFFF00 if sz == 1 else 0xFFFFFFFFFFFF0000
        self.op("set", [n, self.bin("|", self.bin("&", old, keep), val)], dst=False)

    # -- memory -------------------------------------------------------------------------
    def offset(self, extra: int = 0) -> Val:
        d = self.d
        amask = M[d.asz]
        if d.riprel:
            return (d.next_ip + d.disp + extra) & amask
        acc = (d.disp + extra) & M64
        terms: List[Val] = []
        if d.base >= 0:
            terms.append(self.op("get", [d.base]))
        if d.index >= 0:
            ix: Val = self.op("get", [d.index])
            if d.scale != 1:
                ix = self.bin("*", ix, d.scale)
            terms.append(ix)
        if not terms:
            return acc & amask
        v = terms[0]
        for t in terms[1:]:
            v = self.bin("+", v, t)
        if acc:
            v = self.bin("+", v, acc)
        return self.bin("&", v, amask)

    def ea(self, extra: int = 0) -> Val:
        d = self.d
        off = self.offset(extra)
        if self.ctx.bits == 64:
            if d.seg in (4, 5):
                return self.bin("&", self.bin("+", off, self.op("seg", [d.seg])), M64)
            return off
        seg = d.seg if d.seg >= 0 else (2 if d.ss_default else 3)
        return self.bin("&", self.bin("+", off, self.op("seg", [seg])), 0xFFFFFFFF)

    def load(self, addr: Val, sz: int) -> str:
        return self.op("ld", [addr, sz])

    def store(self, addr: Val, sz: int, val: Val) -> None:
        self.op("st", [addr, sz, val], dst=False)

    def rm_read(self, sz: int) -> tuple:  # type: ignore[type-arg]
        d = self.d
        if d.mod == 3:
            return self.rget(d.rm, sz), None
        a = self.ea()
        return self.load(a, sz), a

    def rm_write(self, sz: int, addr: Optional[Val], val: Val) -> None:
        d = self.d
        if d.mod == 3:
            self.rset(d.rm, sz, val)
        else:
            self.store(addr if addr is not None else self.ea(), sz, val)

    # -- stack --------------------------------------------------------------------------
    def sp_lin(self, sp: Val) -> Val:
        if self.ctx.bits == 64:
            return sp
        return self.bin("&", self.bin("+", sp, self.op("seg", [2])), 0xFFFFFFFF)

    def set_sp(self, sp: Val) -> None:
        if self.ctx.stack_bits == 16:
            old = self.op("get", [4])
            self.op("set", [4, self.bin("|", self.bin("&", old, 0xFFFFFFFFFFFF0000), sp)],
                    dst=False)
        else:
            self.op("set", [4, sp], dst=False)

    def push(self, val: Val, sz: int) -> None:
        sm = M[self.ctx.stack_bits // 8]
        sp = self.bin("&", self.bin("-", self.op("get", [4]), sz), sm)
        self.store(self.sp_lin(sp), sz, val)
        self.set_sp(sp)

    def pop(self, sz: int) -> tuple:  # type: ignore[type-arg]
        sm = M[self.ctx.stack_bits // 8]
        sp = self.bin("&", self.op("get", [4]), sm)
        v = self.load(self.sp_lin(sp), sz)
        return v, self.bin("&", self.bin("+", sp, sz), sm)

    # -- flags and control ----------------------------------------------------------------
    def flags(self, kind: int, a: Val, b: Val, r: Optional[Val], sz: int,
              cf: Optional[str] = None) -> None:
        self.ins.ops.append(Op("flags", None, [kind, a, b, r, BITS[sz]], cf))

    def exit(self, target: Val) -> None:
        self.op("exit", [target], dst=False)
        self.ins.ends = True


def _fold(sym: str, a: int, b: int) -> int:
    if sym == "+":
        return a + b
    if sym == "-":
        return a - b
    if sym == "&":
        return a & b
    if sym == "|":
        return a | b
    if sym == "^":
        return a ^ b
    if sym == "<<":
        return a << b
    if sym == ">>":
        return a >> b
    if sym == "*":
        return a * b
    return int(a != b)


# -- lowering ---------------------------------------------------------------------------
_ALU_RM = frozenset((0x00, 0x01, 0x08, 0x09, 0x10, 0x11, 0x18, 0x19, 0x20, 0x21, 0x28, 0x29,
                     0x30, 0x31, 0x38, 0x39))
_ALU_R = frozenset(o + 2 for o in _ALU_RM)
_ALU_ACC = frozenset(o + 4 for o in _ALU_RM)
_JCC = frozenset([*range(0x70, 0x80), *range(0x180, 0x190)])


def _alu(b: _B, op: int, a: Val, x: Val, sz: int) -> Optional[Val]:
    """ALU op ``op`` (ADD OR ADC SBB AND SUB XOR CMP) on a, x; the result (None: CMP)."""
    m = M[sz]
    if op == 0:
        r = b.mask(b.bin("+", a, x), sz)
        b.flags(LZ_ADD, a, x, r, sz)
        return r
    if op in (1, 4, 6):
        r = b.bin({1: "|", 4: "&", 6: "^"}[op], a, x)
        b.flags(LZ_LOGIC, 0, 0, r, sz)
        return r
    if op in (2, 3):
        cf = b.op("carry", [])
        r = b.bin("&", b.bin("+" if op == 2 else "-", b.bin("+" if op == 2 else "-", a, x), cf),
                  m)
        b.flags(LZ_ADC if op == 2 else LZ_SBB, a, x, r, sz, cf)
        return r
    if op == 5:
        r = b.mask(b.bin("-", a, x), sz)
        b.flags(LZ_SUB, a, x, r, sz)
        return r
    b.flags(LZ_SUB, a, x, None, sz)  # CMP: the result only where it is observed
    return None


def lower(d: Insn, ctx: Ctx) -> Optional[IrInsn]:
    """The IR of ``d``, or None when the IR does not cover it (see the module doc)."""
    if d.lock:
        return None
    o = d.opc
    b = _B(ctx, d)
    sz = 1 if o & 1 == 0 else d.osz
    if o in _ALU_RM or o in (0x80, 0x81, 0x82, 0x83):
        if o >= 0x80:
            sz = 1 if o in (0x80, 0x82) else d.osz
            if o == 0x82 and ctx.bits == 64:
                return None
            imm = d.imm
            if o == 0x83 and imm & 0x80:
                imm -= 0x100
            op = d.reg & 7
            x: Val = imm & M[sz]
        else:
            op = o >> 3
            x = b.rget(d.reg, sz)
        a, addr = b.rm_read(sz)
        r = _alu(b, op, a, x, sz)
        if r is not None:
            # the flags op goes after the write (a faulting store changes nothing)
            fl = b.ins.ops.pop()
            b.rm_write(sz, addr, r)
            b.ins.ops.append(fl)
    elif o in _ALU_R or o in _ALU_ACC:
        op = o >> 3
        if o in _ALU_R:
            x, _ = b.rm_read(sz)
            dst = d.reg
        else:
            x = d.imm & M[sz]
            dst = 0
        a = b.rget(dst, sz)
        r = _alu(b, op, a, x, sz)
        if r is not None:
            fl = b.ins.ops.pop()
            b.rset(dst, sz, r)
            b.ins.ops.append(fl)
    elif o in (0x84, 0x85, 0xA8, 0xA9):
        if o in (0x84, 0x85):
            a, _ = b.rm_read(sz)
            x = b.rget(d.reg, sz)
        else:
            a, x = b.rget(0, sz), d.imm & M[sz]
        b.flags(LZ_LOGIC, a, x, None, sz)  # r = a & x where observed
    elif o in (0x88, 0x89):
        b.rm_write(sz, None, b.rget(d.reg, sz))
    elif o in (0x8A, 0x8B):
        v, _ = b.rm_read(sz)
        b.rset(d.reg, sz, v)
    elif o in (0xC6, 0xC7):
        if d.reg & 7:
            return None
        b.rm_write(sz, None, d.imm & M[sz])
    elif 0xB0 <= o <= 0xBF:
        sz = 1 if o < 0xB8 else d.osz
        b.rset((o & 7) | ((d.rex & 1) << 3), sz, d.imm & M[sz])
    elif o == 0x8D:
        if d.mod == 3:
            return None
        b.rset(d.reg, d.osz, b.mask(b.offset(), d.osz))
    elif o in (0x1B6, 0x1B7, 0x1BE, 0x1BF):
        ssz = 1 if o in (0x1B6, 0x1BE) else 2
        v, _ = b.rm_read(ssz)
        if o >= 0x1BE:
            v = b.mask(b.op("sext", [v, BITS[ssz]]), d.osz)
        b.rset(d.reg, d.osz, v)
    elif o == 0x63:
        if ctx.bits != 64:
            return None
        v, _ = b.rm_read(4)
        if d.osz == 8:
            v = b.mask(b.op("sext", [v, 32]), 8)
        b.rset(d.reg, d.osz, v)
    elif 0x40 <= o <= 0x4F:
        _incdec(b, d.osz, o >= 0x48, o & 7)
    elif o in (0xFE, 0xFF) and d.reg & 7 < 2:
        _incdec(b, 1 if o == 0xFE else d.osz, d.reg & 7 == 1, None)
    elif o in (0xF6, 0xF7) and d.reg & 7 < 4:
        op = d.reg & 7
        a, addr = b.rm_read(sz)
        if op < 2:
            b.flags(LZ_LOGIC, a, d.imm & M[sz], None, sz)
        elif op == 2:
            b.rm_write(sz, addr, b.bin("^", a, M[sz]))
        else:
            r = b.mask(b.bin("-", 0, a), sz)
            b.rm_write(sz, addr, r)
            b.flags(LZ_SUB, 0, a, r, sz)
    elif o in (0xC0, 0xC1, 0xD0, 0xD1):
        if not _shift(b, d, ctx):
            return None
    elif 0x50 <= o <= 0x57:
        b.push(b.rget((o & 7) | ((d.rex & 1) << 3), d.osz), d.osz)
    elif 0x58 <= o <= 0x5F:
        v, sp = b.pop(d.osz)
        b.set_sp(sp)
        b.rset((o & 7) | ((d.rex & 1) << 3), d.osz, v)
    elif o in (0x68, 0x6A):
        imm = d.imm - 0x100 if o == 0x6A and d.imm & 0x80 else d.imm
        b.push(imm & M[d.osz], d.osz)
    elif o == 0x90:
        if d.rex & 1:
            return None  # xchg r8, rax
    elif 0x190 <= o <= 0x19F:
        c = b.op("cond", [o & 15])
        b.rm_write(1, None, b.op("select", [c, 1, 0]))
    elif 0x140 <= o <= 0x14F:
        return _cmov(b, d)
    elif o in _JCC or o in (0xEB, 0xE9, 0xE8, 0xC3, 0xC2, 0xE2):
        return _flow(b, d, ctx)
    else:
        return None
    return b.ins


#: Opcodes whose normal completion cannot change what the run loop checks between blocks
#: (IF, TF, the interrupt shadow, the mode, pending events, the kick): after a block of
#: these the next block runs without those checks (engine.execute). Faults and exits
#: leave a block another way and are not concerned.
_CHAIN_SAFE = frozenset([*_ALU_RM, *_ALU_R, *_ALU_ACC, *range(0x40, 0x60), *range(0x70, 0x80),
                         *range(0x80, 0x8C), 0x8D, *range(0x90, 0x9A), 0xA8, 0xA9,
                         *range(0xB0, 0xC0), 0xC0, 0xC1, 0xC2, 0xC3, 0xC6, 0xC7, 0xD0, 0xD1,
                         0xD2, 0xD3, 0xE2, 0xE8, 0xE9, 0xEB, 0xF6, 0xF7, 0xF8, 0xF9, 0xFC,
                         0xFE, 0x68, 0x69, 0x6A, 0x6B, *range(0x140, 0x150),
                         *range(0x180, 0x1A0), 0x1AF, 0x1B6, 0x1B7, 0x1BE, 0x1BF,
                         # MOVSXD, LEAVE, the hint NOPs (the kernel's ftrace sites, ENDBR64),
                         # FWAIT, BT*, BSF/BSR, POPCNT, BSWAP, SHLD/SHRD, XADD, CMPXCHG:
                         # registers, flags and memory only
                         0x63, 0xC9, 0x10D, *range(0x118, 0x120), 0x9B, 0x1A3, 0x1AB,
                         0x1B3, 0x1BB, 0x1BA, 0x1BC, 0x1BD, 0x1B8, *range(0x1C8, 0x1D0),
                         0x1A4, 0x1A5, 0x1AC, 0x1AD, 0x1C0, 0x1C1, 0x1B0, 0x1B1])


def chain_safe(d: Insn) -> bool:
    """Whether ``d`` is one of _CHAIN_SAFE's (FF: INC/DEC/near CALL/JMP/PUSH only)."""
    o = d.opc
    if o == 0xFF:
        return d.reg & 7 in (0, 1, 2, 4, 6)
    return o in _CHAIN_SAFE


def _incdec(b: _B, sz: int, dec: bool, reg: Optional[int]) -> None:
    if reg is None:
        a, addr = b.rm_read(sz)
    else:
        a, addr = b.rget(reg, sz), None
    r = b.mask(b.bin("-" if dec else "+", a, 1), sz)
    if reg is None:
        b.rm_write(sz, addr, r)
    else:
        b.rset(reg, sz, r)
    b.flags(LZ_DEC if dec else LZ_INC, a, 0, r, sz)  # b: the CF before (ir_emit)


def _shift(b: _B, d: Insn, ctx: Ctx) -> bool:
    """SHL/SHR/SAR by a constant 0 < count < bits (the rest: the generator)."""
    sz = 1 if d.opc in (0xC0, 0xD0) else d.osz
    bits = BITS[sz]
    op = d.reg & 7
    cnt = d.imm if d.opc in (0xC0, 0xC1) else 1
    count = cnt & (0x3F if bits == 64 else 0x1F)
    if op not in (4, 5, 6, 7) or not 0 < count < bits:
        return False
    a, addr = b.rm_read(sz)
    if op in (4, 6):
        r = b.mask(b.bin("<<", a, count), sz)
        cf: Val = b.bin("&", b.bin(">>", a, bits - count), 1)
    elif op == 5:
        r = b.bin(">>", a, count)
        cf = b.bin("&", b.bin(">>", a, count - 1), 1)
    else:
        s = b.op("sext", [a, bits])
        r = b.mask(b.bin(">>", s, count), sz)
        cf = b.bin("&", b.bin(">>", s, count - 1), 1)
    of_expr, af = const_shift_flags(ctx.vendor, op, count, bits)
    b.rm_write(sz, addr, r)
    # CF|OF|AF as an expression over a, r, cf: computed only where the flags are observed
    b.ins.ops.append(Op("flags", None, [LZ_FIXED, cf, 0, r, bits], (of_expr, af, a)))
    return True


def _cmov(b: _B, d: Insn) -> IrInsn:
    sz = d.osz
    v, _ = b.rm_read(sz)
    c = b.op("cond", [d.opc & 15])
    old = b.rget(d.reg, sz)
    # a 32-bit CMOV zero-extends the destination whether or not it moves
    b.rset(d.reg, sz, b.op("select", [c, v, old]))
    return b.ins


def _rel(d: Insn) -> int:
    v = d.imm
    if d.opc < 0x100 and d.opc not in (0xE8, 0xE9):
        v = v - 0x100 if v & 0x80 else v
    return v


def _flow(b: _B, d: Insn, ctx: Ctx) -> Optional[IrInsn]:
    o = d.opc
    ipm = b.ip_mask()
    nxt = d.next_ip & ipm
    if o in (0xC3, 0xC2):
        v, sp = b.pop(d.osz)
        if o == 0xC2 and d.imm:
            sp = b.bin("&", b.bin("+", sp, d.imm), M[ctx.stack_bits // 8])
        b.set_sp(sp)
        b.exit(b.bin("&", v, ipm))
        return b.ins
    tgt = (d.next_ip + _rel(d)) & ipm
    if o == 0xE8:
        b.push(d.next_ip & M[d.osz], d.osz)
        if ctx.loop_ok and tgt != ctx.start_ip:
            ctx.follow = tgt
            b.ins.next_ip = tgt  # an exit after the push (STOP) goes on at the target
            return b.ins
        b.exit(tgt)
        return b.ins
    if o in (0xEB, 0xE9):
        if ctx.loop_ok and tgt != ctx.start_ip:
            ctx.follow = tgt
            return b.ins
        b.op("branch", [None, tgt, nxt], dst=False)  # to the block's start: the loop
        b.ins.ends = True
        return b.ins
    if o == 0xE2:
        cnt = b.mask(b.bin("-", b.rget(1, d.asz), 1), d.asz)
        b.rset(1, d.asz, cnt)
        b.op("branch", [b.bin("!=", cnt, 0), tgt, nxt], dst=False)  # LOOP ends the block
        b.ins.ends = True
        return b.ins
    cond: Val = b.op("cond", [o & 15])
    if ctx.loop_ok and tgt != ctx.start_ip:
        b.op("side", [cond, tgt], dst=False)  # a side exit; the block goes on
        return b.ins
    b.op("branch", [cond, tgt, nxt], dst=False)
    b.ins.ends = True
    return b.ins


__all__ = ["Ctx", "IrInsn", "Op", "lower"]
