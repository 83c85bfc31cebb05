"""x86 instruction decoder: prefixes, opcode, ModRM/SIB, displacement, immediates.

``decode(code, bits)`` turns the bytes at an instruction boundary into an
:class:`Insn`. It knows the *shape* of every instruction of the one- and
two-byte maps (so it can measure any instruction, including the ones the engine
does not implement); the code generators decide what each opcode does.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from .faults import GuestFault

# One-byte opcodes that take a ModRM byte.
_MODRM1 = set()
for _b in range(0x40):
    if _b & 7 < 4:
        _MODRM1.add(_b)
_MODRM1 |= {0x62, 0x63, 0x69, 0x6B, 0xC0, 0xC1, 0xC4, 0xC5, 0xC6, 0xC7, 0xD0, 0xD1, 0xD2,
            0xD3, 0xF6, 0xF7, 0xFE, 0xFF}
_MODRM1 |= set(range(0x80, 0x90)) | set(range(0xD8, 0xE0))
# One-byte opcodes with an 8-bit immediate.
_IMM8_1 = {0x04, 0x0C, 0x14, 0x1C, 0x24, 0x2C, 0x34, 0x3C, 0x6A, 0x6B, 0x80, 0x82, 0x83, 0xA8,
           0xC0, 0xC1, 0xC6, 0xCD, 0xD4, 0xD5, 0xE4, 0xE5, 0xE6, 0xE7, 0xEB}
_IMM8_1 |= set(range(0x70, 0x80)) | set(range(0xB0, 0xB8)) | set(range(0xE0, 0xE4))
# One-byte opcodes with a 16/32-bit immediate (operand size, 32 max).
_IMMZ_1 = {0x05, 0x0D, 0x15, 0x1D, 0x25, 0x2D, 0x35, 0x3D, 0x68, 0x69, 0x81, 0xA9, 0xC7, 0xE8,
           0xE9}
# Two-byte opcodes without ModRM.
_NOMODRM2 = {0x05, 0x06, 0x07, 0x08, 0x09, 0x0B, 0x0E, 0x30, 0x31, 0x32, 0x33, 0x34, 0x35,
             0x37, 0x77, 0xA0, 0xA1, 0xA2, 0xA8, 0xA9, 0xAA} | set(range(0x80, 0x90)) \
    | set(range(0xC8, 0xD0))
_IMM8_2 = {0x70, 0x71, 0x72, 0x73, 0xA4, 0xAC, 0xBA, 0xC2, 0xC4, 0xC5, 0xC6}

#: Opcodes whose operand size defaults to 64 bits in long mode.
D64 = {0x50, 0x51, 0x52, 0x53, 0x54, 0x55, 0x56, 0x57, 0x58, 0x59, 0x5A, 0x5B, 0x5C, 0x5D,
       0x5E, 0x5F, 0x68, 0x6A, 0x8F, 0x9C, 0x9D, 0xC2, 0xC3, 0xC8, 0xC9, 0xE8, 0xE9, 0xEB,
       0x1A0, 0x1A1, 0x1A8, 0x1A9} | set(range(0x70, 0x80)) | set(range(0x180, 0x190)) \
    | set(range(0xE0, 0xE4))


class NeedMore(Exception):
    """The instruction continues beyond the bytes given."""


class Insn:
    """One decoded instruction (immutable after decode).

    The fields are class attributes holding their defaults: ``decode`` sets on the
    instance only what differs (an instruction's decode allocates one small dict).
    """

    ip = 0
    len = 0
    bits = 64
    opc = 0
    osz = 4
    asz = 8
    seg = -1
    rep = 0
    lock = False
    rex = 0
    rexw = False
    modrm = False
    mod = 0
    reg = 0
    rm = 0
    base = -1
    index = -1
    scale = 1
    disp = 0
    riprel = False
    imm = 0
    imm2 = 0
    raw = b""
    opsize_prefix = False
    ss_default = False
    nprefix = 0

    @property
    def is_mem(self) -> bool:
        return self.modrm and self.mod != 3

    @property
    def next_ip(self) -> int:
        return self.ip + self.len

    def __repr__(self) -> str:
        return f"<Insn {self.ip:#x} {self.raw.hex()} opc={self.opc:#x}>"


def _s(v: int, n: int) -> int:
    """Sign-extend an n-byte little-endian value."""
    bit = 1 << (8 * n - 1)
    return (v ^ bit) - bit


def _table(members: "set[int] | frozenset[int]") -> bytes:
    return bytes(1 if b in members else 0 for b in range(256))


#: byte -> 1 if a legacy prefix (66 67 26 2E 36 3E 64 65 F0 F2 F3)
_PREFIX = _table({0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0, 0xF2, 0xF3})
#: byte -> 1 if a legacy prefix or REX (what follows a REX and cancels it)
_PREFIX_REX = _table({0x66, 0x67, 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65, 0xF0, 0xF2, 0xF3,
                      *range(0x40, 0x50)})
_HAS_MODRM1 = _table(_MODRM1)
_HAS_IMM8_1 = _table(_IMM8_1)
_HAS_MODRM2 = bytes(0 if b in _NOMODRM2 else 1 for b in range(256))
_HAS_IMM8_2 = _table(_IMM8_2)
#: the 0x40..0x4F row is REX in 64-bit code
_REX = _table(set(range(0x40, 0x50)))


#: per code-segment size: the bytes that start an instruction (prefixes, opcode, ModRM,
#: SIB: its *head*) -> what the head decodes to (``_Template``), or _LONGER for the
#: beginning of a longer head. x86 heads are prefix-free (no head begins another), so
#: an instruction whose head was seen is decoded without the decoder: its fields copied,
#: its displacement and immediate read from their offsets.
_HEADS: Dict[int, Dict[bytes, Any]] = {16: {}, 32: {}, 64: {}}
_HEADS_MAX = 20_000  # entries per mode (heads and their beginnings)
_LONGER = object()
#: decodes of a head before it is recorded in _HEADS (see _learn)
LEARN_AFTER = 3
#: per mode: head -> its decodes so far (below LEARN_AFTER)
_COUNTS: Dict[int, Dict[bytes, int]] = {16: {}, 32: {}, 64: {}}
#: (a subclass of Insn holding the head's fields (all but ip/raw/disp/imm) as class
#: attributes, length, head length, displacement size, immediate size, immediate signed)
_Template = Tuple[type, int, int, int, int, int]


def decode(code: bytes, bits: int, ip: int = 0) -> Insn:
    """Decode the instruction at the start of ``code`` for a ``bits``-bit code segment.

    Raises NeedMore when ``code`` ends inside the instruction and #GP(0) when it
    is longer than 15 bytes.
    """
    heads = _HEADS.get(bits)
    if heads is not None and type(code) is bytes and code:
        d = from_head(code, heads, ip)
        if d is not None:
            return d
    d, head, isg = _decode_full(code, bits, ip)
    if heads is not None and isg >= 0 and len(heads) < _HEADS_MAX and type(code) is bytes:
        _learn(heads, d, code, head, isg)
    return d


def heads_of(bits: int) -> Dict[bytes, Any]:
    """The head cache of ``bits``-bit code, for from_head()."""
    return _HEADS[bits]


def from_head(code: bytes, heads: Dict[bytes, Any], ip: int) -> Optional[Insn]:
    """decode()'s fast path: the instruction at the start of ``code`` (bytes, not empty)
    if its head is in ``heads`` (heads_of) and all its bytes are there, else None (then
    decode() answers, and learns the head)."""
    n = len(code)
    k = 1
    t = heads.get(code[:1])
    while t is _LONGER and k < n:
        k += 1
        t = heads.get(code[:k])
    if t is None or t is _LONGER or n < t[1]:
        return None
    cls, ln, h, dsz, isz, isg = t
    d: Insn = cls()
    d.ip = ip
    if dsz:
        bit = 1 << (8 * dsz - 1)
        d.disp = (int.from_bytes(code[h:h + dsz], "little") ^ bit) - bit
    if isz:
        v = int.from_bytes(code[h + dsz:ln], "little")
        if isg:
            bit = 1 << (8 * isz - 1)
            v = (v ^ bit) - bit
        d.imm = v
    d.raw = code[:ln]
    return d


def _learn(heads: Dict[bytes, Any], d: Insn, code: bytes, head: int, isg: int) -> None:
    """Record the head of ``d`` (decoded from ``code``) for decode()'s fast path, at its
    LEARN_AFTER-th decode (a class costs ~10 us, five decodes: a head seen once or twice
    in a short run does not pay for it)."""
    counts = _COUNTS[d.bits]
    key = code[:head]
    seen = counts.get(key, 0) + 1
    if seen < LEARN_AFTER:
        if len(counts) < _HEADS_MAX:
            counts[key] = seen
        return
    counts.pop(key, None)
    fields = dict(d.__dict__)
    for name in ("ip", "raw", "disp", "imm"):
        fields.pop(name, None)
    fields["__slots__"] = ()
    ln = d.len
    dsz = 0
    if d.modrm and d.mod != 3:
        dsz = {1: 1, 2: 2 if d.asz == 2 else 4}.get(d.mod, 0)
        if d.mod == 0 and (d.riprel or (d.base == -1)):
            dsz = 2 if d.asz == 2 else 4
    isz = ln - head - dsz
    if isz < 0 or isz > 8 or (isz == 0 and isg):
        return
    for k in range(1, head):
        if heads.get(code[:k], _LONGER) is not _LONGER:
            return  # pragma: no cover - heads are prefix-free
    for k in range(1, head):
        heads[code[:k]] = _LONGER
    heads[code[:head]] = (type("Insn", (Insn,), fields), ln, head, dsz, isz, isg)


def _decode_full(code: bytes, bits: int, ip: int) -> Tuple[Insn, int, int]:
    """decode() from the bytes; also (where the ModRM/SIB bytes end, the signedness of
    the immediate: 1 signed, 0 unsigned, -1 no template (two immediates))."""
    d = Insn()
    d.ip = ip
    if bits != 64:
        d.bits = bits
    n = len(code)
    if not n:
        raise NeedMore()
    b = code[0]
    i = 0
    opsize = adsize = False
    rex = 0
    if _PREFIX[b] or (bits == 64 and _REX[b]):
        while True:
            if i >= n:
                raise NeedMore()
            b = code[i]
            if b == 0x66:
                opsize = True
            elif b == 0x67:
                adsize = True
            elif b in (0x26, 0x2E, 0x36, 0x3E):
                if bits != 64:
                    d.seg = (b >> 3) & 3
            elif b in (0x64, 0x65):
                d.seg = b - 0x60
            elif b == 0xF0:
                d.lock = True
            elif b in (0xF2, 0xF3):
                d.rep = b
            elif bits == 64 and 0x40 <= b <= 0x4F:
                rex = b
                i += 1
                if i >= n:
                    raise NeedMore()
                b = code[i]
                if _PREFIX_REX[b]:
                    rex = 0  # a REX not immediately before the opcode is ignored
                    continue
                break
            else:
                break
            i += 1
            if i > 14:
                raise GuestFault(13, 0)
        if i:
            d.nprefix = i
        if rex:
            d.rex = rex
            if rex & 8:
                d.rexw = True
        if opsize:
            d.opsize_prefix = True
    if bits == 64:
        if adsize:
            d.asz = 4
        osz = 8 if rex & 8 else (2 if opsize else 4)
    elif bits == 32:
        d.asz = 2 if adsize else 4
        osz = 2 if opsize else 4
    else:
        d.asz = 4 if adsize else 2
        osz = 4 if opsize else 2
    # opcode
    i += 1
    if b == 0x0F:
        if i >= n:
            raise NeedMore()
        b2 = code[i]
        i += 1
        if b2 == 0x38 or b2 == 0x3A:
            if i >= n:
                raise NeedMore()
            opc = (0x200 if b2 == 0x38 else 0x300) | code[i]
            i += 1
            has_modrm = True
            imm8 = b2 == 0x3A
        else:
            opc = 0x100 | b2
            has_modrm = _HAS_MODRM2[b2] == 1
            imm8 = _HAS_IMM8_2[b2] == 1
    else:
        opc = b
        has_modrm = _HAS_MODRM1[b] == 1
        if bits == 64 and b in (0xC4, 0xC5, 0x62):
            has_modrm = True  # VEX/EVEX: measured as unsupported below anyway
        imm8 = _HAS_IMM8_1[b] == 1
    d.opc = opc
    if bits == 64 and opc in D64:
        osz = 2 if (opsize and not rex & 8) else 8
    if osz != 4:
        d.osz = osz
    head = i
    isg = 0
    if has_modrm:
        if i >= n:
            raise NeedMore()
        m = code[i]
        i += 1
        d.modrm = True
        mod = m >> 6
        rm = m & 7
        if mod:
            d.mod = mod
        reg = ((m >> 3) & 7) | ((rex & 4) << 1)
        if reg:
            d.reg = reg
        if mod == 3:
            rm |= (rex & 1) << 3
            if rm:
                d.rm = rm
            head = i
        elif d.asz == 2:
            head = i
            i = _modrm16(d, code, i, mod, rm)
        else:
            head = i + 1 if rm == 4 else i
            i = _modrm32(d, code, i, mod, rm, rex)
    # immediates
    if opc < 0x100:
        if imm8:
            if i >= n:
                raise NeedMore()
            d.imm = code[i]
            i += 1
        elif opc in _IMMZ_1:
            k = 2 if osz == 2 else 4
            i = _imm(d, code, i, k, signed=True)
            isg = 1
        elif 0xB8 <= opc <= 0xBF:
            i = _imm(d, code, i, osz, signed=False)
        elif opc in (0xA0, 0xA1, 0xA2, 0xA3):
            i = _imm(d, code, i, d.asz, signed=False)
        elif opc in (0xC2, 0xCA):
            i = _imm(d, code, i, 2, signed=False)
        elif opc == 0xC8:
            i = _imm(d, code, i, 2, signed=False)
            if i >= n:
                raise NeedMore()
            d.imm2 = code[i]
            i += 1
            isg = -1
        elif opc in (0x9A, 0xEA) and bits != 64:
            i = _imm(d, code, i, osz, signed=False)
            imm = d.imm
            i = _imm(d, code, i, 2, signed=False)
            d.imm2 = d.imm
            d.imm = imm
            isg = -1
        elif opc in (0xF6, 0xF7) and d.reg & 7 in (0, 1):
            k = 1 if opc == 0xF6 else (2 if osz == 2 else 4)
            i = _imm(d, code, i, k, signed=opc == 0xF7)
            isg = int(opc == 0xF7)
    else:
        if imm8:
            if i >= n:
                raise NeedMore()
            d.imm = code[i]
            i += 1
        elif 0x180 <= opc <= 0x18F:
            i = _imm(d, code, i, 2 if osz == 2 else 4, signed=True)
            isg = 1
    if i > 15:
        raise GuestFault(13, 0)
    d.len = i
    d.raw = code[:i] if type(code) is bytes else bytes(code[:i])
    return d, head, isg


def _imm(d: Insn, code: bytes, i: int, k: int, signed: bool) -> int:
    if i + k > len(code):
        raise NeedMore()
    v = int.from_bytes(code[i:i + k], "little")
    if signed:
        v = _s(v, k)
    d.imm = v
    return i + k


_BASES16 = ((3, 6), (3, 7), (5, 6), (5, 7), (6, -1), (7, -1), (5, -1), (3, -1))


def _modrm16(d: Insn, code: bytes, i: int, mod: int, rm: int) -> int:
    base, index = _BASES16[rm]
    if mod == 0 and rm == 6:
        base = -1
        if i + 2 > len(code):
            raise NeedMore()
        d.disp = _s(int.from_bytes(code[i:i + 2], "little"), 2)
        i += 2
    elif mod == 1:
        if i >= len(code):
            raise NeedMore()
        d.disp = _s(code[i], 1)
        i += 1
    elif mod == 2:
        if i + 2 > len(code):
            raise NeedMore()
        d.disp = _s(int.from_bytes(code[i:i + 2], "little"), 2)
        i += 2
    d.base = base
    d.index = index
    d.ss_default = base == 5  # BP-based forms use SS
    return i


def _modrm32(d: Insn, code: bytes, i: int, mod: int, rm: int, rex: int) -> int:
    n = len(code)
    if rm == 4:
        if i >= n:
            raise NeedMore()
        sib = code[i]
        i += 1
        scale = 1 << (sib >> 6)
        index = ((sib >> 3) & 7) | ((rex & 2) << 2)
        base = (sib & 7) | ((rex & 1) << 3)
        d.index = -1 if index == 4 else index
        d.scale = scale
        if sib & 7 == 5 and mod == 0:
            base = -1
            if i + 4 > n:
                raise NeedMore()
            d.disp = _s(int.from_bytes(code[i:i + 4], "little"), 4)
            i += 4
        d.base = base
    elif rm == 5 and mod == 0:
        if i + 4 > n:
            raise NeedMore()
        d.disp = _s(int.from_bytes(code[i:i + 4], "little"), 4)
        i += 4
        if d.bits == 64:
            d.riprel = True
        d.base = -1
    else:
        d.base = rm | ((rex & 1) << 3)
    if mod == 1:
        if i >= n:
            raise NeedMore()
        d.disp = _s(code[i], 1)
        i += 1
    elif mod == 2:
        if i + 4 > n:
            raise NeedMore()
        d.disp = _s(int.from_bytes(code[i:i + 4], "little"), 4)
        i += 4
    d.ss_default = d.base in (4, 5)
    return i


def insn_length(code: bytes, bits: int) -> Optional[int]:
    """Length of the instruction at the start of ``code``, or None if it cannot be measured."""
    try:
        return decode(code, bits).len
    except (NeedMore, GuestFault):
        return None
