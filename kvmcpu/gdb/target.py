"""What the GDB stub debugs: a :class:`~kvmcpu.system.System`'s CPUs, registers and memory.

:class:`SystemTarget` turns the stub's requests into the CPU model's operations:

* registers in gdb's amd64 numbering (the target description
  :data:`TARGET_XML`: ``org.gnu.gdb.i386.core`` and ``.sse``, the layout
  QEMU's stub sends for x86-64), or i386's for a thread that is not in long
  mode when the debugger connects (:class:`Layout`), read from and written to
  the thread context;
* memory by *virtual* address, as QEMU's stub treats it: each page is
  translated through the guest's page tables (``KVM_TRANSLATE``; with paging
  off that is the identity) and read from or written to guest RAM; an
  unmapped page or an address outside RAM is an error;
* breakpoints as PC events: ``Z0`` software (INT3) where the backend
  delivers them in the thread's mode, else a debug register; ``Z1`` a debug
  register (``E1c`` when none is left on KVM; the mock single-steps beyond
  four); single steps with :meth:`~kvmcpu.cpu.kvm.debug.KvmDebug.request_step`;
* watchpoints (``Z2`` write, ``Z3`` read, ``Z4`` access) as data events
  (:meth:`~kvmcpu.cpu.kvm.debug.KvmDebug.schedule_data_event`: the debug
  registers, on the mock checked on every load and store), the range split
  into aligned 1/2/4/8-byte pieces as gdb's own x86 code splits it, one
  register each; the stop reply names the watchpoint (``watch:``,
  ``rwatch:``, ``awatch:`` and its address). Where the backend does not
  deliver data breakpoints (a probe says so), a write watchpoint falls back to
  single steps: the thread runs one instruction at a time and the watched
  bytes are compared after each (it stops after the instruction that changed
  the value, at an exit per instruction); read and access watchpoints are
  then refused;
* running in slices of simulated time, so the stub can look at its socket
  (Ctrl-C, a second debugger) between them.

**Several CPUs.** Every CPU is a gdb thread, ids 1..N as QEMU's stub numbers
them (``System.cpus[i]`` is thread i + 1). Registers and memory translation
use the thread ``Hg`` selected (:attr:`SystemTarget.g_thread`); breakpoints
and watchpoints are armed on every CPU, and the CPU whose event fired is the
one the stop reply names (:attr:`SystemTarget.stop_thread`, the first of them
when two fire in one slice: the others' hits stay pending, and the next resume
that runs such a CPU, still at its breakpoint, reports it at once without
running anything, as QEMU's stub, whose other vCPU executes the INT3 again).
Resuming takes an action per thread (QEMU's ``gdb_continue_partial``): ``c``
runs it, ``s`` runs it one instruction, and a thread without an action stays
stopped (an active CPU is suspended for the run and activated again at the
stop; a halted one or one waiting for SIPI is left as it is, so an IPI can
still wake it). All-stop: when one thread stops
(its step, a breakpoint, a watchpoint) the run ends and every CPU is stopped.
The stop goes through the CPU's own event queue (the System's, or the CPU's
thread's with ``parallel``: the exit request reaches the device queue and the
parallel run stops every vCPU thread at the quantum's end, joining them), so
the stub answers only when :meth:`System.run` has returned and no vCPU runs.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..cpu.kvm.watch import DataEvent
from ..cpu.thread import ThreadContext
from ..sim.eventq import EventQueue, SimLoopExitEvent, exit_sim_loop
from ..system import CAUSE_CHECKPOINT, CAUSE_HALTED, CAUSE_LIMIT, RunResult, System

#: Causes the stub's own events give System.run.
CAUSE_BREAK = "gdb: breakpoint"
CAUSE_STEP = "gdb: single step"
CAUSE_WATCH = "gdb: watchpoint"
#: linux/kvm.h's KVM_MP_STATE_UNINITIALIZED, _INIT_RECEIVED and _HALTED.
MP_STATE_UNINITIALIZED, MP_STATE_INIT_RECEIVED, MP_STATE_HALTED = 1, 2, 3
#: Host seconds a slice waits when only threads gdb holds could run.
HELD_IDLE = 0.01
#: Causes after which gdb gets a stop reply (the others end the guest).
STOP_CAUSES = (CAUSE_BREAK, CAUSE_STEP, CAUSE_WATCH)

TARGET_XML = """<?xml version="1.0"?>
<!DOCTYPE target SYSTEM "gdb-target.dtd">
<target version="1.0">
  <architecture>%(arch)s</architecture>
  <feature name="org.gnu.gdb.i386.core">
    <flags id="i386_eflags" size="4">
      <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
      <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
      <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
      <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
      <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
      <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
      <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
      <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
      <field name="ID" start="21" end="21"/>
    </flags>
