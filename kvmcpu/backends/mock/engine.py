"""The execution engine: block cache, the run loop, event injection and exits.

``Engine.execute()`` runs guest code until something must be reported to
user space and returns a small tuple describing it; ``MockVcpu.run()`` turns
that into kvm_run fields.
"""

from __future__ import annotations

import functools
import logging
import struct
import traceback
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Tuple

from . import helpers
from .codegen import GENERATORS, Translator, compile_block
from .decode import Insn, NeedMore, decode, from_head, heads_of
from .faults import BP, DB, ExitNow, GuestFault, Restart
from .gen_alu import lock_ok
from .interrupts import KIND_EXC, KIND_EXT, KIND_NMI, TripleFault, deliver, deliver_fault
from .ir import Ctx, IrInsn, Op, chain_safe, lower
from .ir_emit import emit_block
from .ir_opt import Item, Raw
from .mmu import Mmu
from .state import CR0_PE, CS, EFER_LMA, IF, TF, CpuState, lazy_cf
from .tier0 import FLOW, Bound, InsnBinder, make_block
from .vendor import VendorProfile

if TYPE_CHECKING:
    from .vm import MockVm

log = logging.getLogger("kvmcpu.backends.mock")

#: Longest block (instructions); also the granularity of kick/budget checks.
MAX_BLOCK = 48

#: Opcodes that must be alone at the start of a block (they read the exact cycle count).
ALONE = frozenset((0x131, 0x101))

Block = Callable[[int], int]
ExitTuple = Tuple[Any, ...]


