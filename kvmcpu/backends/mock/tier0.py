"""The interpreter tier: blocks that run without ``compile()``.

A block runs first as a list of per-instruction closures (tier 0) and is compiled
into one Python function (tier 1, ``codegen.assemble``) only once it has run
``PROMOTE_AFTER`` times. Both tiers are made by the same generators, over the same
instruction boundaries, so they retire the same instructions and exit alike.

Binding an instruction needs no ``compile()`` in the common case: the generator's
lines for one instruction are reduced to their *shape* (every integer literal
replaced by a parameter ``L0, L1, ...``, the block constants are parameters
``K0, K1, ...``), and a shape is compiled once, into a factory
``mk(K0.., L0..) -> ins`` (cached for the life of the process, shared by every
engine). Binding is then calling the factory with this instruction's constants
and literals: ``ins()`` runs the instruction and returns None to fall through,
or the number of instructions retired (1) after setting ``c.rip`` when the block
ends there (a branch taken, a terminator, an exit to report).
"""

from __future__ import annotations

import re
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from .decode import Insn
from .state import CpuState

#: runs of a tier-0 block before it is compiled. Measured with the bundled guests from start
#: to exit, sieve3's first million instructions and mock_mips loop (b) for 4..256: 4 and 256
#: are slower, 16..128 alike within this host's noise; a block in a loop reaches it within
#: its first iterations.
PROMOTE_AFTER = 32

InsnFn = Callable[[], Optional[int]]
Factory = Callable[..., InsnFn]

#: integer literals of generated code (not inside names: t1, K0, rd4 stay)
_NUM = re.compile(r"\b(?:0x[0-9a-fA-F]+|[0-9]+)\b")

#: shape text -> code object of its factory; shared by all engines (the globals differ)
_SHAPES: Dict[str, types.CodeType] = {}
_SHAPES_MAX = 50_000



def _factory_code(shape: str, nconst: int, nlit: int) -> types.CodeType:
    parts = shape.split("\x00")
    body = parts[0] + "".join(f"L{i}{p}" for i, p in enumerate(parts[1:]))
    params = ", ".join([f"K{i}" for i in range(nconst)] + [f"L{i}" for i in range(nlit)])
    src = f"def mk({params}):\n    def ins():\n        n = 0\n{body}\n    return ins\n"
    module = compile(src, "<mock-insn>", "exec")
    for const in module.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == "mk":
            return const
    raise RuntimeError("generated factory has no mk()")  # pragma: no cover


#: opcodes whose code depends on where the block starts (JMP/CALL are followed, a Jcc to
#: the block's start ends it): bound from their generated text each time, never by bytes
FLOW = frozenset([*range(0x70, 0x80), *range(0x180, 0x190), 0xE8, 0xE9, 0xEB,
                  0xE0, 0xE1, 0xE2, 0xE3])

_SEEN = 1  # bytes seen once: relocate them on the second sighting
_NEVER = 2  # their code is not a function of RIP we can rebuild: always generate

#: a relocatable instruction: (factory, literals at RIP 0, [(index, RIP delta)],
#: constants with None where the instruction's own Insn goes, whether it ends the block)
Entry = Tuple[Factory, List[int], List[Tuple[int, int]], List[Any], bool]
Generated = Tuple[List[str], List[Any], bool]