%(core)s
  </feature>
  <feature name="org.gnu.gdb.i386.sse">
    <vector id="v4f" type="ieee_single" count="4"/>
    <vector id="v2d" type="ieee_double" count="2"/>
    <vector id="v16i8" type="int8" count="16"/>
    <vector id="v8i16" type="int16" count="8"/>
    <vector id="v4i32" type="int32" count="4"/>
    <vector id="v2i64" type="int64" count="2"/>
    <union id="vec128">
      <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
      <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
      <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
      <field name="uint128" type="uint128"/>
    </union>
%(sse)s
  </feature>
</target>
"""

_GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
         "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
_SEGS = ("cs", "ss", "ds", "es", "fs", "gs")
_X87 = ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")


@dataclass(frozen=True)
class Reg:
    """One register of the description: gdb number, name, size in bytes, type."""

    num: int
    name: str
    size: int
    type: str


#: gdb's i386 general registers, in its numbering, and the context field of each.
_GPRS32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
#: register name -> the ThreadContext attribute holding it (GPRs and the PC)
_CTX = {**{n: n for n in _GPRS + ("rip",)},
        **{n: "r" + n[1:] for n in _GPRS32 + ("eip",)}}


def _registers(bits: int) -> List[Reg]:
    regs: List[Reg] = []

    def add(name: str, size: int, typ: str) -> None:
        regs.append(Reg(len(regs), name, size, typ))

    if bits == 64:
        for n in _GPRS:
            add(n, 8, "data_ptr" if n in ("rbp", "rsp") else "int64")
        add("rip", 8, "code_ptr")
    else:
        for n in _GPRS32:
            add(n, 4, "data_ptr" if n in ("ebp", "esp") else "int32")
        add("eip", 4, "code_ptr")
    add("eflags", 4, "i386_eflags")
    for n in _SEGS:
        add(n, 4, "int32")
    for i in range(8):
        add(f"st{i}", 10, "i387_ext")
    for n in _X87:
        add(n, 4, "int")
    for i in range(16 if bits == 64 else 8):
        add(f"xmm{i}", 16, "vec128")
    add("mxcsr", 4, "int")
    return regs


class Layout:
    """The registers gdb is told about: x86-64 (``i386:x86-64``, amd64 numbering)
    or i386 for a guest that is not in long mode when the debugger connects."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.arch = "i386:x86-64" if bits == 64 else "i386"
        self.registers = _registers(bits)
        self.by_name = {r.name: r for r in self.registers}
        #: Bytes of a ``g`` reply.
        self.g_size = sum(r.size for r in self.registers)
        self.pc = self.by_name["rip" if bits == 64 else "eip"].num

    def xml(self) -> str:
        def line(r: Reg) -> str:
            group = ' group="float"' if r.name in _X87 or r.name.startswith("st") else ""
            if r.name.startswith("xmm") or r.name == "mxcsr":
                group = ' group="vector"'
            return (f'    <reg name="{r.name}" bitsize="{r.size * 8}" type="{r.type}" '
                    f'regnum="{r.num}"{group}/>')

        first_sse = self.by_name["xmm0"].num
        core = "\n".join(line(r) for r in self.registers if r.num < first_sse)
        sse = "\n".join(line(r) for r in self.registers if r.num >= first_sse)
        return TARGET_XML % {"arch": self.arch, "core": core, "sse": sse}


AMD64 = Layout(64)
I386 = Layout(32)
#: The x86-64 layout's sizes (what most callers mean).
REGISTERS = AMD64.registers
G_SIZE = AMD64.g_size


def target_xml(bits: int = 64) -> str:
    return (AMD64 if bits == 64 else I386).xml()


