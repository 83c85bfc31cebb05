"""Guest memory as the mock vCPU sees it: slots, paging, TLBs, MMIO and dirty pages.

Fast path: per-privilege TLB dictionaries map a linear page number to a
memoryview of the 4 KiB host page that backs it (read TLB) or to the same view
when writes need no bookkeeping (write TLB). Everything else (page walks, A/D
bits, #PF, read-only slots, MMIO, coalesced MMIO, dirty logging and
self-modifying-code detection) lives in the slow path.

Data breakpoints (the DR7 R/W and LEN fields that ``KVM_SET_GUEST_DEBUG`` gives
the mock, see :meth:`Mmu.set_watch`): a linear page holding a watched range is
never put in the TLBs, so every load and store to it takes the slow path
(:meth:`Mmu.read`/:meth:`Mmu.write`), which compares the access with the armed
ranges and records DR6's B0-B3 bits (``watch_hit``) and a ``("watch",)`` exit for
the end of the instruction. With nothing armed the fast path is unchanged.

Lifetime: the page views are slices of ``HostMemory.view``; ``flush()`` drops
them and the vCPU flushes before its slots change or its VM closes.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Set, Tuple

from .faults import ExitNow, GuestFault
from .state import CR0_PG, CR0_WP, CR4_PAE, CR4_PSE, CR4_SMEP, EFER_LMA, EFER_NXE, CpuState

if TYPE_CHECKING:
    from .vm import MockVm

PF = 14
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
PAGE_MASK = 0xFFF
ADDR_MASK = 0x000FFFFFFFFFF000


class Mmu:
    """Address translation and memory access for one vCPU."""

    def __init__(self, vm: "MockVm", st: CpuState, on_code_write: Callable[[int], None]) -> None:
        self.vm = vm
        self.st = st
        self._on_code_write = on_code_write
        # [supervisor, user] -> {linear page: memoryview of the host page}
        self.tlb_r: List[Dict[int, memoryview]] = [{}, {}]
        self.tlb_w: List[Dict[int, memoryview]] = [{}, {}]
        #: Instruction TLB: linear page -> physical page (fetch permission checked).
        self.itlb: List[Dict[int, int]] = [{}, {}]
        #: Physical pages that hold translated code (writes invalidate them).
        self.code_pages: Set[int] = set()
        #: Completed MMIO reads waiting to be consumed by a re-executed instruction.
        self.mmio_replay: List[Tuple[int, int, bytes]] = []
        #: Exits (MMIO writes) produced by the current instruction, in order.
        self.pending: List[Tuple[Any, ...]] = []
        self.stop_flag: List[bool] = [False]
        #: Armed data breakpoints: (linear base, length, writes only, DR index); None: none.
        self.watch: Optional[List[Tuple[int, int, bool, int]]] = None
        #: Linear pages the armed ranges touch (kept out of the TLBs).
        self.watch_pages: Set[int] = set()
        #: DR6 B0-B3 bits of the data breakpoints the current instruction hit.
        self.watch_hit = 0
        self.build_fast_paths()

    # -- cache control ----------------------------------------------------------
    def flush(self) -> None:
        for t in self.tlb_r + self.tlb_w:
            t.clear()
        for i in self.itlb:
            i.clear()

    def flush_write(self) -> None:
        for t in self.tlb_w:
            t.clear()

    def flush_page(self, lin: int) -> None:
        p = lin >> 12
        for t in self.tlb_r + self.tlb_w:
            t.pop(p, None)
        for i in self.itlb:
            i.pop(p, None)

    def set_watch(self, ranges: List[Tuple[int, int, bool, int]]) -> None:
        """Arm data breakpoints: (linear base, length, writes only, DR index) each."""
        self.watch = list(ranges) or None
        pages: Set[int] = set()
        for base, size, _, _ in ranges:
            pages.update((base >> 12, (base + size - 1) >> 12))
        self.watch_pages = pages
        self.watch_hit = 0
        self.flush()

    def _watched(self, lin: int, n: int, write: bool) -> None:
        hit = 0
        for base, size, writes_only, index in self.watch or ():
            if (write or not writes_only) and lin < base + size and base < lin + n:
                hit |= 1 << index
        if hit:
            if not self.watch_hit:
                self.pending.append(("watch",))  # reported after the instruction (a trap)
            self.watch_hit |= hit
            self.stop_flag[0] = True

    # -- physical memory --------------------------------------------------------
    def phys_page(self, ppage: int) -> Optional[Tuple[memoryview, Any]]:
        """(view of the 4 KiB host page, slot) backing physical page ``ppage``, or None."""
        gpa = ppage << 12
        for s in self.vm.slots.values():
            if s.guest_phys_addr <= gpa < s.end:
                off = s.offset + gpa - s.guest_phys_addr
                return s.memory.view[off: off + 4096], s
        return None

    def phys_read(self, gpa: int, n: int) -> bytes:
        """Read physical memory (MMIO reads go through user space)."""
        end = gpa + n
        if (gpa >> 12) != ((end - 1) >> 12):
            split = (gpa | PAGE_MASK) + 1
            return self.phys_read(gpa, split - gpa) + self.phys_read(split, end - split)
        pp = self.phys_page(gpa >> 12)
        if pp is None:
            return self._mmio_read(gpa, n)
        off = gpa & PAGE_MASK
        return bytes(pp[0][off: off + n])

    def phys_write(self, gpa: int, data: bytes) -> None:
        n = len(data)
        end = gpa + n
        if (gpa >> 12) != ((end - 1) >> 12):
            split = (gpa | PAGE_MASK) + 1
            self.phys_write(gpa, data[: split - gpa])
            self.phys_write(split, data[split - gpa:])
            return
        ppage = gpa >> 12
        pp = self.phys_page(ppage)
        if pp is None or pp[1].readonly:
            self._mmio_write(gpa, data)
            return
        view, slot = pp
        off = gpa & PAGE_MASK
        view[off: off + n] = data
        self.vm.mark_dirty(slot, gpa)
        if ppage in self.code_pages:
            self._on_code_write(ppage)

    def _mmio_read(self, gpa: int, n: int) -> bytes:
        replay = self.mmio_replay
        if replay:
            addr, ln, data = replay[0]
            if addr == gpa and ln == n:
                del replay[0]
                return data
        raise ExitNow("mmio_read", gpa, n)

    def _mmio_write(self, gpa: int, data: bytes) -> None:
        if self.vm.coalesced_write(gpa, data, pio=False):
            return
        exit_ = ("mmio_write", gpa, bytes(data))
        if self.watch_hit and self.pending and self.pending[-1] == ("watch",):
            self.pending.insert(len(self.pending) - 1, exit_)  # the trap comes last
        else:
            self.pending.append(exit_)
        self.stop_flag[0] = True

    # -- paging -----------------------------------------------------------------
    def walk(self, lin: int, write: bool, user: bool, fetch: bool,
             set_bits: bool = True) -> Tuple[int, bool, bool]:
        """Translate ``lin``; returns (physical address, writable, user-accessible).

        Raises #PF with KVM's/the SDM's error code (P, W/R, U/S, RSVD, I/D).
        """
        st = self.st
        if not st.cr0 & CR0_PG:
            return lin, True, True
        nxe = bool(st.efer & EFER_NXE)
        err = (2 if write else 0) | (4 if user else 0)
        if fetch and (nxe or st.cr4 & CR4_SMEP):
            err |= 16
        if st.efer & EFER_LMA:
            return self._walk_levels(lin, [39, 30, 21, 12], st.cr3 & ADDR_MASK, err, write,
                                     user, fetch, nxe, set_bits)
        if st.cr4 & CR4_PAE:
            pdpte_addr = (st.cr3 & 0xFFFFFFE0) + ((lin >> 30) & 3) * 8
            pdpte = self._pt_read(pdpte_addr)
            if not pdpte & 1:
                raise GuestFault(PF, err, lin)
            return self._walk_levels(lin, [21, 12], pdpte & ADDR_MASK, err, write, user, fetch,
                                     nxe, set_bits)
        # 32-bit paging
        pde_addr = (st.cr3 & 0xFFFFF000) + ((lin >> 22) & 0x3FF) * 4
        pde = self._pt_read32(pde_addr)
        if not pde & 1:
            raise GuestFault(PF, err, lin)
        if pde & 0x80 and st.cr4 & CR4_PSE:
            phys = (pde & 0xFFC00000) | (lin & 0x3FFFFF)
            w_ok, u_ok = bool(pde & 2), bool(pde & 4)
            self._check(lin, err, write, user, fetch, w_ok, u_ok, False)
            if set_bits:
                self._set_ad32(pde_addr, pde, write)
            return phys, w_ok, u_ok
        pte_addr = (pde & 0xFFFFF000) + ((lin >> 12) & 0x3FF) * 4
        pte = self._pt_read32(pte_addr)
        if not pte & 1:
            raise GuestFault(PF, err, lin)
        w_ok = bool(pde & 2) and bool(pte & 2)
        u_ok = bool(pde & 4) and bool(pte & 4)
        self._check(lin, err, write, user, fetch, w_ok, u_ok, False)
        if set_bits:
            self._set_ad32(pde_addr, pde, False)
            self._set_ad32(pte_addr, pte, write)
        return (pte & 0xFFFFF000) | (lin & PAGE_MASK), w_ok, u_ok

    def _walk_levels(self, lin: int, shifts: List[int], table: int, err: int, write: bool,
                     user: bool, fetch: bool, nxe: bool,
                     set_bits: bool) -> Tuple[int, bool, bool]:
        entries: List[Tuple[int, int]] = []
        w_ok = u_ok = True
        nx = False
        rsvd_nx = 0 if nxe else (1 << 63)
        for shift in shifts:
            addr = table + ((lin >> shift) & 0x1FF) * 8
            e = self._pt_read(addr)
            if not e & 1:
                raise GuestFault(PF, err, lin)
            if e & rsvd_nx:
                raise GuestFault(PF, err | 1 | 8, lin)
            entries.append((addr, e))
            w_ok = w_ok and bool(e & 2)
            u_ok = u_ok and bool(e & 4)
            nx = nx or bool(e >> 63)
            if shift == 12 or (e & 0x80 and shift in (21, 30)):
                page_mask = (1 << shift) - 1
                phys = (e & ADDR_MASK & ~page_mask) | (lin & page_mask)
                self._check(lin, err, write, user, fetch, w_ok, u_ok, nx and nxe)
                if set_bits:
                    last = len(entries) - 1
                    for i, (a, v) in enumerate(entries):
                        nv = v | 0x20
                        if i == last and write:
                            nv |= 0x40
                        if nv != v:
                            self._pt_write(a, nv)
                return phys, w_ok, u_ok
            table = e & ADDR_MASK
        raise AssertionError("unreachable")

    def _check(self, lin: int, err: int, write: bool, user: bool, fetch: bool, w_ok: bool,
               u_ok: bool, nx: bool) -> None:
        st = self.st
        if user and not u_ok:
            raise GuestFault(PF, err | 1, lin)
        if write and not w_ok and (user or st.cr0 & CR0_WP):
            raise GuestFault(PF, err | 1, lin)
        if fetch and nx:
            raise GuestFault(PF, err | 1, lin)
        if fetch and not user and u_ok and st.cr4 & CR4_SMEP:
            raise GuestFault(PF, err | 1, lin)

    def _pt_read(self, gpa: int) -> int:
        pp = self.phys_page(gpa >> 12)
        if pp is None:
            return 0  # page tables in MMIO: treat as not present
        return int(_U64.unpack_from(pp[0], gpa & PAGE_MASK)[0])

    def _pt_read32(self, gpa: int) -> int:
        pp = self.phys_page(gpa >> 12)
        if pp is None:
            return 0
        return int(_U32.unpack_from(pp[0], gpa & PAGE_MASK)[0])

    def _pt_write(self, gpa: int, value: int) -> None:
        self.phys_write(gpa, _U64.pack(value))

    def _set_ad32(self, addr: int, e: int, dirty: bool) -> None:
        ne = e | 0x20 | (0x40 if dirty else 0)
        if ne != e:
            self.phys_write(addr, _U32.pack(ne))

    # -- linear access (slow path) ------------------------------------------------
    def translate(self, lin: int, write: bool, user: bool, fetch: bool = False) -> int:
        """Linear -> physical with checks; fills the TLBs for ordinary RAM pages."""
        if self.st.efer & EFER_LMA:
            top = lin >> 47
            if top and top != 0x1FFFF:
                raise GuestFault(13, 0)
        phys, w_ok, u_ok = self.walk(lin, write, user, fetch)
        page = lin >> 12
        ppage = phys >> 12
        if not fetch:
            pp = self.phys_page(ppage)
            if pp is not None and page not in self.watch_pages:
                view, slot = pp
                priv = 1 if user else 0
                self.tlb_r[priv][page] = view
                can_write = w_ok or (not user and not self.st.cr0 & CR0_WP)
                if write and can_write and not slot.readonly and ppage not in self.code_pages:
                    # dirty-logged pages: marked now; get_dirty_log flushes the write TLBs
                    self.vm.mark_dirty(slot, phys)
                    self.tlb_w[priv][page] = view
        return phys

    def read(self, lin: int, n: int, user: bool = False) -> bytes:
        """Read ``n`` bytes at linear ``lin`` (any alignment, may cross pages)."""
        if (lin & PAGE_MASK) + n > 4096:
            split = (lin | PAGE_MASK) + 1
            first = split - lin
            a = self.translate(lin, False, user)
            b = self.translate(split & self.lin_mask, False, user)
            data = self.phys_read(a, first) + self.phys_read(b, n - first)
        else:
            data = self.phys_read(self.translate(lin, False, user), n)
        if self.watch is not None:
            self._watched(lin, n, False)
        return data

    def write(self, lin: int, data: bytes, user: bool = False) -> None:
        n = len(data)
        if (lin & PAGE_MASK) + n > 4096:
            split = (lin | PAGE_MASK) + 1
            first = split - lin
            a = self.translate(lin, True, user)
            b = self.translate(split & self.lin_mask, True, user)
            self.phys_write(a, data[:first])
            self.phys_write(b, data[first:])
        else:
            self.phys_write(self.translate(lin, True, user), data)
        if self.watch is not None:
            self._watched(lin, n, True)

    @property
    def lin_mask(self) -> int:
        return 0xFFFFFFFFFFFFFFFF if self.st.efer & EFER_LMA else 0xFFFFFFFF

    def fetch_page(self, lin: int, user: bool) -> Tuple[int, Optional[memoryview]]:
        """(physical page number, host view or None for MMIO) for executing at ``lin``."""
        phys = self.translate(lin, False, user, fetch=True)
        pp = self.phys_page(phys >> 12)
        return phys >> 12, (pp[0] if pp is not None else None)

    # -- fast accessors used by generated code --------------------------------------
    def build_fast_paths(self) -> None:
        """Make rd1..rd8 / wr1..wr8 closures for supervisor (index 0) and user (1)."""
        self.rd: List[Dict[int, Callable[..., Any]]] = []
        self.wr: List[Dict[int, Callable[..., Any]]] = []
        for priv in (0, 1):
            r, w = self._make(priv)
            self.rd.append(r)
            self.wr.append(w)

    def _make(self, priv: int) -> Tuple[Dict[int, Callable[..., Any]],
                                         Dict[int, Callable[..., Any]]]:
        tr = self.tlb_r[priv].get
        tw = self.tlb_w[priv].get
        user = bool(priv)
        read = self.read
        write = self.write
        u16, u32, u64 = _U16.unpack_from, _U32.unpack_from, _U64.unpack_from
        p16, p32, p64 = _U16.pack_into, _U32.pack_into, _U64.pack_into

        def rd1(a: int) -> int:
            v = tr(a >> 12)
            if v is None:
                return read(a, 1, user)[0]
            return v[a & 0xFFF]

        def rd2(a: int) -> int:
            v = tr(a >> 12)
            o = a & 0xFFF
            if v is None or o > 0xFFE:
                return int.from_bytes(read(a, 2, user), "little")
            return u16(v, o)[0]  # type: ignore[no-any-return]

        def rd4(a: int) -> int:
            v = tr(a >> 12)
            o = a & 0xFFF
            if v is None or o > 0xFFC:
                return int.from_bytes(read(a, 4, user), "little")
            return u32(v, o)[0]  # type: ignore[no-any-return]

        def rd8(a: int) -> int:
            v = tr(a >> 12)
            o = a & 0xFFF
            if v is None or o > 0xFF8:
                return int.from_bytes(read(a, 8, user), "little")
            return u64(v, o)[0]  # type: ignore[no-any-return]

        def wr1(a: int, x: int) -> None:
            v = tw(a >> 12)
            if v is None:
                write(a, bytes((x,)), user)
            else:
                v[a & 0xFFF] = x

        def wr2(a: int, x: int) -> None:
            v = tw(a >> 12)
            o = a & 0xFFF
            if v is None or o > 0xFFE:
                write(a, x.to_bytes(2, "little"), user)
            else:
                p16(v, o, x)

        def wr4(a: int, x: int) -> None:
            v = tw(a >> 12)
            o = a & 0xFFF
            if v is None or o > 0xFFC:
                write(a, x.to_bytes(4, "little"), user)
            else:
                p32(v, o, x)

        def wr8(a: int, x: int) -> None:
            v = tw(a >> 12)
            o = a & 0xFFF
            if v is None or o > 0xFF8:
                write(a, x.to_bytes(8, "little"), user)
            else:
                p64(v, o, x)

        return {1: rd1, 2: rd2, 4: rd4, 8: rd8}, {1: wr1, 2: wr2, 4: wr4, 8: wr8}

    # -- helpers for system instructions ----------------------------------------------
    def read_int(self, lin: int, n: int, user: bool = False) -> int:
        return int.from_bytes(self.read(lin, n, user), "little")

    def write_int(self, lin: int, n: int, value: int, user: bool = False) -> None:
        self.write(lin, (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little"), user)

    def debug_translate(self, lin: int) -> Optional[Tuple[int, bool, bool]]:
        """KVM_TRANSLATE: no fault, no A/D update."""
        try:
            return self.walk(lin, False, False, False, set_bits=False)
        except GuestFault:
            return None