class InsnBinder:
    """Turns one instruction's generated lines into a closure, for one namespace.

    Two caches: shapes (generated text with its literals taken out: no compile() for
    an instruction whose shape was seen) and, per instruction bytes and mode, which
    literals are constants and which follow RIP, so an instruction seen twice is
    bound without running its generator (nor the literal scan) again.
    """

    def __init__(self, namespace: Dict[str, Any]) -> None:
        self.ns = namespace
        self.factories: Dict[str, Factory] = {}
        self.insns: Dict[Tuple[bytes, int], Union[int, Entry]] = {}
        self.compiled = 0  # shapes this binder had to compile (for measurements)

    def shape(self, lines: Sequence[str], nconst: int) -> Tuple[Factory, List[int], str]:
        """(factory, literal values, shape key) of one instruction's lines."""
        text = "\n".join(lines) if lines else "        pass"
        if "'" in text or '"' in text:
            shape, found = text, []  # a string literal: keep the text as it is
        else:
            found = _NUM.findall(text)
            shape = _NUM.sub("\x00", text)
        key = f"{nconst}|{shape}"
        fac = self.factories.get(key)
        if fac is None:
            code = _SHAPES.get(key)
            if code is None:
                code = _factory_code(shape, nconst, len(found))
                self.compiled += 1
                if len(_SHAPES) < _SHAPES_MAX:
                    _SHAPES[key] = code
            fac = types.FunctionType(code, self.ns)
            self.factories[key] = fac
        return fac, [int(v, 0) for v in found], key

    def bind(self, lines: Sequence[str], consts: List[Any]) -> InsnFn:
        fac, values, _ = self.shape(lines, len(consts))
        return fac(*consts, *values)

    def bind_insn(self, d: Insn, mode: int, ip_limit: int,
                  generate: Callable[[Insn], Generated],
                  decode_at: Callable[[int], Insn]) -> Tuple[InsnFn, bool]:
        """The closure of ``d`` and whether it ends the block. ``generate(d)`` runs its
        generator (lines, constants, ended); ``decode_at(ip)`` decodes its bytes at ip."""
        key = (d.raw, mode)
        ent = self.insns.get(key)
        ip = d.ip
        if ent is not None and not isinstance(ent, int):
            fac, base, rels, consts, ended = ent
            lits = list(base)
            for i, delta in rels:
                v = ip + delta
                if not 0 <= v <= ip_limit:
                    break  # wraps here: generate it
                lits[i] = v
            else:
                return fac(*[d if c is None else c for c in consts], *lits), ended
        lines, consts, ended = generate(d)
        fac, values, shape = self.shape(lines, len(consts))
        fn = fac(*consts, *values)
        if ent is None:
            self.insns[key] = _SEEN
        elif ent == _SEEN:
            self.insns[key] = self._relocatable(d, fac, values, shape, consts, ended,
                                                generate, decode_at)
        return fn, ended

    def _relocatable(self, d: Insn, fac: Factory, values: List[int], shape: str,
                     consts: List[Any], ended: bool, generate: Callable[[Insn], Generated],
                     decode_at: Callable[[int], Insn]) -> Union[int, Entry]:
        """Generate d again at another RIP: literals that moved by as much follow RIP."""
        other = 0x2000 if d.ip == 0x1000 else 0x1000
        d2 = decode_at(other)
        if d2.len != d.len:
            return _NEVER
        lines2, consts2, ended2 = generate(d2)
        _, values2, shape2 = self.shape(lines2, len(consts2))
        if shape2 != shape or ended2 != ended or len(consts2) != len(consts):
            return _NEVER
        base: List[int] = []
        rels: List[Tuple[int, int]] = []
        for i, (a, b) in enumerate(zip(values, values2)):
            if a == b:
                base.append(a)
            elif a - d.ip == b - other:
                base.append(0)
                rels.append((i, a - d.ip))
            else:
                return _NEVER
        cs: List[Any] = []
        for c, c2 in zip(consts, consts2):
            if c is d and c2 is d2:
                cs.append(None)
            elif c is c2:
                cs.append(c)
            else:
                return _NEVER
        return (fac, base, rels, cs, ended)


def make_block(st: CpuState, fns: Sequence[InsnFn], ips: Sequence[int], next_ip: int,
               promote: Optional[Callable[[], Optional[Callable[[int], int]]]]
               ) -> Callable[[int], int]:
    """The tier-0 block over ``fns`` (the block function's contract: see codegen).

    ``promote()`` compiles the block and puts it in the cache in this one's place
    (None: the block cannot be cached); it is called on the PROMOTE_AFTER-th run.
    """
    fns = tuple(fns)
    ips = tuple(ips)
    runs = 0

    def blk(lim: int) -> int:
        nonlocal runs
        runs += 1
        if runs >= PROMOTE_AFTER and promote is not None:
            fn = promote()
            if fn is not None:
                return fn(lim)
        i = 0
        try:
            for f in fns:
                r = f()
                if r is not None:
                    return i + r
                i += 1
        except BaseException:
            st.rip = ips[i]
            st.kdone = i
            raise
        st.rip = next_ip
        return i

    blk.tier = 0  # type: ignore[attr-defined]
    return blk


__all__ = ["FLOW", "InsnBinder", "make_block", "PROMOTE_AFTER"]
