"""Instruction generators' interface: x86 instructions -> lines of Python.

A block is the run of instructions from one entry point up to (and including)
the first control transfer, system instruction or page end. Each instruction
is turned into a few lines of Python by the generator registered for its
opcode (``gen_*`` modules): tier 0 binds them per instruction (tier0.py), the
compiled tier places them inside the block function ``ir_emit`` makes for the
instructions its IR does not cover, and ``compile_block`` compiles that. The
block function returns how many instructions it retired; on an exception it
leaves ``c.rip`` at the faulting instruction and ``c.kdone`` at the number
retired before it.

Generated code sees these globals: ``c`` (CpuState), ``R`` (the register
list), ``SB`` (segment bases), ``rd1..rd8``/``wr1..wr8`` (memory at the
block's privilege), ``STOP`` (set when an instruction produced an exit that
must be returned after it completes), ``E`` (the engine), ``H`` (the helpers of
the engine's vendor profile: helpers.py + one table of undefined.py) and
per-block constants ``K0, K1, ...``.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from .decode import Insn

M = {1: 0xFF, 2: 0xFFFF, 4: 0xFFFFFFFF, 8: 0xFFFFFFFFFFFFFFFF}
SGN = {1: 0x80, 2: 0x8000, 4: 0x80000000, 8: 0x8000000000000000}
BITS = {1: 8, 2: 16, 4: 32, 8: 64}
KEEP = {1: 0xFFFFFFFFFFFFFF00, 2: 0xFFFFFFFFFFFF0000}

#: opcode -> generator(t, d). Generators emit lines through ``t`` and return
#: True when the instruction ends the block (they then set c.rip and return).
GENERATORS: Dict[int, Callable[["Translator", Insn], Optional[bool]]] = {}


def gen(*opcodes: int) -> Callable[[Callable[["Translator", Insn], Optional[bool]]],
                                    Callable[["Translator", Insn], Optional[bool]]]:
    """Register a generator for ``opcodes``."""
    def deco(f: Callable[["Translator", Insn], Optional[bool]]
             ) -> Callable[["Translator", Insn], Optional[bool]]:
        for o in opcodes:
            if o in GENERATORS:
                raise AssertionError(f"opcode {o:#x} registered twice")
            GENERATORS[o] = f
        return f
    return deco


def sx8(imm: Any) -> Any:
    """An 8-bit immediate (0..255, as decoded) sign-extended, without a branch on its
    value (tier 0 binds it parametrically: tier0._Sym)."""
    return ((imm + 0x80) & 0xFF) - 0x80


class Translator:
    """Emits the source of one block. One instance per block."""

    def __init__(self, bits: int, stack_bits: int, cpl: int, pe: bool, long_mode: bool,
                 vendor: str = "amd") -> None:
        self.bits = bits
        #: the vendor profile's name: generators ask undefined.py for its inline code
        self.vendor = vendor
        self.stack_bits = stack_bits
        self.cpl = cpl
        self.pe = pe
        self.long_mode = long_mode
        self.lines: List[str] = []
        self.consts: List[Any] = []
        self.k = 0  # index of the instruction being generated
        self.tmp = 0
        self.ips: List[int] = []
        self.ended = False
        self.may_stop = False  # the current instruction may set STOP
        self.start_ip = -1
        self.loop_ok = False  # a branch back to start_ip may loop inside the function
        #: set by a direct JMP/CALL: the translator continues at this RIP when it can
        self.follow: Optional[int] = None

    # -- emission -----------------------------------------------------------------
    def emit(self, line: str) -> None:
        self.lines.append("        " + line)

    def const(self, value: Any) -> str:
        self.consts.append(value)
        return f"K{len(self.consts) - 1}"

    def var(self) -> str:
        self.tmp += 1
        return f"t{self.tmp}"

    def stop_check(self, d: Insn) -> None:
        """After an instruction that may produce an exit: return if it did."""
        self.emit(f"if STOP[0]: c.rip = {d.next_ip:#x}; return n + {self.k + 1}")

    def jump(self, target_expr: str) -> bool:
        self.emit(f"c.rip = {target_expr}")
        self.emit(f"return n + {self.k + 1}")
        return True

    def branch(self, cond: Optional[str], target: int, fallthrough: int) -> bool:
        """End the block with a (conditional) branch (a loop back to the block's start
        is the compiled tier's: ir_emit)."""
        if cond is None:
            return self.jump(f"{target:#x}")
        return self.jump(f"{target:#x} if {cond} else {fallthrough:#x}")

    # -- registers ------------------------------------------------------------------
    def rget(self, n: int, sz: int, d: Insn) -> str:
        if sz == 8:
            return f"R[{n}]"
        if sz == 1 and 4 <= n < 8 and not d.rex:
            return f"((R[{n - 4}] >> 8) & 0xFF)"
        return f"(R[{n}] & {M[sz]:#x})"

    def rset(self, n: int, sz: int, d: Insn, expr: str) -> None:
        """Assign a value that is already masked to ``sz`` bytes."""
        if sz >= 4:
            self.emit(f"R[{n}] = {expr}")
        elif sz == 1 and 4 <= n < 8 and not d.rex:
            self.emit(f"R[{n - 4}] = (R[{n - 4}] & 0xFFFFFFFFFFFF00FF) | ({expr} << 8)")
        else:
            self.emit(f"R[{n}] = (R[{n}] & {KEEP[sz]:#x}) | {expr}")

    # -- memory operands --------------------------------------------------------------
    def seg_of(self, d: Insn) -> int:
        if d.seg >= 0:
            return d.seg
        return 2 if d.ss_default else 3

    def offset(self, d: Insn, extra: int = 0) -> str:
        """Expression of the effective address (offset, no segment base), masked."""
        amask = M[d.asz]
        if d.riprel:
            return f"{(d.next_ip + d.disp + extra) & amask:#x}"
        parts = []
        if d.base >= 0:
            parts.append(f"R[{d.base}]")
        if d.index >= 0:
            parts.append(f"R[{d.index}]" + (f" * {d.scale}" if d.scale != 1 else ""))
        disp = d.disp + extra
        if not parts:
            return f"{disp & amask:#x}"
        if disp.__class__ is not int:  # tier 0's symbol (tier0._Sym): whatever its value
            parts.append(f"{disp:#x}")
        elif disp:
            parts.append(f"{disp:#x}" if disp >= 0 else f"{disp}")
        if len(parts) == 1 and d.asz == 8:
            return parts[0]
        return f"(({' + '.join(parts)}) & {amask:#x})"

    def ea(self, d: Insn, extra: int = 0) -> str:
        """Expression of the linear address of d's memory operand (+ extra bytes)."""
        off = self.offset(d, extra)
        if self.bits == 64:
            if d.seg in (4, 5):
                return f"(({off} + SB[{d.seg}]) & 0xFFFFFFFFFFFFFFFF)"
            return off
        return f"(({off} + SB[{self.seg_of(d)}]) & 0xFFFFFFFF)"

    def addr(self, d: Insn, extra: int = 0) -> str:
        """Compute the address into a temporary; return its name."""
        a = self.var()
        self.emit(f"{a} = {self.ea(d, extra)}")
        return a

    def load(self, addr: str, sz: int) -> str:
        return f"rd{sz}({addr})"

    def store(self, addr: str, sz: int, expr: str) -> None:
        self.emit(f"wr{sz}({addr}, {expr})")
        self.may_stop = True

    # -- r/m operand helpers ------------------------------------------------------------
    def rm_read(self, d: Insn, sz: int) -> Tuple[str, Optional[str]]:
        """Load the r/m operand into a temp; returns (value var, address var or None)."""
        v = self.var()
        if d.mod == 3:
            self.emit(f"{v} = {self.rget(d.rm, sz, d)}")
            return v, None
        a = self.addr(d)
        self.inline_load(v, a, sz)
        return v, a

    def inline_load(self, v: str, a: str, sz: int) -> None:
        """v = [a] with the TLB hit path inlined (a must be a variable)."""
        p = self.var()
        self.emit(f"{p} = TR({a} >> 12)")
        if sz == 1:
            self.emit(f"{v} = {p}[{a} & 0xFFF] if {p} is not None else rd1({a})")
            return
        self.emit(f"if {p} is not None and ({a} & 0xFFF) <= {4096 - sz}: "
                  f"{v} = U{sz}({p}, {a} & 0xFFF)[0]")
        self.emit(f"else: {v} = rd{sz}({a})")

    def inline_store(self, a: str, sz: int, expr: str) -> None:
        """[a] = expr with the TLB hit path inlined (a must be a variable)."""
        p = self.var()
        self.emit(f"{p} = TW({a} >> 12)")
        if sz == 1:
            self.emit(f"if {p} is not None: {p}[{a} & 0xFFF] = {expr}")
        else:
            self.emit(f"if {p} is not None and ({a} & 0xFFF) <= {4096 - sz}: "
                      f"P{sz}({p}, {a} & 0xFFF, {expr})")
        self.emit(f"else: wr{sz}({a}, {expr})")
        self.may_stop = True

    def rm_write(self, d: Insn, sz: int, addr: Optional[str], expr: str) -> None:
        if d.mod == 3:
            self.rset(d.rm, sz, d, expr)
        else:
            if addr is None:
                addr = self.addr(d)
            self.inline_store(addr, sz, expr)

    # -- stack ----------------------------------------------------------------------------
    def sp_mask(self) -> int:
        return M[self.stack_bits // 8]

    def sp_lin(self, sp_expr: str) -> str:
        if self.bits == 64:
            return sp_expr
        return f"(({sp_expr}) + SB[2]) & 0xFFFFFFFF"

    def push(self, expr: str, sz: int) -> None:
        sm = self.sp_mask()
        sp = self.var()
        val = self.var()
        self.emit(f"{val} = {expr}")
        self.emit(f"{sp} = (R[4] - {sz}) & {sm:#x}")
        self.store(self.sp_lin(sp), sz, val)
        self.set_sp(sp)

    def set_sp(self, sp: str) -> None:
        if self.stack_bits == 16:
            self.emit(f"R[4] = (R[4] & 0xFFFFFFFFFFFF0000) | {sp}")
        else:
            self.emit(f"R[4] = {sp}")

    def pop(self, sz: int) -> Tuple[str, str]:
        """Read the top of stack; returns (value var, new-sp var). Caller commits with set_sp."""
        sm = self.sp_mask()
        v = self.var()
        sp = self.var()
        self.emit(f"{sp} = R[4] & {sm:#x}")
        self.emit(f"{v} = rd{sz}({self.sp_lin(sp)})")
        self.emit(f"{sp} = ({sp} + {sz}) & {sm:#x}")
        return v, sp

    # -- flags --------------------------------------------------------------------------------
    def lazy(self, kind: int, a: str, b: str, r: str, sz: int) -> None:
        self.emit(f"c.lz = ({kind}, {a}, {b}, {r}, {BITS[sz]})")

    def call_helper(self, fn: Callable[..., Any], d: Insn, terminator: bool = False) -> bool:
        """Run a Python helper ``fn(E, d)``; terminators set c.rip themselves."""
        f = self.const(fn)
        dd = self.const(d)
        self.emit(f"{f}(E, {dd})")
        if terminator:
            self.emit(f"return n + {self.k + 1}")
            return True
        self.may_stop = True
        return False


def compile_block(src: str, namespace: Dict[str, Any], consts: List[Any],
                  ips: List[int]) -> Callable[[int], int]:
    g = dict(namespace)
    for i, v in enumerate(consts):
        g[f"K{i}"] = v
    g["IPS"] = tuple(ips)
    code = compile(src, "<mock-block>", "exec")
    exec(code, g)  # noqa: S102 - our own generated source
    fn: Callable[[int], int] = g["blk"]
    return fn