class TargetError(Exception):
    """A request the target refuses; ``errno`` becomes the stub's ``E NN`` reply."""

    def __init__(self, errno: int, message: str) -> None:
        super().__init__(message)
        self.errno = errno


PAGE = 4096
#: The longest watchpoint: four debug registers of 8 bytes.
MAX_WATCH = 32


def aligned_pieces(addr: int, length: int) -> List[Tuple[int, int]]:
    """[addr, addr+length) as the fewest aligned 1/2/4/8-byte pieces (a debug
    register each), as gdb's x86 code splits an unaligned watchpoint."""
    out = []
    while length:
        size = 8
        while size > 1 and (addr % size or size > length):
            size //= 2
        out.append((addr, size))
        addr, length = addr + size, length - size
    return out


class SystemTarget:
    """The stub's view of a System (see the module docstring).

    Args:
        system: the System to debug (loaded, not closed).
        slice_ticks: simulated ticks per slice of :meth:`run_slice`.
    """

    def __init__(self, system: System, slice_ticks: int = 100_000_000) -> None:
        self.system = system
        # A parallel run meets its vCPU threads only at sim_quantum boundaries (and
        # starts them at each run): a slice shorter than that would spend its host
        # time there (on a nested host 100 us slices did not get a vCPU past its
        # first instruction).
        self.slice_ticks = max(slice_ticks, system.sim_quantum) if system.parallel \
            else slice_ticks
        self.cpus = list(system.cpus)
        #: (address, hardware) -> the PC events of a breakpoint, one per CPU.
        self._breakpoints: Dict[Tuple[int, bool], List[object]] = {}
        #: id(event queue) -> (the queue, the stop event scheduled on it): one per queue.
        self._stop_events: Dict[int, Tuple[EventQueue, SimLoopExitEvent]] = {}
        self._stop_lock = threading.Lock()
        self._watch: Dict[Tuple[int, int], bytes] = {}
        #: Threads (indices) gdb asked to single-step in this resume.
        self._user_step: List[int] = []
        #: CPUs suspended because their thread had no action (activated at the stop).
        self._held: List[int] = []
        #: The CPU status of each held CPU when it was suspended (restored with it).
        self._held_status: Dict[int, Any] = {}
        #: The thread registers and memory use (``Hg``; 1-based) and the one ``c``/``s``
        #: act on (``Hc``).
        self.g_thread = 1
        self.c_thread = 1
        #: The thread whose event stopped the last run (None: none did, e.g. Ctrl-C).
        self.stop_thread: Optional[int] = None
        #: (kind, address, length) -> the data events of a watchpoint.
        self._watchpoints: Dict[Tuple[str, int, int], List[DataEvent]] = {}
        #: CPU index -> the breakpoint address it stopped at in a slice another CPU's
        #: stop ended: reported at the next resume that runs it (QEMU's all-stop).
        self._pending_hits: Dict[int, int] = {}
        #: The watchpoint that stopped the thread, for the stop reply (None: none did).
        self.watch_hit: Optional[int] = None
        self.watch_kind = "write"
        if not system.root.instantiated:
            # What System.run does first: create the vCPU, start the thread.
            system.root.instantiate()
            system.cpu.activateContext()
            system._aps_wait_for_sipi()
        #: What gdb is told (chosen once: gdb reads the description when it connects).
        self.layout = AMD64
        self.choose_layout()

    def choose_layout(self) -> None:
        """x86-64 for a thread in long mode, i386 otherwise (called on each connect)."""
        from ..cpu.thread import CpuMode

        self.layout = AMD64 if self._tc().mode() is CpuMode.LONG else I386

    # ---------------------------------------------------------------- threads
    def threads(self) -> List[int]:
        """gdb thread ids: one per CPU, from 1."""
        return list(range(1, len(self.cpus) + 1))

    def thread_state(self, tid: int) -> str:
        """``running``, ``halted`` or ``wait-for-SIPI`` (qThreadExtraInfo's words)."""
        from ..cpu.kvm.base import ThreadStatus

        cpu = self.cpus[tid - 1]
        if cpu.wait_for_sipi:
            return "wait-for-SIPI"
        if cpu.vcpu is not None and self.system.vm.has_irqchip:
            # KVM's LAPICs do INIT/SIPI and HLT in the kernel: its mp_state says.
            mp = cpu.vcpu.get_mp_state()
            if mp in (MP_STATE_UNINITIALIZED, MP_STATE_INIT_RECEIVED):
                return "wait-for-SIPI"
            if mp == MP_STATE_HALTED:
                return "halted"
        if cpu.thread_status is ThreadStatus.Active or tid - 1 in self._held:
            return "running"
        return "halted"

    def select(self, tid: int) -> None:
        """``Hg``: the thread whose registers and memory the next requests use."""
        if tid not in self.threads():
            raise TargetError(22, f"no thread {tid}")
        self.g_thread = tid

    def _cpu(self) -> Any:
        return self.cpus[self.g_thread - 1]

    def _tc(self) -> ThreadContext:
        return self._cpu().getContext()  # type: ignore[no-any-return]

    # -------------------------------------------------------------- registers
    def read_register(self, num: int) -> bytes:
        regs = self.layout.registers
        if not 0 <= num < len(regs):
            raise TargetError(22, f"no register {num}")
        reg = regs[num]
        tc = self._tc()
        name = reg.name
        if name in _CTX:
            value: int = getattr(tc, _CTX[name])
            return (value & ((1 << 8 * reg.size) - 1)).to_bytes(reg.size, "little")
        if name == "eflags":
            return struct.pack("<I", tc.rflags & 0xFFFFFFFF)
        if name in _SEGS:
            return struct.pack("<I", getattr(tc, name).selector)
        fx = tc.fxsave
        if name.startswith("st"):
            off = 32 + 16 * int(name[2:])
            return bytes(fx[off: off + 10])
        if name.startswith("xmm"):
            off = 160 + 16 * int(name[3:])
            return bytes(fx[off: off + 16])
        if name == "mxcsr":
            return bytes(fx[24:28])
        return struct.pack("<I", self._x87(fx, name))

    @staticmethod
    def _x87(fx: bytes, name: str) -> int:
        fcw, fsw, ftw, fop, fip, fcs, fdp, fds = struct.unpack_from("<HHBxHIHxxIHxx", fx, 0)
        if name == "ftag":
            # FXSAVE keeps one "valid" bit per register; gdb wants the full tag word
            # (valid registers are reported as 00 "valid", empty ones as 11).
            return sum((0 if ftw >> i & 1 else 3) << (2 * i) for i in range(8))
        values = {"fctrl": fcw, "fstat": fsw, "fiseg": fcs, "fioff": fip,
                  "foseg": fds, "fooff": fdp, "fop": fop}
        return int(values[name])

    def read_registers(self) -> bytes:
        return b"".join(self.read_register(r.num) for r in self.layout.registers)

    def write_register(self, num: int, value: bytes) -> None:
        regs = self.layout.registers
        if not 0 <= num < len(regs):
            raise TargetError(22, f"no register {num}")
        reg = regs[num]
        if len(value) != reg.size:
            raise TargetError(22, f"{reg.name} has {reg.size} bytes, got {len(value)}")
        tc = self._tc()
        name = reg.name
        if name in _CTX:
            setattr(tc, _CTX[name], int.from_bytes(value, "little"))
        elif name == "eflags":
            tc.rflags = (tc.rflags & ~0xFFFFFFFF) | struct.unpack("<I", value)[0] | 0x2
        elif name.startswith("xmm") or name == "mxcsr" or name.startswith("st"):
            off = (160 + 16 * int(name[3:]) if name.startswith("xmm") else
                   24 if name == "mxcsr" else 32 + 16 * int(name[2:]))
            fx = bytearray(tc.fxsave)
            fx[off: off + len(value)] = value
            tc.fxsave = bytes(fx)
        elif self.read_register(num) != value:
            # Segment selectors and the x87 control words: a change would need a
            # descriptor load (segments) or is not modelled; the same value is fine.
            raise TargetError(1, f"writing {name} is not supported")
        else:
            return
        self._cpu().threadContextDirty = True

    def write_registers(self, data: bytes) -> None:
        size = self.layout.g_size
        if len(data) != size:
            raise TargetError(22, f"G needs {size} bytes, got {len(data)}")
        off = 0
        for r in self.layout.registers:
            chunk = data[off: off + r.size]
            off += r.size
            if self.read_register(r.num) != chunk:
                self.write_register(r.num, chunk)

    # ----------------------------------------------------------------- memory
    def _translate(self, addr: int, cpu: Any = None) -> int:
        """``addr`` through the page tables of ``cpu`` (None: the ``Hg`` thread's)."""
        cpu = self._cpu() if cpu is None else cpu
        if cpu.threadContextDirty:
            cpu.syncKvmState()  # KVM_TRANSLATE walks the tables of the vCPU's CR3
        vcpu = cpu.vcpu
        if vcpu is None:
            raise TargetError(14, "the CPU has no vCPU")
        t = vcpu.translate(addr)
        if not t.valid:
            raise TargetError(14, f"{addr:#x} is not mapped")
        return int(t.physical_address)

    def _pages(self, addr: int, length: int, cpu: Any = None) -> List[Tuple[int, int]]:
        """(guest-physical address, length) of each page piece of [addr, addr+length)."""
        if addr < 0 or addr + length > 1 << 64:
            raise TargetError(14, f"{addr:#x}+{length:#x} is outside the address space")
        out = []
        while length:
            n = min(length, PAGE - (addr & (PAGE - 1)))
            gpa = self._translate(addr, cpu)
            if not self._in_ram(gpa, n):
                raise TargetError(14, f"{addr:#x} (physical {gpa:#x}) is not RAM")
            out.append((gpa, n))
            addr += n
            length -= n
        return out

    def _in_ram(self, gpa: int, n: int) -> bool:
        return bool(self.system.physmem.is_ram(gpa, n))

    def read_memory(self, addr: int, length: int, cpu: Any = None) -> bytes:
        """``length`` bytes at virtual ``addr`` as ``cpu`` sees them (None: the ``Hg``
        thread; a step callback passes its own CPU: on a parallel run it is the
        only vCPU its host thread may ask)."""
        return b"".join(bytes(self.system.physmem.read(gpa, n))
                        for gpa, n in self._pages(addr, length, cpu))

    def write_memory(self, addr: int, data: bytes) -> None:
        pieces = self._pages(addr, len(data))  # every page checked before any write
        off = 0
        for gpa, n in pieces:
            self.system.physmem.write(gpa, data[off: off + n])
            off += n

    # ------------------------------------------------------------ breakpoints
    def _stopper(self, index: int, cause: str) -> Callable[[ThreadContext], None]:
        """The callback of an event of CPU ``index`` that stops the run."""
        if cause == CAUSE_BREAK:
            return lambda tc: self._stop(cause, index, at=tc.linear_rip())
        return lambda tc: self._stop(cause, index)

    def _stop(self, cause: str, index: int, watch: Optional[Tuple[str, int]] = None,
              at: Optional[int] = None) -> None:
        """Stop the run: an exit event on CPU ``index``'s own queue (its thread's in a
        parallel run, where callbacks run on the vCPU threads). The first CPU to stop
        is the one the stop reply names; a breakpoint and a finished step at the same
        boundary stop the run once. Another CPU's breakpoint at ``at`` in the same
        slice stays pending (:meth:`run_slice` reports it at the next resume)."""
        queue = self.cpus[index].eventq
        with self._stop_lock:
            if self.stop_thread is None:
                self.stop_thread = index + 1
                if watch is not None:
                    self.watch_kind, self.watch_hit = watch
            elif self.stop_thread != index + 1 and at is not None:
                self._pending_hits.setdefault(index, at)
            pending = self._stop_events.get(id(queue))
            if pending is not None and pending[1].scheduled():
                return
            self._stop_events[id(queue)] = (queue, exit_sim_loop(cause, 0, queue=queue))

    def insert_breakpoint(self, addr: int, hardware: bool = False) -> None:
        """``Z1`` (``hardware``): a debug register; ``Z0``: an INT3 patch, or a debug
        register where the backend does not deliver software breakpoints; on every
        CPU."""
        key = (addr, hardware)
        if key in self._breakpoints:
            return
        from ..errors import DebugUnsupportedError

        events: List[Any] = []
        try:
            for i, cpu in enumerate(self.cpus):
                software = not hardware and cpu.software_breakpoints()[0]
                if not software and not cpu.exact_stepping() and \
                        cpu.free_debug_registers() <= 0:
                    raise TargetError(28, f"no debug register left for a breakpoint at "
                                          f"{addr:#x}")
                try:
                    events.append(cpu.schedule_pc_event(
                        addr, self._stopper(i, CAUSE_BREAK), name="gdb breakpoint",
                        software=software))
                except DebugUnsupportedError as err:
                    raise TargetError(28, str(err)) from err  # ENOSPC: no register left
                except ValueError as err:
                    raise TargetError(22, str(err)) from err
        except TargetError:
            for ev in events:
                ev.remove()
            raise
        self._breakpoints[key] = events

    def remove_breakpoint(self, addr: int, hardware: bool = False) -> None:
        for ev in self._breakpoints.pop((addr, hardware), []):
            ev.remove()  # type: ignore[attr-defined]

    def insert_watchpoint(self, addr: int, length: int, kind: str = "write") -> None:
        """A watchpoint of ``kind`` (``write``, ``read``, ``access``) on ``length``
        bytes at ``addr`` (see the module docstring), on every CPU."""
        from ..errors import DebugUnsupportedError

        key = (kind, addr, length)
        if key in self._watchpoints or (kind == "write" and (addr, length) in self._watch):
            return
        if not 1 <= length <= MAX_WATCH:
            raise TargetError(22, f"watchpoint length {length} (1 to {MAX_WATCH} bytes: "
                                  "four debug registers of 8)")
        if addr < 0 or addr + length > 1 << 64:
            raise TargetError(22, f"watchpoint at {addr:#x}+{length:#x}")
        cpu0 = self.cpus[0]
        if not cpu0.data_breakpoints()[0]:
            if kind != "write":
                raise TargetError(1, f"{kind} watchpoints need data breakpoints, which this "
                                     f"backend does not deliver ({cpu0.data_breakpoints()[1]})")
            self._watch[(addr, length)] = self.read_memory(addr, length)
            return
        events: List[DataEvent] = []
        try:
            for i, cpu in enumerate(self.cpus):
                for a, n in aligned_pieces(addr, length):
                    events.append(cpu.schedule_data_event(
                        a, n, self._watch_stopper(i, kind, addr), kind,
                        name="gdb watchpoint"))
        except DebugUnsupportedError as err:
            for ev in events:
                ev.remove()
            raise TargetError(28, str(err)) from err  # ENOSPC: no debug register left
        self._watchpoints[key] = events

    def _watch_stopper(self, index: int, kind: str, addr: int
                       ) -> Callable[[ThreadContext], None]:
        return lambda tc: self._stop(CAUSE_WATCH, index, (kind, addr))

    def remove_watchpoint(self, addr: int, length: int, kind: str = "write") -> None:
        for ev in self._watchpoints.pop((kind, addr, length), []):
            ev.remove()
        if kind == "write":
            self._watch.pop((addr, length), None)

    def remove_all(self) -> None:
        """Forget every breakpoint, watchpoint and pending step (the debugger went away)."""
        for addr, hardware in list(self._breakpoints):
            self.remove_breakpoint(addr, hardware)
        for kind, addr, length in list(self._watchpoints):
            self.remove_watchpoint(addr, length, kind)
        self._watch.clear()
        self._pending_hits.clear()
        self._user_step = []
        for cpu in self.cpus:
            cpu.cancel_steps()
        self._release()

    # ---------------------------------------------------------------- running
    def resume(self, step: bool) -> None:
        """``c``/``s``: every thread runs, the ``Hc`` thread one instruction (``step``)."""
        actions = {tid: "c" for tid in self.threads()}
        if step:
            actions[self.c_thread] = "s"
        self.resume_threads(actions)

    def resume_threads(self, actions: Dict[int, str]) -> None:
        """Prepare the next slices: ``actions`` maps a thread id to ``c`` (run) or
        ``s`` (one instruction); a thread not in it stays stopped."""
        self._release()
        for queue, ev in self._stop_events.values():  # a stop no run took (another CPU's)
            if ev.scheduled():
                queue.deschedule(ev)
        self._stop_events.clear()
        self.stop_thread = None
        self.watch_hit = None
        self._user_step = [tid - 1 for tid, a in actions.items() if a == "s"]
        from ..cpu.kvm.base import ThreadStatus

        for i, cpu in enumerate(self.cpus):
            cpu.cancel_steps()  # a step a breakpoint interrupted is not resumed
            cpu.refresh_data_events()  # what gdb wrote meanwhile is no guest write
            if i + 1 not in actions and cpu.thread_status is ThreadStatus.Active:
                # No action: the thread stays stopped. An exit its vCPU returned and
                # the CPU has not serviced yet (a breakpoint's, an IO access to
                # complete) is serviced when it runs again: its state is kept.
                self._held_status[i] = cpu.status
                cpu.suspendContext()
                self._held.append(i)
        if self._watch:
            for key in self._watch:  # compare with the values as they are now
                self._watch[key] = self._peek(*key)
            for i, cpu in enumerate(self.cpus):
                if i + 1 in actions:
                    cpu.request_step(self._watched_stepper(i))
        else:
            for i in self._user_step:
                self.cpus[i].request_step(self._stopper(i, CAUSE_STEP))

    def _release(self) -> None:
        """Activate again the CPUs :meth:`resume_threads` held (unless woken meanwhile)."""
        from ..cpu.kvm.base import Status, ThreadStatus

        held, self._held = self._held, []
        states, self._held_status = self._held_status, {}
        for i in held:
            cpu = self.cpus[i]
            if cpu.thread_status is not ThreadStatus.Active:
                cpu.activateContext()
                if states.get(i) in (Status.RunningService, Status.RunningServiceCompletion):
                    cpu.status = states[i]

    def _peek(self, addr: int, length: int, cpu: Any = None) -> bytes:
        try:
            return self.read_memory(addr, length, cpu)
        except TargetError:
            return b""  # not mapped now: a change when it is mapped again

    def _watched_stepper(self, index: int) -> Callable[[ThreadContext], None]:
        return lambda tc: self._after_watched_step(index)

    def _after_watched_step(self, index: int) -> None:
        for key, old in list(self._watch.items()):
            new = self._peek(key[0], key[1], self.cpus[index])
            if new != old:
                self._watch[key] = new
                self._stop(CAUSE_WATCH, index, ("write", key[0]))
                return
        if index in self._user_step:
            self._stop(CAUSE_STEP, index)
            return
        self.cpus[index].request_step(self._watched_stepper(index))

    def interrupt(self) -> None:
        """Ctrl-C (between slices: no CPU runs): pending steps are dropped."""
        for cpu in self.cpus:
            cpu.cancel_steps()

    def _pending_hit(self) -> Optional[RunResult]:
        """A breakpoint hit left pending by an earlier slice (see :meth:`_stop`), of a
        CPU this resume runs, still standing at that breakpoint: it is the stop now,
        nothing runs (in QEMU the CPU re-executes the INT3 at once). The lowest thread
        first; a hit whose CPU gdb moved, or whose breakpoint is gone, is dropped."""
        for index in sorted(self._pending_hits):
            if index in self._held:
                continue  # no action in this resume: it stays stopped, the hit pending
            addr = self._pending_hits.pop(index)
            armed = (addr, False) in self._breakpoints or (addr, True) in self._breakpoints
            if armed and self.cpus[index].getContext().linear_rip() == addr:
                self.stop_thread = index + 1
                return RunResult(CAUSE_BREAK, 0, self.system.eventq.cur_tick, 0, 0.0)
        return None

    def run_slice(self) -> Optional[RunResult]:
        """Run one slice; None when the slice ended only because its time was up,
        else how the run stopped (a breakpoint, a step, or the guest's end)."""
        pending = self._pending_hit()
        if pending is not None:
            return pending
        while True:
            result = self.system.run(max_ticks=self.slice_ticks)
            if result.cause == CAUSE_LIMIT:
                return None
            if result.cause == CAUSE_HALTED and self._held:
                # Nothing runs but threads gdb holds: the guest goes on "running" until
                # gdb stops it (Ctrl-C), as QEMU's would; it has not ended.
                time.sleep(HELD_IDLE)
                return None
            if result.cause != CAUSE_CHECKPOINT:  # under gdb, checkpoint requests go on
                if result.cause not in STOP_CAUSES:
                    self.remove_all()
                return result

    def stop_pc(self) -> int:
        return self._tc().linear_rip()