class Engine:
    """One vCPU's interpreter."""

    def __init__(self, vm: "MockVm") -> None:
        self.vm = vm
        #: the vendor whose undefined behaviour this engine imitates (fixed for its life)
        self.profile: VendorProfile = vm.backend.profile  # type: ignore[attr-defined]
        self.st = CpuState()
        self.mmu = Mmu(vm, self.st, self._code_written)
        self.stop = self.mmu.stop_flag
        self.blocks: Dict[Tuple[int, int, int], Block] = {}
        self.page_blocks: Dict[int, List[Tuple[int, int, int]]] = {}
        #: guest-physical page ranges the host wrote since the last run() (host_written)
        self.host_writes: List[Tuple[int, int]] = []
        self.use_cache = True
        self.instructions_retired = 0
        self.cycles = 0
        self.tsc_offset = 0
        self.budget: Optional[int] = None
        self.kicked = False
        self.cpuid: List[Any] = []
        self.io_replay: List[Tuple[int, int, int, bytes]] = []  # (port, size, count, data)
        self.hypercall_ret: Optional[int] = None
        self.single_step = False
        self.sw_bp = False
        self.hw_bp: List[int] = []  # enabled execution breakpoints (linear addresses)
        self.hw_bp_addrs: List[int] = []  # DR0..DR3 as set_guest_debug gave them (-1: off)
        self.hw_dr7 = 0
        self.skip_bp_at: Optional[int] = None
        self.shadow_set = False
        self.pending_exception: Optional[GuestFault] = None
        self.mode = 0
        self.ns: List[Dict[str, Any]] = [self._namespace(0), self._namespace(1)]
        self.binders = [InsnBinder(self.ns[0]), InsnBinder(self.ns[1])]
        self.mode_changed()

    # -- namespaces for generated code ------------------------------------------------
    def _namespace(self, priv: int) -> Dict[str, Any]:
        st = self.st
        ns: Dict[str, Any] = {"c": st, "R": st.R, "SB": st.sb, "STOP": self.stop, "E": self,
                              "H": self.profile.helpers, "PAR": helpers.PARITY,
                              "LCF": lazy_cf}
        for n in (1, 2, 4, 8):
            ns[f"rd{n}"] = self.mmu.rd[priv][n]
            ns[f"wr{n}"] = self.mmu.wr[priv][n]
        # the TLB hit path inlined into generated code (codegen.inline_load/inline_store)
        ns["TR"] = self.mmu.tlb_r[priv].get
        ns["TW"] = self.mmu.tlb_w[priv].get
        for n, fmt in ((2, "<H"), (4, "<I"), (8, "<Q")):
            ns[f"U{n}"] = struct.Struct(fmt).unpack_from
            ns[f"P{n}"] = struct.Struct(fmt).pack_into
        return ns

    # -- modes ---------------------------------------------------------------------------
    def mode_changed(self) -> None:
        """Recompute the mode key after CR0/EFER/CS/SS changed."""
        st = self.st
        st.reload_bases()
        bits = st.code_bits()
        self.bits = bits
        self.stack_bits = st.stack_bits()
        self.cpl = st.cpl
        self.pe = bool(st.cr0 & CR0_PE)
        self.lma = bool(st.efer & EFER_LMA)
        self.mode = (bits | (self.stack_bits << 8) | (self.cpl << 16) | (int(self.pe) << 18)
                     | (int(self.lma) << 19))

    def tlb_flush(self) -> None:
        self.mmu.flush()

    # -- the code cache ------------------------------------------------------------------
    def _code_written(self, ppage: int) -> None:
        """A guest write hit a page holding translated code."""
        self.invalidate_page(ppage)
        self.stop[0] = True

    def invalidate_page(self, ppage: int) -> None:
        for key in self.page_blocks.pop(ppage, ()):
            self.blocks.pop(key, None)
        self.mmu.code_pages.discard(ppage)

    def invalidate_all(self) -> None:
        self.blocks.clear()
        self.page_blocks.clear()
        self.host_writes.clear()
        self.mmu.code_pages.clear()

    def host_written(self, first: int, last: int) -> None:
        """The host wrote guest-physical pages ``first..last`` (MockVm.host_written)."""
        self.host_writes.append((first, last))

    def check_host_writes(self) -> None:
        """Drop translations of code pages the host wrote since the last run (the host
        says so through HostMemory: the cost follows what it wrote, not the guest's size)."""
        if not self.host_writes:
            return
        writes, self.host_writes = self.host_writes, []
        code = self.mmu.code_pages
        for first, last in writes:
            if not code:
                return
            if last - first < len(code):
                stale = [p for p in range(first, last + 1) if p in code]
            else:
                stale = [p for p in code if first <= p <= last]
            for p in stale:
                self.invalidate_page(p)

    def _fetch(self, lin: int) -> Tuple[int, Optional[memoryview]]:
        return self.mmu.fetch_page(lin, self.cpl == 3)

    def translate_block(self, single: bool, compiled: bool = True,
                        key: Optional[Tuple[int, int, int]] = None) -> Tuple[Block, int]:
        """Translate the block at CS:RIP; returns (function, physical page or -1).

        ``compiled``: one Python function (tier 1); else per-instruction bound functions
        (tier 0, tier0.py), over the same instructions with the same generators.
        ``key``: the block's cache key when the caller has it (``_key``).
        """
        if not compiled:
            return self._translate_tier0(single, key)
        st = self.st
        rip = st.rip
        lin, ppage, view = self._code_page()
        t = Translator(self.bits, self.stack_bits, self.cpl, self.pe, self.lma,
                       self.profile.name)
        t.start_ip = rip
        t.loop_ok = not single and self.use_cache
        ctx = Ctx(self.bits, self.stack_bits, self.profile.name, rip, t.loop_ok)
        items: List[Item] = []
        ip_mask = {16: 0xFFFF, 32: 0xFFFFFFFF}.get(self.bits, 0xFFFFFFFFFFFFFFFF)
        off = lin & 0xFFF
        ip = rip
        ips: List[int] = []
        limit = 1 if single else MAX_BLOCK
        cacheable = True
        #: leading chain_safe instructions: a block that returns having retired no more than
        #: these may be followed by the next block at once (engine._chain)
        safe_n = 0
        while len(ips) < limit:
            chunk = bytes(view[off: off + 15])
            try:
                d = decode(chunk, self.bits, ip)
            except NeedMore:
                if ips:
                    break  # crosses the page: start a new block there
                chunk += self._next_page_bytes(lin, 15 - len(chunk))
                d = decode(chunk, self.bits, ip)
                cacheable = False
            if d.opc in ALONE and ips:
                break  # reads the instruction counter: must start its own block
            g = GENERATORS.get(d.opc)
            if safe_n == len(ips) and chain_safe(d):
                safe_n += 1
            if True:
                ips.append(ip)
                ir_insn = lower(d, ctx) if g is not None and not d.lock else None
                if ir_insn is not None:
                    items.append(ir_insn)
                    if ctx.follow is not None:
                        # a direct JMP/CALL: keep translating at the target if on this page
                        target, ctx.follow = ctx.follow, None
                        new_off = off + (target - ip)
                        if 0 <= new_off < 4096 and len(ips) < limit:
                            ip, off = target, new_off
                            continue
                        ir_insn.ops.append(Op("exit", None, [target]))
                        ir_insn.ends = True
                        break
                    ir_insn.next_ip = (ip + d.len) & ip_mask
                    if ir_insn.ends:
                        break
                    ip = (ip + d.len) & ip_mask
                    off += d.len
                    if off >= 4096:
                        break
                    continue
                ips.pop()
                t.k = len(ips)
                t.lines = []  # this instruction's lines alone (ir_emit places them)
            t.may_stop = False
            ips.append(ip)
            done = False
            nxt: Optional[Tuple[int, int]] = None
            if g is None:
                t.ended = done = True
                t.call_helper(helpers.unimplemented, d, terminator=True)
            elif d.lock and not lock_ok(d):
                t.ended = done = True
                t.call_helper(helpers.raise_ud, d, terminator=True)
            else:
                ended = bool(g(t, d))
                if t.follow is not None:
                    # a direct JMP/CALL: keep translating at the target if it is on this page
                    target, t.follow = t.follow, None
                    new_off = off + (target - ip)
                    if 0 <= new_off < 4096 and len(ips) < limit:
                        nxt = (target, new_off)
                    else:
                        t.jump(f"{target:#x}")
                        t.ended = done = True
                elif ended:
                    t.ended = done = True
                else:
                    if t.may_stop:
                        t.stop_check(d)
                    if d.opc in ALONE:
                        ip = (ip + d.len) & (0xFFFFFFFFFFFFFFFF if self.bits == 64
                                             else 0xFFFFFFFF)
                        done = True
            items.append(Raw(d, t.lines, t.ended))
            if done:
                break
            if nxt is not None:
                ip, off = nxt
                continue
            ip = (ip + d.len) & (0xFFFFFFFFFFFFFFFF if self.bits == 64 else
                                 (0xFFFFFFFF if self.bits == 32 else 0xFFFF))
            off += d.len
            if off >= 4096:
                break
        last = items[-1]
        ended = last.ends if isinstance(last, IrInsn) else last.ended
        src = emit_block(items, rip, t.loop_ok, ip, ended)
        fn = compile_block(src, self.ns[1 if self.cpl == 3 else 0], t.consts, ips)
        fn.__doc__ = src  # kept for debugging (E.dump_block)
        looping = "while True:" in src  # a loop retires more than its length
        fn.chain = 0 if single else (  # type: ignore[attr-defined]
            (1 << 62 if looping else safe_n) if safe_n == len(ips) else
            (0 if looping else safe_n))
        if not cacheable:
            return fn, -1
        return fn, ppage

    def _code_page(self) -> Tuple[int, int, memoryview]:
        """(linear address of CS:RIP, its physical page, a view of that page)."""
        lin = (self.st.sb[CS] + self.st.rip) & (0xFFFFFFFFFFFFFFFF if self.bits == 64
                                                else 0xFFFFFFFF)
        itlb = self.mmu.itlb[1 if self.cpl == 3 else 0]
        ppage = itlb.get(lin >> 12)
        if ppage is None:
            ppage, view = self._fetch(lin)
            itlb[lin >> 12] = ppage
        else:  # the page walk the lookup just did (or a cached one) gave the frame
            pp = self.mmu.phys_page(ppage)
            view = pp[0] if pp is not None else None
        if view is None:
            raise ExitNow("emulation", b"", "execution from unbacked memory")
        return lin, ppage, view

    def _translate_tier0(self, single: bool, key: Optional[Tuple[int, int, int]]
                         ) -> Tuple[Block, int]:
        """translate_block's tier 0: one bound function per instruction (tier0.py), from
        the binder's cache by the instruction's bytes when it was seen (no generator
        run), else from its generator; a Translator is made only when one is needed."""
        st = self.st
        rip = st.rip
        lin, ppage, view = self._code_page()
        bits = self.bits
        mode = self.mode
        binder = self.binders[1 if self.cpl == 3 else 0]
        seen = binder.table(mode).get
        fns: List[Bound] = []
        ips: List[int] = []
        ip_mask = {16: 0xFFFF, 32: 0xFFFFFFFF}.get(bits, 0xFFFFFFFFFFFFFFFF)
        alone_mask = 0xFFFFFFFFFFFFFFFF if bits == 64 else 0xFFFFFFFF
        tr: List[Translator] = []

        def translator() -> Translator:
            if not tr:
                t = Translator(bits, self.stack_bits, self.cpl, self.pe, self.lma,
                               self.profile.name)
                t.start_ip = rip
                t.loop_ok = not single and self.use_cache
                tr.append(t)
            return tr[0]

        def generate(d: Insn) -> Tuple[List[str], List[Any], bool]:
            return self._gen_one(translator(), GENERATORS[d.opc], d)
        base = lin & 0xFFF
        page = bytes(view[base:])  # the rest of the page: sliced per instruction below
        end = 4096 - base  # p (in page) at the page's end
        heads = heads_of(bits)
        p = 0
        ip = rip
        limit = 1 if single else MAX_BLOCK
        cacheable = True
        #: leading chain_safe instructions (see translate_block)
        safe_n = 0
        n = 0
        while n < limit:
            try:
                chunk = page[p: p + 15]
                d = from_head(chunk, heads, ip) or decode(chunk, bits, ip)
            except NeedMore:
                if n:
                    break  # crosses the page: start a new block there
                chunk = page[p: p + 15]
                chunk += self._next_page_bytes(lin, 15 - len(chunk))
                d = decode(chunk, bits, ip)
                cacheable = False
            ent = seen(d.raw)
            if ent.__class__ is tuple:
                # tier 0's common case: bound from the instruction's bytes, seen before
                fn, args, rels, own, ended, safe, alone = ent
                if alone and n:
                    break  # reads the instruction counter: must start its own block
                if rels or own:
                    a = list(args)
                    for i in own:
                        a[i] = d
                    wraps = False
                    for i, delta in rels:
                        v = ip + delta
                        if not 0 <= v <= ip_mask:
                            wraps = True  # wraps here: generate it
                            break
                        a[i] = v
                    args = tuple(a)
                    if wraps:
                        (fn, args), ended = binder.bind_insn(d, mode, ip_mask, generate,
                                                             decode, (safe, alone))
                if safe and safe_n == n:
                    safe_n += 1
                fns.append((fn, args))
            else:
                opc = d.opc
                alone = opc in ALONE
                if alone and n:
                    break
                safe = chain_safe(d)
                if safe and safe_n == n:
                    safe_n += 1
                g = GENERATORS.get(opc)
                if g is not None and opc not in FLOW and (not d.lock or lock_ok(d)):
                    bound_insn, ended = binder.bind_insn(d, mode, ip_mask, generate,
                                                         decode, (safe, alone))
                    fns.append(bound_insn)
                else:  # its own lines, temps and constants
                    t = translator()
                    t.k = 0
                    t.lines, t.consts, t.tmp = [], [], 0
                    t.may_stop = False
                    ended = alone = False
                    nxt: Optional[Tuple[int, int]] = None
                    if g is None:
                        ended = True
                        t.call_helper(helpers.unimplemented, d, terminator=True)
                    elif d.lock and not lock_ok(d):
                        ended = True
                        t.call_helper(helpers.raise_ud, d, terminator=True)
                    else:
                        ended = bool(g(t, d))
                        if t.follow is not None:
                            # a direct JMP/CALL: keep translating at the target if it is
                            # on this page
                            target, t.follow = t.follow, None
                            new_off = base + p + (target - ip)
                            if 0 <= new_off < 4096 and n + 1 < limit:
                                nxt = (target, new_off)
                            else:
                                t.jump(f"{target:#x}")
                                ended = True
                        elif not ended and t.may_stop:
                            t.stop_check(d)
                    fns.append(binder.bind(t.lines, t.consts))
                    if nxt is not None and not ended:
                        ips.append(ip)
                        n += 1
                        ip, off = nxt
                        if off < base:  # behind the start: the page from there
                            base = off
                            page = bytes(view[off:])
                            end = 4096 - base
                        p = off - base
                        continue
            ips.append(ip)
            n += 1
            if ended:
                break
            ln = d.len
            if alone:
                ip = (ip + ln) & alone_mask
                break
            ip = (ip + ln) & ip_mask
            p += ln
            if p >= end:
                break
        promote = None
        if cacheable and self.use_cache:
            if key is None:
                key = self._key(single)
            promote = functools.partial(self._promote, key, single)
        fn = make_block(st, fns, ips, ip, promote)
        fn.chain = 0 if single else safe_n  # type: ignore[attr-defined]
        if not cacheable:
            return fn, -1
        return fn, ppage

    @staticmethod
    def _gen_one(t: Translator, g: Any, d: Any) -> Tuple[List[str], List[Any], bool]:
        """Tier 0: the lines of one instruction alone (not a jump or call: see tier0.FLOW)."""
        t.lines, t.consts, t.tmp, t.k = [], [], 0, 0
        t.may_stop = False
        ended = bool(g(t, d))
        if not ended and t.may_stop:
            t.stop_check(d)
        return t.lines, t.consts, ended

    def _key(self, single: bool) -> Tuple[int, int, int]:
        """The cache key of the block at CS:RIP (its physical address, RIP and mode)."""
        st = self.st
        rip = st.rip
        lin = (st.sb[CS] + rip) & 0xFFFFFFFFFFFFFFFF
        itlb = self.mmu.itlb[1 if self.cpl == 3 else 0]
        ppage = itlb.get(lin >> 12)
        if ppage is None:
            ppage = self.mmu.translate(lin, False, self.cpl == 3, fetch=True) >> 12
            itlb[lin >> 12] = ppage
        return ((ppage << 12) | (lin & 0xFFF), rip, self.mode | (1 << 24 if single else 0))

    def _promote(self, key: Tuple[int, int, int], single: bool) -> Optional[Block]:
        """A tier-0 block ran PROMOTE_AFTER times: compile it in its place (at its entry)."""
        if key not in self.blocks:
            return None  # dropped meanwhile (its page was written)
        fn, bpage = self.translate_block(single, compiled=True)
        if bpage >= 0:
            self.blocks[key] = fn
        return fn

    def _next_page_bytes(self, lin: int, n: int) -> bytes:
        nxt = ((lin | 0xFFF) + 1) & (0xFFFFFFFFFFFFFFFF if self.bits == 64 else 0xFFFFFFFF)
        _, view = self._fetch(nxt)
        if view is None:
            raise ExitNow("emulation", b"", "execution from unbacked memory")
        return bytes(view[:n])

    def lookup(self, single: bool) -> Block:
        """The block at CS:RIP (cached by physical address, RIP and mode): tier 0 when
        new, the compiled block once it has run often enough (tier0.PROMOTE_AFTER)."""
        if not self.use_cache:
            return self.translate_block(single, compiled=False)[0]
        # _key(single), inline: this runs once per block executed
        st = self.st
        rip = st.rip
        lin = (st.sb[CS] + rip) & 0xFFFFFFFFFFFFFFFF
        itlb = self.mmu.itlb[1 if self.cpl == 3 else 0]
        ppage = itlb.get(lin >> 12)
        if ppage is None:
            ppage = self.mmu.translate(lin, False, self.cpl == 3, fetch=True) >> 12
            itlb[lin >> 12] = ppage
        key = ((ppage << 12) | (lin & 0xFFF), rip, self.mode | (1 << 24 if single else 0))
        fn = self.blocks.get(key)
        if fn is not None:
            return fn
        fn, bpage = self.translate_block(single, compiled=False, key=key)
        if bpage >= 0:
            self.blocks[key] = fn
            self.page_blocks.setdefault(bpage, []).append(key)
            if bpage not in self.mmu.code_pages:
                self.mmu.code_pages.add(bpage)
                self.mmu.flush_write()
        return fn

    # -- the run loop ----------------------------------------------------------------------
    def execute(self, window_requested: Callable[[], bool],
                complete_only: bool = False) -> ExitTuple:
        """Run until an exit. Returns ("intr",), ("io", ...), ("mmio", ...), ("hlt",), ...

        ``complete_only``: execute just the instruction waiting for user space's data
        (KVM completes a pending IN/MMIO read even in a KVM_RUN with immediate_exit).
        """
        st = self.st
        stop = self.stop
        stepped = False
        budget: Optional[int] = None
        # the run page's request_interrupt_window: user space sets it before KVM_RUN and
        # cannot change it during this call (it is this vCPU's thread)
        window = window_requested()
        while True:
            if complete_only:
                # One instruction, none of the entry checks (kick, budget, injection,
                # interrupt window) and no debug traps: KVM only finishes the access.
                if stepped:
                    return ("intr",)
                stepped = True
                budget = None
                single = True
            else:
                if self.kicked:
                    self.kicked = False
                    return ("intr", "kick")
                budget = self.budget
                if budget is not None and budget <= 0:
                    return ("intr",)
                if st.pending_irq is not None or st.nmi_pending or self.pending_exception:
                    try:
                        self._inject()
                    except TripleFault:
                        return ("shutdown",)
                if window and self.ready_for_injection():
                    return ("irq_window",)
                single = bool(st.shadow or st.fl & TF or self.single_step or self.hw_bp
                              or (budget is not None and budget < MAX_BLOCK))
            had_shadow = st.shadow
            trap_flag = st.fl & TF
            self.shadow_set = False
            if self.hw_bp and not complete_only:
                hit = self._check_hw_bp()
                if hit is not None:
                    return hit
            stop[0] = False
            try:
                try:
                    fn = self.lookup(single)
                    n = fn(1 if complete_only else
                           budget if budget is not None else 1 << 62)
                    if n <= fn.chain and not complete_only:  # type: ignore[attr-defined]
                        n = self._chain(n)
                except GuestFault as f:
                    n = st.kdone or 0
                    st.kdone = None
                    self._retire(n)
                    if f.vector == BP and self.sw_bp and not complete_only:
                        return ("debug", BP, (st.sb[CS] + st.rip) & 0xFFFFFFFFFFFFFFFF,
                                0xFFFF0FF0, st.dr7)
                    deliver_fault(self, f)
                    continue
                except ExitNow as x:
                    n = st.kdone or 0
                    st.kdone = None
                    self._retire(n)
                    return (x.kind,) + x.args
                except Restart:
                    n = st.kdone or 0
                    st.kdone = None
                    self._retire(n)
                    continue
            except TripleFault:
                return ("shutdown",)
            except Exception as err:  # noqa: BLE001 - an engine bug must not escape run()
                log.error("mock engine failure at rip=%#x:\n%s", st.rip, traceback.format_exc())
                st.kdone = None
                return ("emulation", self._insn_bytes(), f"internal: {err!r}")
            self._retire(n)
            if had_shadow and not self.shadow_set:
                st.shadow = 0
            if stop[0]:
                stop[0] = False
                ex = self.pending_exit()
                if ex is not None:
                    return ex
            if complete_only:
                continue
            if self.single_step and n:
                return ("debug", DB, (st.sb[CS] + st.rip) & 0xFFFFFFFFFFFFFFFF, 0xFFFF4FF0,
                        st.dr7)
            if trap_flag and n:
                # RFLAGS.TF: a single-step trap (#DB, DR6.BS) after the instruction
                st.dr6 |= 0x4000
                try:
                    deliver(self, DB, KIND_EXC, None, st.rip)
                except GuestFault as f:
                    try:
                        deliver_fault(self, f)
                    except TripleFault:
                        return ("shutdown",)

    def _chain(self, n: int) -> int:
        """Blocks chained: what the block that returned ``n`` ran was chain_safe (ir.py), so
        nothing the run loop checks before a block (IF, TF, the shadow, the mode, pending
        events, the interrupt window) has changed: run the next one at once, until a
        block ran more than its chain_safe instructions (``fn.chain``), STOP is set, a
        kick or the budget needs the run loop.
        Returns what the last block retired (the earlier ones are retired here)."""
        st = self.st
        stop = self.stop
        blocks = self.blocks
        sb = st.sb
        itlb = self.mmu.itlb[1 if self.cpl == 3 else 0]
        mode = self.mode
        while True:
            self.instructions_retired += n
            self.cycles += n
            budget = self.budget
            if budget is not None:
                budget -= n
                self.budget = budget
            n = 0
            if stop[0] or self.kicked or (budget is not None and budget < MAX_BLOCK):
                return 0
            rip = st.rip
            lin = (sb[CS] + rip) & 0xFFFFFFFFFFFFFFFF
            ppage = itlb.get(lin >> 12)
            fn = None if ppage is None else \
                blocks.get(((ppage << 12) | (lin & 0xFFF), rip, mode))
            if fn is None:
                fn = self.lookup(False)
            n = fn(budget if budget is not None else 1 << 62)
            if n > fn.chain:  # type: ignore[attr-defined]
                return n

    def _retire(self, n: int) -> None:
        self.instructions_retired += n
        self.cycles += n
        if self.budget is not None:
            self.budget -= n

    def pending_exit(self) -> Optional[ExitTuple]:
        p = self.mmu.pending
        if p:
            return p.pop(0)
        return None

    def _insn_bytes(self) -> bytes:
        st = self.st
        try:
            return self.mmu.read((st.sb[CS] + st.rip) & 0xFFFFFFFFFFFFFFFF, 15)
        except Exception:  # noqa: BLE001
            return b""

    def _check_hw_bp(self) -> Optional[ExitTuple]:
        st = self.st
        lin = (st.sb[CS] + st.rip) & 0xFFFFFFFFFFFFFFFF
        if self.skip_bp_at == lin:
            self.skip_bp_at = None
            return None
        for i, addr in enumerate(self.hw_bp_addrs):
            if addr == lin:
                self.skip_bp_at = lin
                return ("debug", DB, lin, 0xFFFF0FF0 | (1 << i), self.hw_dr7)
        return None


    # -- events --------------------------------------------------------------------------------
    def ready_for_injection(self) -> bool:
        st = self.st
        return bool(st.fl & IF) and not st.shadow and st.pending_irq is None

    def _inject(self) -> None:
        """Deliver a queued NMI or KVM_INTERRUPT vector at this instruction boundary."""
        st = self.st
        try:
            if self.pending_exception is not None:
                f, self.pending_exception = self.pending_exception, None
                deliver_fault(self, f)
                return
            if st.nmi_pending and not st.nmi_masked and not st.shadow & 1:
                st.nmi_pending -= 1
                deliver(self, 2, KIND_NMI, None, st.rip)
                st.nmi_masked = True
                st.halted = False
                return
            if st.pending_irq is not None:
                vec = st.pending_irq
                st.pending_irq = None
                deliver(self, vec, KIND_EXT, None, st.rip)
                st.halted = False
        except GuestFault as f:
            deliver_fault(self, f)

    # -- TSC -------------------------------------------------------------------------------------
    def tsc(self) -> int:
        return (self.tsc_offset + self.cycles) & 0xFFFFFFFFFFFFFFFF

    def set_tsc(self, value: int) -> None:
        self.tsc_offset = value - self.cycles

    def dump_block(self) -> str:
        """Source of the block at the current RIP (debugging aid)."""
        fn = self.translate_block(False)[0]
        return fn.__doc__ or ""


__all__ = ["Engine", "ExitTuple", "MAX_BLOCK"]
