"""String instructions (MOVS/CMPS/STOS/LODS/SCAS/INS/OUTS) with REP/REPE/REPNE.

Registers are committed after every element, so a fault or an exit in the
middle leaves RSI/RDI/RCX describing the elements already done and RIP on the
instruction (it resumes when re-executed), as on hardware. Port IO moves one
element per exit (count 1), like this host's KVM emulator. Long REP runs are
split into chunks so kicks and budgets are honoured in between.

REP MOVS/STOS over ordinary RAM copy whole page runs at once, upwards (DF=0)
and downwards (DF=1: a kernel's ``std; rep movsq`` moving itself up in memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from .codegen import KEEP, M
from .decode import Insn
from .faults import ExitNow, Restart
from .state import DF, DS, ES, LZ_SUB
from .system import _io_allowed, port_in, port_out

if TYPE_CHECKING:
    from .cpuview import HelperCpu

#: Elements executed per activation before yielding to the run loop.
CHUNK = 1 << 16


def _set_reg(st_r: list, n: int, asz: int, v: int) -> None:  # type: ignore[type-arg]
    if asz == 8:
        st_r[n] = v
    elif asz == 4:
        st_r[n] = v & 0xFFFFFFFF
    else:
        st_r[n] = (st_r[n] & KEEP[2]) | (v & 0xFFFF)


def string_op(e: "HelperCpu", d: Insn) -> None:
    st = e.st
    R = st.R
    opc = d.opc
    n = 1 if opc & 1 == 0 else d.osz
    if opc in (0x6D, 0x6F):
        n = min(d.osz, 4)
    asz = d.asz
    am = M[asz]
    rep = d.rep
    user = e.cpl == 3
    mmu = e.mmu
    step = -n if st.fl & DF else n
    lin_mask = 0xFFFFFFFFFFFFFFFF if e.bits == 64 else 0xFFFFFFFF
    src_seg = d.seg if d.seg >= 0 else DS
    sb = st.sb
    long64 = e.bits == 64

    def lin(seg: int, off: int) -> int:
        if long64 and seg not in (4, 5):
            return off
        return (sb[seg] + off) & lin_mask

    count = R[1] & am if rep else 1
    if rep and count == 0:
        return
    kind = opc & 0xFE
    if rep and kind in (0xA4, 0xAA):
        fast = _fast_down if st.fl & DF else _fast
        done = fast(e, d, kind, n, count, user, lin, src_seg)
        if done:
            count = R[1] & am
            if count == 0:
                return
    budget = CHUNK
    while True:
        si = R[6] & am
        di = R[7] & am
        if kind == 0xA4:  # MOVS
            v = mmu.read_int(lin(src_seg, si), n, user)
            mmu.write_int(lin(ES, di), n, v, user)
            _set_reg(R, 6, asz, si + step)
            _set_reg(R, 7, asz, di + step)
        elif kind == 0xAA:  # STOS
            mmu.write_int(lin(ES, di), n, R[0] & M[n], user)
            _set_reg(R, 7, asz, di + step)
        elif kind == 0xAC:  # LODS
            v = mmu.read_int(lin(src_seg, si), n, user)
            if n >= 4:
                R[0] = v
            else:
                R[0] = (R[0] & KEEP[n]) | v
            _set_reg(R, 6, asz, si + step)
        elif kind == 0xA6:  # CMPS
            a = mmu.read_int(lin(src_seg, si), n, user)
            b = mmu.read_int(lin(ES, di), n, user)
            st.lz = (LZ_SUB, a, b, (a - b) & M[n], n * 8)
            _set_reg(R, 6, asz, si + step)
            _set_reg(R, 7, asz, di + step)
        elif kind == 0xAE:  # SCAS
            a = R[0] & M[n]
            b = mmu.read_int(lin(ES, di), n, user)
            st.lz = (LZ_SUB, a, b, (a - b) & M[n], n * 8)
            _set_reg(R, 7, asz, di + step)
        elif kind == 0x6C:  # INS
            port = R[2] & 0xFFFF
            _io_allowed(e, port, n)
            mmu.translate(lin(ES, di), True, user)  # fault before asking user space
            v = port_in(e, port, n)
            mmu.write_int(lin(ES, di), n, v, user)
            _set_reg(R, 7, asz, di + step)
        else:  # OUTS
            port = R[2] & 0xFFFF
            _io_allowed(e, port, n)
            v = mmu.read_int(lin(src_seg, si), n, user)
            _set_reg(R, 6, asz, si + step)
            if rep:
                _set_reg(R, 1, asz, count - 1)
                count -= 1
            port_out(e, port, n, v)
            if rep and count and e.stop[0]:
                _exit_mid(e)
            if not rep or not count:
                return
            continue
        if not rep:
            return
        count -= 1
        _set_reg(R, 1, asz, count)
        if count == 0:
            return
        if kind in (0xA6, 0xAE):
            zf = st.lz[3] == 0  # type: ignore[index]
            if (rep == 0xF3 and not zf) or (rep == 0xF2 and zf):
                return
        if e.stop[0]:
            _exit_mid(e)
        budget -= 1
        if budget == 0:
            raise Restart()


def _exit_mid(e: "HelperCpu") -> None:
    """An element produced an exit but the REP is not finished: report it with RIP
    still on the instruction (it resumes on the next run)."""
    e.stop[0] = False
    p = e.mmu.pending
    if p:
        ex = p.pop(0)
        raise ExitNow(ex[0], *ex[1:])
    raise Restart()


def _fast(e: "HelperCpu", d: Insn, kind: int, n: int, count: int, user: bool,
          lin: Callable[[int, int], int], src_seg: int) -> bool:
    """Bulk REP MOVS/STOS over RAM pages (DF=0). Returns True if it made progress."""
    st = e.st
    R = st.R
    am = M[d.asz]
    mmu = e.mmu
    progressed = False
    while count:
        si = R[6] & am
        di = R[7] & am
        dlin = lin(ES, di)
        room = (4096 - (dlin & 0xFFF)) // n
        if kind == 0xA4:
            slin = lin(src_seg, si)
            room = min(room, (4096 - (slin & 0xFFF)) // n)
        k = min(room, count)
        if k <= 0:
            break
        nbytes = k * n
        if di + nbytes > am or (kind == 0xA4 and si + nbytes > am):
            break  # the offset wraps: let the element loop handle it
        dview = _ram_view(e, dlin, True, user)
        if dview is None:
            break
        doff = dlin & 0xFFF
        if kind == 0xA4:
            sview = _ram_view(e, slin, False, user)
            if sview is None:
                break
            soff = slin & 0xFFF
            sphys = mmu.tlb_r[1 if user else 0]
            del sphys
            src = bytes(sview[soff: soff + nbytes])
            if _overlaps(e, slin, dlin, nbytes, user):
                break
            dview[doff: doff + nbytes] = src
            R[6] = _adv(R[6], d.asz, nbytes)
        else:
            pat = (R[0] & M[n]).to_bytes(n, "little")
            dview[doff: doff + nbytes] = pat * k
        R[7] = _adv(R[7], d.asz, nbytes)
        count -= k
        R[1] = _adv(R[1], d.asz, -k)
        progressed = True
    return progressed


def _fast_down(e: "HelperCpu", d: Insn, kind: int, n: int, count: int, user: bool,
               lin: Callable[[int, int], int], src_seg: int) -> bool:
    """Bulk REP MOVS/STOS over RAM pages with DF=1: elements from RSI/RDI down, the
    same bytes as element by element (a MOVS chunk whose destination lies below an
    overlapping source is left to the element loop). True if it made progress."""
    st = e.st
    R = st.R
    am = M[d.asz]
    progressed = False
    while count:
        si = R[6] & am
        di = R[7] & am
        dlin = lin(ES, di)
        if dlin & 0xFFF > 4096 - n:
            break  # the element crosses a page: the element loop
        room = (dlin & 0xFFF) // n + 1
        if kind == 0xA4:
            slin = lin(src_seg, si)
            if slin & 0xFFF > 4096 - n:
                break
            room = min(room, (slin & 0xFFF) // n + 1)
        k = min(room, count)
        nbytes = k * n
        back = nbytes - n  # from the lowest element of the chunk to the current one
        if di < back or (kind == 0xA4 and si < back):
            break  # the offset wraps: let the element loop handle it
        dview = _ram_view(e, dlin, True, user)
        if dview is None:
            break
        dlo = (dlin & 0xFFF) - back
        if kind == 0xA4:
            sview = _ram_view(e, slin, False, user)
            if sview is None:
                break
            slo = (slin & 0xFFF) - back
            try:
                sp = e.mmu.translate(slin, False, user) - back
                dp = e.mmu.translate(dlin, True, user) - back
            except Exception:  # noqa: BLE001 - the element loop raises the fault
                break
            if dp < sp < dp + nbytes:
                break  # a lower destination overlapping the source: element order matters
            dview[dlo: dlo + nbytes] = bytes(sview[slo: slo + nbytes])
            R[6] = _adv(R[6], d.asz, -nbytes)
        else:
            dview[dlo: dlo + nbytes] = (R[0] & M[n]).to_bytes(n, "little") * k
        R[7] = _adv(R[7], d.asz, -nbytes)
        count -= k
        R[1] = _adv(R[1], d.asz, -k)
        progressed = True
    return progressed


def _adv(v: int, asz: int, delta: int) -> int:
    if asz == 8:
        return (v + delta) & 0xFFFFFFFFFFFFFFFF
    if asz == 4:
        return (v + delta) & 0xFFFFFFFF
    return (v & KEEP[2]) | ((v + delta) & 0xFFFF)


def _overlaps(e: "HelperCpu", slin: int, dlin: int, nbytes: int, user: bool) -> bool:
    """Forward copies where the destination starts inside the source repeat bytes."""
    try:
        sp = e.mmu.translate(slin, False, user)
        dp = e.mmu.translate(dlin, True, user)
    except Exception:  # noqa: BLE001
        return True
    return sp < dp < sp + nbytes


def _ram_view(e: "HelperCpu", lin: int, write: bool, user: bool) -> Optional[memoryview]:
    """The host page behind ``lin`` if it is plain RAM the access may use directly."""
    mmu = e.mmu
    if mmu.watch is not None and lin >> 12 in mmu.watch_pages:
        return None  # a data breakpoint's page: element by element through Mmu.read/write
    phys = mmu.translate(lin, write, user)
    pp = mmu.phys_page(phys >> 12)
    if pp is None:
        return None
    view, slot = pp
    if write:
        if slot.readonly or (phys >> 12) in mmu.code_pages:
            return None
        e.vm.mark_dirty(slot, phys)
    return view
