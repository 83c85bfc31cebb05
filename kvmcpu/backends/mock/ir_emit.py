"""The compiled tier's one emitter: a block's optimized IR -> the block function's source.

The block function has the contract of ``codegen`` (``blk(lim)`` returns the
instructions retired; on an exception ``c.rip`` is the faulting instruction's RIP and
``c.kdone`` the instructions retired before it). Here:

* the general registers the block touches live in Python locals ``r0..r15`` for the
  whole block (and loop): loaded at entry, written back at every exit, before an
  instruction made by its generator (which reads ``R``; the locals are reloaded after
  it), and in the fault path. Because an instruction's register writes follow its
  last operation that may fault, the locals hold exactly the state before the
  faulting instruction there.
* the arithmetic flags are tracked statically: at each point the emitter knows which
  flags operation produced them (or that they are in ``c.lz``/``c.fl``), evaluates a
  condition directly from that operation's operands (``cmp; jb`` is ``a < b``) and
  stores the lazy tuple (``c.lz``) only where the block is left: at exits and, for
  the state before the faulting instruction, in the fault path.
* the TLB hit path of loads and stores is inline; the slow path sets ``k`` (the
  instruction that may fault) and, after a store, checks ``STOP`` (an MMIO or
  code-page write: the block ends after the instruction).
* a branch back to the block's start is a ``while`` loop over the locals, bounded by
  ``lim`` (the instruction budget, exactly) and kicks (seen within ``KICK_EVERY``
  instructions: the back edge compares ``n`` with one bound, ``chk``, below both).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Set, Tuple

from .ir import IrInsn, Op, Val
from .ir_opt import Item, Raw, optimize
from .state import LZ_ADC, LZ_ADD, LZ_DEC, LZ_FIXED, LZ_INC, LZ_LOGIC, LZ_SBB, LZ_SUB

_SIGN = {8: 0x80, 16: 0x8000, 32: 0x80000000, 64: 0x8000000000000000}
_MASK = {8: 0xFF, 16: 0xFFFF, 32: 0xFFFFFFFF, 64: 0xFFFFFFFFFFFFFFFF}
_TOPCF = "\x00TOPCF\x00"  # placeholder: the CF before the loop's top (resolved later)

#: flag states: ("mem",) the flags are in c.lz/c.fl; ("top",) at the loop's top (the
#: block's entry state on the first iteration, the bottom's after); ("prod", op, cfsrc)
State = Tuple[Any, ...]
MEM: State = ("mem",)
TOP: State = ("top",)


#: a compiled loop looks for a kick (MockVcpu.kick, from another thread) at least this
#: often (instructions), not on every iteration; the budget it checks on every one
KICK_EVERY = 4096


def _lit(v: int) -> str:
    return str(v) if -10 < v < 10 else f"{v:#x}"


class Emitter:
    def __init__(self, items: Sequence[Item], start_ip: int, loop_ok: bool,
                 next_ip: int, ended: bool) -> None:
        self.items = items
        self.start_ip = start_ip
        self.loop_ok = loop_ok
        self.next_ip = next_ip
        self.ended = ended
        self.regs: Set[int] = set()
        self.written: Set[int] = set()
        for it in items:
            if isinstance(it, IrInsn):
                for op in it.ops:
                    if op.kind == "get":
                        self.regs.add(op.args[0])
                    elif op.kind == "set":
                        self.regs.add(op.args[0])
                        self.written.add(op.args[0])
        self.looping = any(isinstance(it, IrInsn) and it.ops and it.ops[-1].kind == "branch"
                           and it.ops[-1].args[1] == start_ip and loop_ok for it in items)
        self.bottom: State = MEM  # the state at the loop's back edge
        self.top_state: State = TOP
        self.state: State = MEM
        self.out: List[str] = []
        self.names: Dict[str, str] = {}
        self.snap: Set[str] = set()
        self.alias: Set[str] = set()
        self.tmp = 0
        #: per instruction that may fault: the flags state and the dirty registers before it
        self.fault_states: Dict[int, Tuple[State, Tuple[int, ...]]] = {}
        self.loop_cnt = 0
        #: register -> "clean" (the local is R's value), "dirty" (the local is newer) or
        #: "stale" (R is newer: after a generator-made instruction, or before first use)
        self.rs: Dict[int, str] = {}
        self.top_cf = "p0"
        self.need_p0 = False

    # -- values ---------------------------------------------------------------------------
    def val(self, v: Val) -> str:
        if isinstance(v, int):
            return _lit(v)
        return self.names.get(v, v)

    def line(self, ind: int, text: str) -> None:
        self.out.append("    " * ind + text)

    # -- flags --------------------------------------------------------------------------
    def tup(self, st: State) -> str:
        """The lazy-flags tuple of a ("prod", ...) state."""
        op: Op = st[1]
        kind, a, b, r, bits = op.args
        m = _MASK[bits]
        A, B = self.val(a), self.val(b)
        if kind == LZ_SUB and r is None:
            R = f"(({A} - {B}) & {m:#x})"
        elif kind == LZ_LOGIC and r is None:
            R = f"({A} & {B})"
            A = B = "0"
        else:
            R = self.val(r)
        k = str(kind)
        if kind in (LZ_ADC, LZ_SBB):
            k = f"({kind} if {self.val(op.extra)} else {LZ_ADD if kind == LZ_ADC else LZ_SUB})"
        elif kind in (LZ_INC, LZ_DEC):
            B = st[2]
        elif kind == LZ_FIXED:
            of_expr, af, x = op.extra
            of = of_expr.format(a=self.val(x), r=R, cf=A)
            A = f"({A} | {of} | {af:#x})"
        return f"({k}, {A}, {B}, {R}, {bits})"

    def cfsrc(self, st: State, ind: int) -> str:
        """The CF before an INC/DEC in state ``st`` (an int or a lazy tuple expression)."""
        if st[0] == "prod":
            kind = st[1].args[0]
            return st[2] if kind in (LZ_INC, LZ_DEC) else self.tup(st)
        if st[0] == "top":
            self.need_p0 = True
            return _TOPCF
        self.tmp += 1
        p = f"p{self.tmp}"
        self.line(ind, f"{p} = c.lz")
        self.line(ind, f"if {p} is None: {p} = c.fl & 1")
        self.line(ind, f"elif {LZ_INC} <= {p}[0] <= {LZ_DEC}: {p} = {p}[2]")
        return p

    def store_flags(self, st: State, ind: int) -> None:
        if st[0] == "prod":
            self.line(ind, f"c.lz = {self.tup(st)}")
        elif st[0] == "top" and self.bottom[0] == "prod":
            self.line(ind, f"if n: c.lz = {self.tup(self.bottom)}")

    def sync(self, ind: int) -> None:
        """Registers to R and the flags to c.lz (for generator-made code)."""
        self.writeback(ind, mark=True)
        self.store_flags(self.state, ind)
        self.state = MEM

    def cond(self, cc: int, ind: int) -> str:
        st = self.state
        base, neg = cc >> 1, cc & 1
        if st[0] == "top":
            self.store_flags(st, ind)
            self.state = st = MEM
        if st[0] == "prod":
            op = st[1]
            kind, a, b, r, bits = op.args
            A, B = self.val(a), self.val(b)
            sign = _SIGN[bits]
            if kind == LZ_SUB:
                if base == 2:
                    e = f"{A} == {B}" if r is None else f"{self.val(r)} == 0"
                elif base == 1:
                    e = f"{A} < {B}"
                elif base == 3:
                    e = f"{A} <= {B}"
                elif base in (6, 7):
                    sa = f"({A} ^ {sign:#x})" if not isinstance(a, int) else _lit(a ^ sign)
                    sb = f"({B} ^ {sign:#x})" if not isinstance(b, int) else _lit(b ^ sign)
                    e = f"{sa} < {sb}" if base == 6 else f"{sa} <= {sb}"
                else:
                    e = ""
                if e:
                    return f"not ({e})" if neg else f"({e})"
            rv = (f"({A} & {B})" if kind == LZ_LOGIC and r is None
                  else f"(({A} - {B}) & {_MASK[bits]:#x})" if r is None else self.val(r))
            if base == 2:
                return rv if neg else f"(not {rv})"
            if kind in (LZ_LOGIC, LZ_INC, LZ_DEC, LZ_FIXED) and base == 4:
                return f"not ({rv} & {sign:#x})" if neg else f"({rv} & {sign:#x} != 0)"
            if kind == LZ_LOGIC and base in (6, 7):
                e = f"{rv} & {sign:#x}" if base == 6 else f"({rv} & {sign:#x} or {rv} == 0)"
                return f"not ({e})" if neg else f"bool({e})"
            self.line(ind, f"c.lz = {self.tup(st)}")  # the general case: the helper
            return f"H.cond(c, {cc})"
        if base == 2:
            self.tmp += 1
            z = f"z{self.tmp}"
            self.line(ind, f"{z} = c.lz")
            self.line(ind, f"{z} = ({z}[3] == 0) if {z} is not None else bool(c.fl & 0x40)")
            return f"not {z}" if neg else z
        return f"H.cond(c, {cc})"

    def carry(self, ind: int) -> str:
        st = self.state
        if st[0] == "top":
            self.store_flags(st, ind)
            self.state = st = MEM
        if st[0] == "prod":
            kind, a, b, r, bits = st[1].args
            if kind == LZ_SUB:
                return f"(1 if {self.val(a)} < {self.val(b)} else 0)"
            if kind == LZ_ADD:
                return f"(1 if {self.val(r)} < {self.val(a)} else 0)"
            if kind == LZ_LOGIC:
                return "0"
            return f"LCF({self.tup(st)})"
        return "H.cf(c)"

    # -- exits ------------------------------------------------------------------------------
    def writeback(self, ind: int, mark: bool = False) -> None:
        for n in self.dirty():
            self.line(ind, f"R[{n}] = r{n}")
            if mark:
                self.rs[n] = "clean"

    def dirty(self) -> Tuple[int, ...]:
        return tuple(n for n in sorted(self.rs) if self.rs[n] == "dirty")

    def need(self, reg: int, ind: int) -> None:
        if self.rs.get(reg) == "stale":
            self.line(ind, f"r{reg} = R[{reg}]")
            self.rs[reg] = "clean"

    def count(self, extra: int) -> str:
        return f"n + {extra}" if self.looping else str(extra)

    def exit(self, ind: int, rip: str, cnt: str, st: State) -> None:
        self.writeback(ind)
        self.store_flags(st, ind)
        self.line(ind, f"c.rip = {rip}; return {cnt}")

    # -- one pass ---------------------------------------------------------------------------
    def run(self) -> List[str]:
        self.out = []
        self.names = {}
        self.snap = set()
        self.tmp = 0
        self.state = self.top_state if self.looping else MEM
        self.fault_states = {}
        if self.looping:  # loaded at entry; at the top, any written one may be newer
            self.rs = {n: "dirty" if n in self.written else "clean" for n in self.regs}
        else:
            self.rs = {n: "stale" for n in self.regs}
        ind = 3 if self.looping else 2
        for k, it in enumerate(self.items):
            if isinstance(it, Raw):
                self.fault_states[k] = (MEM, ())
                self.sync(ind)
                self.line(ind, f"k = {k}")
                for ln in it.lines:
                    self.line(ind, ln[8:] if ln.startswith("        ") else ln.strip())
                if not it.ended:
                    self.rs = {n: "stale" for n in self.regs}
                continue
            self.insn(it, k, ind)
        return self.out

    def insn(self, it: IrInsn, k: int, ind: int) -> None:
        ops = it.ops
        if any(op.kind in ("ld", "st") for op in ops):
            self.fault_states[k] = (self.state, self.dirty())
        uses: Dict[str, int] = {}
        for op in ops:
            for u in op.uses():
                uses[u] = uses.get(u, 0) + 1
            if op.kind == "flags":
                for u in op.uses():
                    uses[u] = 99  # a snapshot in a temporary: the flags keep it
                    self.snap.add(u)
            elif op.kind in ("ld", "st", "sext"):
                if isinstance(op.args[0], str):
                    uses[op.args[0]] = uses.get(op.args[0], 0) + 9  # a name, not an expression
        self.alias = self.aliasable(ops, uses)
        self.ops(it, ops, 0, k, ind, uses)

    def aliasable(self, ops: List[Op], uses: Dict[str, int]) -> Set[str]:
        """The register reads that can be the register's local itself: read (where their
        value is finally used, through inlined expressions) before the register is set."""
        inl = {op.dst for op in ops if op.dst is not None and uses.get(op.dst, 0) <= 1
               and op.kind in ("bin", "sext", "seg", "select", "cond")}
        users: Dict[str, List[int]] = {}
        for i, op in enumerate(ops):
            for u in op.uses():
                users.setdefault(u, []).append(i)

        def where(t: str) -> List[int]:
            out: List[int] = []
            for i in users.get(t, ()):
                d = ops[i].dst
                out += where(d) if d is not None and d in inl else [i]
            return out
        ok: Set[str] = set()
        for i, op in enumerate(ops):
            if op.kind != "get" or op.dst is None or op.dst in self.snap:
                continue
            reg = op.args[0]
            sets = [j for j in range(i + 1, len(ops))
                    if ops[j].kind == "set" and ops[j].args[0] == reg]
            if all(not any(j < e for j in sets) for e in where(op.dst)):
                ok.add(op.dst)
        return ok

    def ops(self, it: IrInsn, ops: List[Op], start: int, k: int, ind: int,
            uses: Dict[str, int]) -> None:
        skip = -1
        for i in range(start, len(ops)):
            if i == skip:
                continue
            op = ops[i]
            kind, dst = op.kind, op.dst
            inline = dst is not None and uses.get(dst, 0) <= 1
            expr: Optional[str] = None
            if kind == "get":
                reg = op.args[0]
                self.need(reg, ind)
                if dst in self.alias:
                    self.names[dst] = f"r{reg}"
                    continue
                expr = f"r{reg}"
                inline = False
            elif kind == "set":
                self.line(ind, f"r{op.args[0]} = {self.val(op.args[1])}")
                self.rs[op.args[0]] = "dirty"
                continue
            elif kind == "bin":
                sym, a, b = op.args
                expr = f"({self.val(a)} {sym} {self.val(b)})"
            elif kind == "sext":
                a = self.val(op.args[0])
                expr = f"({a} - (({a} & {_SIGN[op.args[1]]:#x}) << 1))"
            elif kind == "seg":
                expr = f"SB[{op.args[0]}]"
            elif kind == "select":
                c, a, b = (self.val(x) for x in op.args)
                expr = f"({a} if {c} else {b})"
            elif kind == "cond":
                expr = self.cond(op.args[0], ind)
            elif kind == "carry":
                expr = self.carry(ind)
                inline = False
            elif kind == "flags":
                kd = op.args[0]
                src = self.cfsrc(self.state, ind) if kd in (LZ_INC, LZ_DEC) else None
                self.state = ("prod", op, src)
                continue
            elif kind == "ld":
                nxt = ops[i + 1] if i + 1 < len(ops) else None
                if (nxt is not None and nxt.kind == "set" and nxt.args[1] == dst
                        and uses.get(dst or "", 0) == 1):
                    # a load straight into a register (MOV/MOVZX r, [m]): into its local
                    # (a fault leaves the local as it was: rd raises before the store)
                    self.load(op, k, ind, f"r{nxt.args[0]}")
                    self.rs[nxt.args[0]] = "dirty"
                    skip = i + 1
                    continue
                self.load(op, k, ind)
                continue
            elif kind == "st":
                self.store(it, ops, i, k, ind, uses)
                continue
            elif kind == "exit":
                self.exit(ind, self.val(op.args[0]), self.count(k + 1), self.state)
                continue
            elif kind == "side":
                self.line(ind, f"if {self.val(op.args[0])}:")
                self.exit(ind + 1, _lit(op.args[1]), self.count(k + 1), self.state)
                continue
            elif kind == "branch":
                self.branch(op, k, ind)
                continue
            assert expr is not None and dst is not None
            if inline:
                self.names[dst] = expr
            else:
                self.line(ind, f"{dst} = {expr}")

    def load(self, op: Op, k: int, ind: int, into: Optional[str] = None) -> None:
        a, sz = self.val(op.args[0]), op.args[1]
        dst = into or op.dst
        self.line(ind, f"p = TR({a} >> 12)")
        if sz == 1:
            self.line(ind, f"if p is not None: {dst} = p[{a} & 0xFFF]")
        else:
            self.line(ind, f"if p is not None and ({a} & 0xFFF) <= {4096 - sz}: "
                           f"{dst} = U{sz}(p, {a} & 0xFFF)[0]")
        self.line(ind, f"else: k = {k}; {dst} = rd{sz}({a})")

    def store(self, it: IrInsn, ops: List[Op], i: int, k: int, ind: int,
              uses: Dict[str, int]) -> None:
        op = ops[i]
        a, sz, v = self.val(op.args[0]), op.args[1], self.val(op.args[2])
        self.line(ind, f"p = TW({a} >> 12)")
        if sz == 1:
            self.line(ind, f"if p is not None: p[{a} & 0xFFF] = {v}")
        else:
            self.line(ind, f"if p is not None and ({a} & 0xFFF) <= {4096 - sz}: "
                           f"P{sz}(p, {a} & 0xFFF, {v})")
        self.line(ind, "else:")
        self.line(ind + 1, f"k = {k}; wr{sz}({a}, {v})")
        # an MMIO or code-page write: finish the instruction, then leave the block
        self.line(ind + 1, "if STOP[0]:")
        saved = (self.state, dict(self.names), dict(self.rs))
        rest = ops[i + 1:]
        if any(o.kind in ("ld", "st", "side", "branch") for o in rest):
            raise AssertionError("a store must be its instruction's last memory access")
        ends = bool(rest) and rest[-1].kind == "exit"
        self.ops(it, ops, i + 1, k, ind + 2, uses)
        if not ends:
            self.exit(ind + 2, _lit(it.next_ip), self.count(k + 1), self.state)
        self.state, self.names, self.rs = saved

    def branch(self, op: Op, k: int, ind: int) -> None:
        cond, tgt, nxt = op.args
        cnt = k + 1
        if tgt == self.start_ip and self.looping:
            if cond is not None:
                self.line(ind, f"if {self.val(cond)}:")
                ind2 = ind + 1
            else:
                ind2 = ind
            self.line(ind2, f"n += {cnt}")
            # the budget exactly, a kick every KICK_EVERY instructions at most: below
            # chk (<= lim) neither needs a look
            self.line(ind2, "if n > chk:")
            self.line(ind2 + 1, "if n > lim or E.kicked:")
            self.exit(ind2 + 2, _lit(tgt), "n", self.state)
            self.line(ind2 + 1, f"chk = lim if lim - n < {KICK_EVERY} else n + {KICK_EVERY}")
            # the top expects every register in its local
            for r in sorted(self.rs):
                if self.rs[r] == "stale":
                    self.line(ind2, f"r{r} = R[{r}]")
            self.line(ind2, "continue")
            if cond is not None:
                self.exit(ind, _lit(nxt), f"n + {cnt}", self.state)
            self.loop_cnt = cnt
            return
        if cond is None:
            self.exit(ind, _lit(tgt), self.count(cnt), self.state)
            return
        c = self.val(cond)
        self.tmp += 1
        t = f"j{self.tmp}"
        self.line(ind, f"{t} = {c}")
        self.exit(ind, f"{_lit(tgt)} if {t} else {_lit(nxt)}", self.count(cnt), self.state)

    # -- the whole function ---------------------------------------------------------------
    def source(self) -> str:
        self.loop_cnt = 0
        body = self.run()
        if self.looping:
            # the loop's top: its state on later iterations is the bottom's
            bottom = self.state
            self.bottom = bottom if bottom[0] == "prod" else MEM
            if bottom[0] != "prod":
                self.top_state = MEM  # nothing in the loop sets them: c.lz stays true
            if self.bottom[0] == "prod":
                b = self.bottom
                top_cf = b[2] if b[1].args[0] in (LZ_INC, LZ_DEC) else self.tup(b)
                self.top_cf = "p0" if top_cf == _TOPCF else f"({top_cf} if n else p0)"
            body = self.run()  # again, with the bottom known
        head = ["def blk(lim):", "    n = 0", "    k = 0"]
        if self.looping:
            head.append(f"    lim -= {self.loop_cnt}")
            head.append("    chk = 0")  # the first back edge looks at the budget and kicks
        if self.looping:
            head += [f"    r{n} = R[{n}]" for n in sorted(self.regs)]
        p0_at = len(head)
        head.append("    try:")
        if self.looping:
            head.append("        while True:")
        if not body:
            body = ["        pass"]
        tail = ["    except BaseException:"]
        groups: Dict[str, List[int]] = {}
        for k, (st, dirty) in sorted(self.fault_states.items()):
            self.out = []
            self.store_flags(st, 3)
            # at a generator-made instruction R is the truth (synced before it; it may have
            # changed R before an exit it raises: a REP iteration's registers)
            self.out += [f"            R[{n}] = r{n}" for n in dirty]
            code = "\n".join(self.out)
            if code:
                groups.setdefault(code, []).append(k)
        for code, ks in groups.items():
            test = f"k == {ks[0]}" if len(ks) == 1 else f"k in {tuple(ks)}"
            tail.append(f"        if {test}:")
            tail.append(code)
        tail += ["        c.rip = IPS[k]", "        c.kdone = n + k", "        raise"]
        if not self.ended:
            self.out = []
            self.exit(1, _lit(self.next_ip), str(len(self.items)), self.state)
            tail += self.out
        if "p0" in self.top_cf and any(_TOPCF in ln for ln in body + tail):
            head[p0_at:p0_at] = ["    p0 = c.lz", "    if p0 is None: p0 = c.fl & 1",
                                 f"    elif {LZ_INC} <= p0[0] <= {LZ_DEC}: p0 = p0[2]"]
        return ("\n".join(head + body + tail) + "\n").replace(_TOPCF, self.top_cf)


def emit_block(items: Sequence[Item], start_ip: int, loop_ok: bool, next_ip: int,
               ended: bool) -> str:
    """The source of the block function for ``items`` (after the passes)."""
    looping = any(isinstance(it, IrInsn) and it.ops and it.ops[-1].kind == "branch"
                  and it.ops[-1].args[1] == start_ip and loop_ok for it in items)
    optimize(items, looping)
    return Emitter(items, start_ip, loop_ok, next_ip, ended).source()


__all__ = ["Emitter", "emit_block"]
