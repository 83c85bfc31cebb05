"""Passes over a block's IR (``ir.py``) before ``ir_emit`` turns it into Python.

* ``fold_masks``: an AND with an all-ones mask at least as wide as its operand is
  the operand (a 64-bit register masked to 64 bits, a zero-extended load masked to
  its size, a mask of a mask), and a register set to its own unchanged value is
  dropped (``lea rsi, [rsi]``).
* ``flag_liveness``: a flags operation that nothing observes before the next one
  (no condition, carry, INC/DEC, fault point, exit or generator-made instruction in
  between) is dropped, and with it the values only it kept alive.
* ``dce``: pure operations whose result nothing uses are dropped.

The block is a list of ``IrInsn`` and ``Raw`` items (an instruction the IR does not
cover, made by its generator); passes leave ``Raw`` items alone and treat them as
observing everything.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Set, Union

from .decode import Insn
from .ir import IrInsn, Op, Val
from .state import LZ_DEC, LZ_INC


class Raw:
    """An instruction made by its generator: its lines (see codegen) inside an IR block."""

    __slots__ = ("d", "lines", "ended")

    def __init__(self, d: Insn, lines: List[str], ended: bool) -> None:
        self.d = d
        self.lines = lines
        self.ended = ended


Item = Union[IrInsn, Raw]
_PURE = frozenset(("get", "bin", "sext", "seg", "select", "cond", "carry"))


def _width(widths: Dict[str, Optional[int]], v: Val) -> Optional[int]:
    if isinstance(v, int):
        return v.bit_length() if v >= 0 else None
    return widths.get(v)


def _subst(op: Op, sub: Dict[str, Val]) -> None:
    if not sub:
        return
    op.args = [sub.get(a, a) if isinstance(a, str) else a for a in op.args]
    if isinstance(op.extra, str):
        op.extra = sub.get(op.extra, op.extra)
    elif isinstance(op.extra, tuple):
        op.extra = tuple(sub.get(x, x) if isinstance(x, str) else x for x in op.extra)


def fold_masks(items: Sequence[Item]) -> None:
    """Drop masks that change nothing and self-assignments of registers."""
    widths: Dict[str, Optional[int]] = {}
    sub: Dict[str, Val] = {}
    for it in items:
        if isinstance(it, Raw):
            continue
        out: List[Op] = []
        got: Dict[str, int] = {}  # get temp -> register, until that register is set
        for op in it.ops:
            _subst(op, sub)
            k = op.kind
            if k == "bin" and op.dst is not None:
                sym, a, b = op.args
                if sym == "&" and isinstance(b, int) and b >= 0 and b & (b + 1) == 0:
                    wa = _width(widths, a)
                    if wa is not None and wa <= b.bit_length():
                        sub[op.dst] = a
                        continue
                    widths[op.dst] = b.bit_length() if wa is None else min(wa, b.bit_length())
                elif sym == "&":
                    wa, wb = _width(widths, a), _width(widths, b)
                    ws = [w for w in (wa, wb) if w is not None]
                    widths[op.dst] = min(ws) if ws else None
                elif sym in ("|", "^"):
                    wa, wb = _width(widths, a), _width(widths, b)
                    widths[op.dst] = None if wa is None or wb is None else max(wa, wb)
                elif sym == "+":
                    wa, wb = _width(widths, a), _width(widths, b)
                    widths[op.dst] = None if wa is None or wb is None else max(wa, wb) + 1
                elif sym == ">>" and isinstance(b, int):
                    wa = _width(widths, a)
                    widths[op.dst] = None if wa is None else max(wa - b, 0)
                elif sym == "<<" and isinstance(b, int):
                    wa = _width(widths, a)
                    widths[op.dst] = None if wa is None else wa + b
                elif sym == "!=":
                    widths[op.dst] = 1
                else:
                    widths[op.dst] = None
            elif k == "get" and op.dst is not None:
                widths[op.dst] = 64
                got[op.dst] = op.args[0]
            elif k == "ld" and op.dst is not None:
                widths[op.dst] = 8 * op.args[1]
            elif k == "select" and op.dst is not None:
                wa, wb = _width(widths, op.args[1]), _width(widths, op.args[2])
                widths[op.dst] = None if wa is None or wb is None else max(wa, wb)
            elif k in ("cond", "carry") and op.dst is not None:
                widths[op.dst] = 1
            elif k == "set":
                reg, src = op.args
                if isinstance(src, str) and got.get(src) == reg:
                    continue  # the register keeps its value
                got = {t: r for t, r in got.items() if r != reg}
            out.append(op)
        it.ops = out


def _observes(op: Op) -> bool:
    return op.kind in ("cond", "carry", "exit", "side", "branch", "ld", "st")


def flag_liveness(items: Sequence[Item], looping: bool) -> None:
    """Drop flags operations nothing observes (see the module docstring)."""
    live: Set[int] = set()
    cur: Optional[Op] = None
    for it in items:
        if isinstance(it, Raw):
            if cur is not None:
                live.add(id(cur))
            cur = None
            continue
        fault = any(op.kind in ("ld", "st") for op in it.ops)
        if fault and cur is not None:
            live.add(id(cur))  # the fault path restores the flags before the instruction
        for op in it.ops:
            if op.kind == "flags":
                if op.args[0] in (LZ_INC, LZ_DEC) and cur is not None:
                    live.add(id(cur))  # INC/DEC keep the CF before them
                cur = op
            elif _observes(op) and cur is not None:
                live.add(id(cur))
    if cur is not None:
        live.add(id(cur))  # the block's end (or the loop's next iteration) sees it
    del looping
    for it in items:
        if isinstance(it, IrInsn):
            it.ops = [op for op in it.ops if op.kind != "flags" or id(op) in live]


def dce(items: Sequence[Item]) -> None:
    """Drop pure operations whose results nothing uses."""
    while True:
        used: Set[str] = set()
        for it in items:
            if isinstance(it, IrInsn):
                for op in it.ops:
                    used.update(op.uses())
        removed = False
        for it in items:
            if isinstance(it, IrInsn):
                keep = [op for op in it.ops
                        if not (op.kind in _PURE and op.dst is not None and op.dst not in used)]
                if len(keep) != len(it.ops):
                    removed = True
                    it.ops = keep
        if not removed:
            return


def optimize(items: Sequence[Item], looping: bool) -> None:
    """All passes, in order."""
    fold_masks(items)
    flag_liveness(items, looping)
    dce(items)


__all__ = ["Item", "Raw", "dce", "flag_liveness", "fold_masks", "optimize"]
