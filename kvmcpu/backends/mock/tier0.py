"""The interpreter tier: blocks that run without ``compile()``.

A block runs first as a list of per-instruction bound functions (tier 0) and is
compiled into one Python function (tier 1, from the IR: ``ir_emit``) only once it has
run ``PROMOTE_AFTER`` times. Both tiers decode the same instruction boundaries, so they
retire the same instructions and exit alike.

Binding an instruction needs no ``compile()`` in the common case: the generator's
lines for one instruction are reduced to their *shape* (every integer literal
replaced by a parameter ``L0, L1, ...``, the block constants are parameters
``K0, K1, ...``), and a shape is compiled once into a function
``ins(K0.., L0..)`` (cached for the life of the process, shared by every engine).
A bound instruction is that function with this instruction's constants and
literals as its arguments; it returns None to fall through, or the number of
instructions retired (1) after setting ``c.rip`` when the block ends there (a
branch taken, a terminator, an exit to report). An instruction whose bytes were
seen twice in a mode is bound from a cached argument tuple (the literals that
follow RIP patched in), without running its generator or scanning its text.

Instructions that differ only in their RIP, displacement or immediate (one decoder
*head*: ``decode.from_head``) share one *parametric* binding: the generator runs once
on a stand-in instruction whose RIP, displacement, immediate and bytes are symbols
(``_Sym``). A symbol supports only what keeps the generated code a function of the
fields (adding, subtracting, masking, formatting as a number); every other use --
truth value, comparison, hashing, indexing, shifting -- raises, and the head is then
bound per instruction as above. So a generator's choices never depend on a symbol's
value, and each formatted symbol becomes a constant of the bound function, computed
from the actual instruction by the same arithmetic the generator did: the bound
instruction is the one its generator would have produced.
"""

from __future__ import annotations

import functools
import operator
import re
import types
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, Union

from .decode import Insn
from .state import CpuState

#: runs of a tier-0 block before it is compiled. Measured with the bundled guests from start
#: to exit and sieve3's first 2 M instructions for 32..256 (process CPU time, best of 3,
#: after the tier-0 decode/bind caches made tier 0 cheaper): 96..256 run the short guests
#: 25-30 % faster than 32 (a compile costs ~2 ms, hundreds of tier-0 runs of a block), sieve3
#: alike; a block in a loop reaches it within its first iterations.
PROMOTE_AFTER = 128

InsnFn = Callable[..., Optional[int]]
#: an instruction bound: its function and the arguments it runs with
Bound = Tuple[InsnFn, Tuple[Any, ...]]

#: integer literals of generated code (not inside names: t1, K0, rd4 stay)
_NUM = re.compile(r"\b(0x[0-9a-fA-F]+|[0-9]+)\b", re.ASCII)

#: shape text -> code object of its function; shared by all engines (the globals differ)
_SHAPES: Dict[str, types.CodeType] = {}
_SHAPES_MAX = 50_000



#: one generated line -> (its shape: the literals taken out, their values), or _QUOTED
#: (a string literal: the instruction's text is kept as it is). Lines recur across
#: instructions (only some hold an immediate or an address), so most are not scanned.
_LINES: Dict[str, Any] = {}
_LINES_MAX = 100_000
_QUOTED: Tuple[str, Tuple[int, ...]] = ("", ())


#: lines seen once (kept in _LINES from their second sighting: a line with an address or
#: an immediate of its own is never seen again, and would only add objects to walk)
_LINES_SEEN: Set[str] = set()


def _line_shape(line: str) -> Tuple[str, Tuple[int, ...]]:
    if "'" in line or '"' in line:
        ent = _QUOTED
    else:
        parts = _NUM.split(line)  # text, literal, text, ... (one scan)
        ent = ("\x00".join(parts[::2]), tuple([int(v, 0) for v in parts[1::2]]))
    if line not in _LINES_SEEN:
        if len(_LINES_SEEN) < _LINES_MAX:
            _LINES_SEEN.add(line)
    elif len(_LINES) < _LINES_MAX:
        _LINES[line] = ent
    return ent


def _insn_code(shape: str, nconst: int, nlit: int) -> types.CodeType:
    parts = shape.split("\x00")
    body = parts[0] + "".join(f"L{i}{p}" for i, p in enumerate(parts[1:]))
    params = ", ".join([f"K{i}" for i in range(nconst)] + [f"L{i}" for i in range(nlit)])
    src = f"def ins({params}):\n    if True:\n        n = 0\n{body}\n"
    module = compile(src, "<mock-insn>", "exec")
    for const in module.co_consts:
        if isinstance(const, types.CodeType) and const.co_name == "ins":
            return const
    raise RuntimeError("generated code has no ins()")  # pragma: no cover


#: opcodes whose code depends on where the block starts (JMP/CALL are followed, a Jcc to
#: the block's start ends it): bound from their generated text each time, never by bytes
FLOW = frozenset([*range(0x70, 0x80), *range(0x180, 0x190), 0xE8, 0xE9, 0xEB,
                  0xE0, 0xE1, 0xE2, 0xE3])

_NEVER = 2  # their code is not a function of RIP we can rebuild: always generate
_SEEN = 3  # bytes bound once from their head's parametric binding (InsnBinder.first)


class _NotParametric(Exception):
    """A generator used a symbol other than by adding, masking or formatting it."""


def _no(self: "_Sym", *args: Any) -> Any:
    raise _NotParametric()


class _Sym:
    """A field of the stand-in instruction (see the module's doc): ``f(d)`` is its value
    for an instruction ``d``; ``reg`` collects the symbols formatted into the text.

    For instructions of the same bytes only RIP differs, and a symbol also says how it
    follows RIP: ``k`` the coefficient of RIP in it (None: not linear), ``m`` None when no
    mask was applied, the all-ones mask applied last, or -1 (another mask, or arithmetic
    after one): see ``InsnBinder._bytes_entry``.
    """

    __slots__ = ("f", "reg", "k", "m")

    def __init__(self, f: Callable[[Insn], Any], reg: List["_Sym"], k: Optional[int] = 0,
                 m: Optional[int] = None) -> None:
        self.f = f
        self.reg = reg
        self.k = k
        self.m = m

    def _sum(self, o: Any, sign: int) -> "_Sym":
        f = self.f
        if o.__class__ is int:
            fn: Callable[[Insn], Any] = ((lambda d: f(d) + o) if sign > 0
                                        else (lambda d: f(d) - o))
            return _Sym(fn, self.reg, self.k, None if self.m is None else -1)
        if o.__class__ is _Sym:
            g = o.f
            fn = (lambda d: f(d) + g(d)) if sign > 0 else (lambda d: f(d) - g(d))
            k = None if self.k is None or o.k is None else self.k + sign * o.k
            m = None if self.m is None and o.m is None else -1
            return _Sym(fn, self.reg, k, m)
        raise _NotParametric()

    def __add__(self, o: Any) -> "_Sym":
        return self._sum(o, 1)

    __radd__ = __add__

    def __sub__(self, o: Any) -> "_Sym":
        return self._sum(o, -1)

    def __rsub__(self, o: Any) -> "_Sym":
        return (-self)._sum(o, 1) if o.__class__ is int else _no(self)

    def __and__(self, o: Any) -> "_Sym":
        f = self.f
        if o.__class__ is not int:
            raise _NotParametric()
        if o >= 0 and o & (o + 1) == 0 and self.m != -1:
            m: Optional[int] = o if self.m is None else min(o, self.m)
        else:
            m = -1
        return _Sym(lambda d: f(d) & o, self.reg, self.k, m)

    __rand__ = __and__

    def __neg__(self) -> "_Sym":
        f = self.f
        return _Sym(lambda d: -f(d), self.reg, None if self.k is None else -self.k,
                    None if self.m is None else -1)

    def __format__(self, spec: str) -> str:
        if spec not in ("", "#x", "d"):
            raise _NotParametric()
        self.reg.append(self)
        return f"_p{len(self.reg) - 1}_"

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _no
    __hash__ = __index__ = __int__ = __float__ = __str__ = __repr__ = _no
    __or__ = __ror__ = __xor__ = __rxor__ = __invert__ = __pos__ = __abs__ = _no
    __lshift__ = __rlshift__ = __rshift__ = __rrshift__ = _no
    __mul__ = __rmul__ = __mod__ = __rmod__ = __floordiv__ = __rfloordiv__ = _no
    __truediv__ = __rtruediv__ = __pow__ = __rpow__ = __divmod__ = __rdivmod__ = _no
    __round__ = __trunc__ = __floor__ = __ceil__ = _no
    __len__ = __iter__ = __getitem__ = __contains__ = __call__ = _no


def _independent(value: Any, proxy: Insn, depth: int = 0) -> bool:
    """Whether a constant holds neither the stand-in instruction nor a symbol."""
    if value is proxy or value.__class__ is _Sym or depth > 4:
        return False
    if isinstance(value, (tuple, list, frozenset, set)):
        return all(_independent(v, proxy, depth + 1) for v in value)
    if isinstance(value, dict):
        return all(_independent(k, proxy, depth + 1) and _independent(v, proxy, depth + 1)
                   for k, v in value.items())
    if isinstance(value, functools.partial):
        return (_independent(value.func, proxy, depth + 1)
                and _independent(value.args, proxy, depth + 1)
                and _independent(value.keywords, proxy, depth + 1))
    return True


#: a parametric binding of one head: (function, its arguments with None where they are
#: computed, [argument index of the Insn], [(argument index, f(d))], whether it ends)
Param = Tuple[InsnFn, Tuple[Any, ...], Tuple[int, ...], Tuple[Tuple[int, "_Sym"], ...], bool]

#: a relocatable instruction: (function, its arguments (constants, then literals) with
#: 0 for RIP-relative literals and None for the instruction's own Insn, [(argument index,
#: RIP delta)], [argument index of the Insn], whether it ends the block, and the two
#: flags the engine gave bind_insn (chain-safe, alone in its block))
Entry = Tuple[InsnFn, Tuple[Any, ...], List[Tuple[int, int]], List[int], bool, bool, bool]
Generated = Tuple[List[str], List[Any], bool]
#: an instruction's first sighting, one flat tuple (the fewer objects kept, the less the
#: garbage collector walks): (RIP, shape, ended, the indexes of the constants that are the
#: instruction's Insn, the number of constants, *constants (None for the Insn),
#: *literal values)
First = Tuple[Any, ...]


class InsnBinder:
    """Turns one instruction's generated lines into (function, arguments), per namespace.

    Two caches: shapes (generated text with its literals taken out: no compile() for
    an instruction whose shape was seen) and, per instruction bytes and mode, which
    literals are constants and which follow RIP, so an instruction seen twice is
    bound without running its generator (nor the literal scan) again.
    """

    def __init__(self, namespace: Dict[str, Any]) -> None:
        self.ns = namespace
        self.functions: Dict[str, InsnFn] = {}
        #: mode -> bytes -> an Entry or _NEVER (from the second sighting on)
        self.insns: Dict[int, Dict[bytes, Union[int, Entry]]] = {}
        #: mode -> bytes -> the first sighting (until the second)
        self.first: Dict[int, Dict[bytes, Any]] = {}  # First, or _SEEN
        #: mode -> decoder head (the Insn subclass from_head makes) -> a Param or _NEVER
        self.params: Dict[int, Dict[type, Union[int, Param]]] = {}
        self.compiled = 0  # shapes this binder had to compile (for measurements)

    def shape(self, lines: Sequence[str], nconst: int) -> Tuple[InsnFn, List[int], str]:
        """(function, literal values, shape key) of one instruction's lines."""
        if not lines:
            lines = ("        pass",)
        values: List[int] = []
        shapes: List[str] = []
        cached = _LINES.get
        for line in lines:
            ent = cached(line)
            if ent is None:
                ent = _line_shape(line)
            if ent is _QUOTED:
                text = "\n".join(lines)  # a string literal: keep the text as it is
                shapes, values = [text], []
                break
            shapes.append(ent[0])
            values += ent[1]
        shape = "\n".join(shapes)
        key = f"{nconst}|{shape}"
        fn = self.functions.get(key)
        if fn is None:
            code = _SHAPES.get(key)
            if code is None:
                code = _insn_code(shape, nconst, len(values))
                self.compiled += 1
                if len(_SHAPES) < _SHAPES_MAX:
                    _SHAPES[key] = code
            fn = types.FunctionType(code, self.ns)
            self.functions[key] = fn
        return fn, values, key

    def bind(self, lines: Sequence[str], consts: List[Any]) -> Bound:
        fn, values, _ = self.shape(lines, len(consts))
        return fn, (*consts, *values)

    def table(self, mode: int) -> Dict[bytes, Union[int, Entry]]:
        """The cache of one mode: instruction bytes -> an Entry or _NEVER (``insns``)."""
        tab = self.insns.get(mode)
        if tab is None:
            tab = self.insns[mode] = {}
        return tab

    def bind_insn(self, d: Insn, mode: int, ip_limit: int,
                  generate: Callable[[Insn], Generated],
                  decode_at: Callable[[bytes, int, int], Insn],
                  flags: Tuple[bool, bool] = (False, False)) -> Tuple[Bound, bool]:
        """``d`` bound, and whether it ends the block. ``generate(d)`` runs its generator
        (lines, constants, ended); ``decode_at(raw, bits, ip)`` decodes bytes at ip;
        ``flags`` are kept in the cache entry for the engine (a function of the bytes).
        The engine reads ``insns`` itself for the common case (an Entry)."""
        key = d.raw
        insns = self.table(mode)
        ent = insns.get(key)
        if isinstance(ent, tuple):
            fn, args, rels, own, ended = ent[:5]
            if not rels and not own:
                return (fn, args), ended
            a = list(args)
            ip = d.ip
            for i in own:
                a[i] = d
            for i, delta in rels:
                v = ip + delta
                if not 0 <= v <= ip_limit:
                    break  # wraps here: generate it
                a[i] = v
            else:
                return (fn, tuple(a)), ended
        cls = d.__class__
        if cls is not Insn:
            ptab = self.params.get(mode)
            if ptab is None:
                ptab = self.params[mode] = {}
            pent = ptab.get(cls)
            if pent is None:
                pent = ptab[cls] = self._parametric(d, generate)
            if pent.__class__ is tuple:
                pfn, fixed, pown, calc, pended = pent
                a = list(fixed)
                for i in pown:
                    a[i] = d
                for i, sym in calc:
                    a[i] = sym.f(d)
                if ent is None:
                    firsts = self.first.get(mode)
                    if firsts is None:
                        firsts = self.first[mode] = {}
                    if firsts.pop(key, None) is None:
                        firsts[key] = _SEEN
                    else:  # the second sighting of these bytes: bind them by bytes
                        insns[key] = self._bytes_entry(d, pent, a, ip_limit, flags)
                return (pfn, tuple(a)), pended
        lines, consts, ended = generate(d)
        fn, values, shape = self.shape(lines, len(consts))
        if ent is None:
            firsts = self.first.setdefault(mode, {})
            first = firsts.pop(key, None)
            if first.__class__ is not tuple:  # None, or _SEEN (a parametric binding)
                # the first sighting: what _relocatable needs of it (no Insn kept: the
                # constants that are the instruction are None)
                if consts:
                    mine = tuple([i for i, c in enumerate(consts) if c is d])
                    firsts[key] = (d.ip, shape, ended, mine, len(consts),
                                       *[None if c is d else c for c in consts], *values)
                else:
                    firsts[key] = (d.ip, shape, ended, (), 0, *values)
            else:
                insns[key] = self._relocatable(d, fn, values, shape, consts, ended,
                                                    generate, decode_at, flags, first)
        return (fn, (*consts, *values)), ended

    def _parametric(self, d: Insn, generate: Callable[[Insn], Generated]
                    ) -> Union[int, Param]:
        """The parametric binding of d's head (see the module's doc), or _NEVER."""
        reg: List[_Sym] = []
        proxy = d.__class__()
        fields = d.__dict__
        proxy.ip = _Sym(operator.attrgetter("ip"), reg, 1)  # type: ignore[assignment]
        proxy.raw = _Sym(operator.attrgetter("raw"), reg)  # type: ignore[assignment]
        for name in ("disp", "imm"):
            if name in fields:
                setattr(proxy, name, _Sym(operator.attrgetter(name), reg))
        try:
            lines, consts, ended = generate(proxy)
        except Exception:  # noqa: BLE001 - _NotParametric, or what a symbol's refusal led to
            return _NEVER
        n = len(consts)
        out: List[str] = []
        for line in lines:
            if "'" in line or '"' in line:
                return _NEVER  # a string literal: the text is kept as it is (shape())
            if "_p" in line:
                for j in range(len(reg)):
                    line = line.replace(f"_p{j}_", f"K{n + j}")
            out.append(line)
        own: List[int] = []
        calc: List[Tuple[int, _Sym]] = []
        fixed: List[Any] = []
        for i, c in enumerate([*consts, *reg]):
            if c is proxy:
                own.append(i)
                fixed.append(None)
            elif c.__class__ is _Sym:
                calc.append((i, c))
                fixed.append(None)
            elif _independent(c, proxy):
                fixed.append(c)
            else:
                return _NEVER
        fn, values, _ = self.shape(out, len(fixed))
        return (fn, (*fixed, *values), tuple(own), tuple(calc), ended)

    @staticmethod
    def _bytes_entry(d: Insn, pent: Param, args: List[Any], ip_limit: int,
                     flags: Tuple[bool, bool]) -> Union[int, Entry]:
        """The bytes cache's Entry of d from its head's parametric binding (``args``: d's
        arguments): a computed argument is a constant of these bytes when it does not
        follow RIP, follows RIP (an argument at RIP + delta) when it is RIP plus a constant
        masked at most by an all-ones mask as wide as the IP, else _NEVER."""
        fn, _, own, calc, ended = pent
        a = list(args)
        for i in own:
            a[i] = None
        rels: List[Tuple[int, int]] = []
        for i, sym in calc:
            if sym.k == 0:
                continue
            if sym.k != 1 or (sym.m is not None and (sym.m == -1 or sym.m < ip_limit)):
                return _NEVER
            rels.append((i, a[i] - d.ip))
            a[i] = 0
        return (fn, tuple(a), rels, list(own), ended, flags[0], flags[1])

    def _relocatable(self, d: Insn, fn: InsnFn, values: List[int], shape: str,
                     consts: List[Any], ended: bool, generate: Callable[[Insn], Generated],
                     decode_at: Callable[[bytes, int, int], Insn],
                     flags: Tuple[bool, bool], first: "First") -> Union[int, Entry]:
        """d at another RIP (its first sighting's, else generated again at one): literals
        that moved by as much follow RIP."""
        other, shape2, ended2, own2, nconst = first[:5]
        consts2: Tuple[Any, ...] = first[5:5 + nconst]
        values2: Tuple[int, ...] = first[5 + nconst:]
        if other == d.ip:
            other = 0x2000 if d.ip == 0x1000 else 0x1000
            d2 = decode_at(d.raw, d.bits, other)
            if d2.len != d.len:
                return _NEVER
            lines2, c2s, ended2 = generate(d2)
            _, v2s, shape2 = self.shape(lines2, len(c2s))
            values2 = tuple(v2s)
            consts2 = tuple(None if c is d2 else c for c in c2s)
            own2 = tuple(i for i, c in enumerate(c2s) if c is d2)
        if shape2 != shape or ended2 != ended or len(consts2) != len(consts):
            return _NEVER
        args: List[Any] = []
        own: List[int] = []
        for i, (c, c2) in enumerate(zip(consts, consts2)):
            if c is d and i in own2:
                args.append(None)
                own.append(i)
            elif c is c2 and i not in own2:
                args.append(c)
            else:
                return _NEVER
        rels: List[Tuple[int, int]] = []
        for i, (a, b) in enumerate(zip(values, values2)):
            if a == b:
                args.append(a)
            elif a - d.ip == b - other:
                args.append(0)
                rels.append((len(consts) + i, a - d.ip))
            else:
                return _NEVER
        if rels and d.asz * 8 < d.bits:
            # An address-size prefix: a literal that follows RIP is an address that
            # wraps at the address size (SDM vol. 1, 3.7.5.1), not at the IP's width.
            return _NEVER
        return (fn, tuple(args), rels, own, ended, flags[0], flags[1])


def make_block(st: CpuState, insns: Sequence[Bound], ips: Sequence[int], next_ip: int,
               promote: Optional[Callable[[], Optional[Callable[[int], int]]]]
               ) -> Callable[[int], int]:
    """The tier-0 block over ``insns`` (the block function's contract: see codegen).

    ``promote()`` compiles the block and puts it in the cache in this one's place
    (None: the block cannot be cached); it is called on the PROMOTE_AFTER-th run.
    """
    insns = tuple(insns)
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
            for f, a in insns:
                r = f(*a)
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
