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

Every CPU is a gdb thread (ids from 1); the System has one CPU so far.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from ..cpu.kvm.watch import DataEvent
from ..cpu.thread import ThreadContext
from ..sim.eventq import SimLoopExitEvent, exit_sim_loop
from ..system import CAUSE_CHECKPOINT, CAUSE_LIMIT, RunResult, System

#: Causes the stub's own events give System.run.
CAUSE_BREAK = "gdb: breakpoint"
CAUSE_STEP = "gdb: single step"
CAUSE_WATCH = "gdb: watchpoint"
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
        self.slice_ticks = slice_ticks
        self._breakpoints: Dict[Tuple[int, bool], object] = {}
        self._stop_event: Optional[SimLoopExitEvent] = None
        self._watch: Dict[Tuple[int, int], bytes] = {}
        self._user_step = False
        #: (kind, address, length) -> the data events of a watchpoint.
        self._watchpoints: Dict[Tuple[str, int, int], List[DataEvent]] = {}
        #: The watchpoint that stopped the thread, for the stop reply (None: none did).
        self.watch_hit: Optional[int] = None
        self.watch_kind = "write"
        if not system.root.instantiated:
            # What System.run does first: create the vCPU, start the thread.
            system.root.instantiate()
            system.cpu.activateContext()
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
        return [1]

    def _tc(self) -> ThreadContext:
        return self.system.cpu.getContext()

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
        self.system.cpu.threadContextDirty = True

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
    def _translate(self, addr: int) -> int:
        cpu = self.system.cpu
        if cpu.threadContextDirty:
            cpu.syncKvmState()  # KVM_TRANSLATE walks the tables of the vCPU's CR3
        vcpu = cpu.vcpu
        if vcpu is None:
            raise TargetError(14, "the CPU has no vCPU")
        t = vcpu.translate(addr)
        if not t.valid:
            raise TargetError(14, f"{addr:#x} is not mapped")
        return int(t.physical_address)

    def _pages(self, addr: int, length: int) -> List[Tuple[int, int]]:
        """(guest-physical address, length) of each page piece of [addr, addr+length)."""
        if addr < 0 or addr + length > 1 << 64:
            raise TargetError(14, f"{addr:#x}+{length:#x} is outside the address space")
        out = []
        while length:
            n = min(length, PAGE - (addr & (PAGE - 1)))
            gpa = self._translate(addr)
            if not self._in_ram(gpa, n):
                raise TargetError(14, f"{addr:#x} (physical {gpa:#x}) is not RAM")
            out.append((gpa, n))
            addr += n
            length -= n
        return out

    def _in_ram(self, gpa: int, n: int) -> bool:
        return bool(self.system.physmem.is_ram(gpa, n))

    def read_memory(self, addr: int, length: int) -> bytes:
        return b"".join(bytes(self.system.physmem.read(gpa, n))
                        for gpa, n in self._pages(addr, length))

    def write_memory(self, addr: int, data: bytes) -> None:
        pieces = self._pages(addr, len(data))  # every page checked before any write
        off = 0
        for gpa, n in pieces:
            self.system.physmem.write(gpa, data[off: off + n])
            off += n

    # ------------------------------------------------------------ breakpoints
    def _stop(self, cause: str) -> None:
        # A breakpoint and a finished step at the same boundary stop the run once.
        pending = self._stop_event
        if pending is not None and pending.scheduled():
            return
        self._stop_event = exit_sim_loop(cause, 0, queue=self.system.eventq)

    def insert_breakpoint(self, addr: int, hardware: bool = False) -> None:
        """``Z1`` (``hardware``): a debug register; ``Z0``: an INT3 patch, or a debug
        register where the backend does not deliver software breakpoints."""
        key = (addr, hardware)
        if key in self._breakpoints:
            return
        from ..errors import DebugUnsupportedError

        cpu = self.system.cpu
        software = not hardware and cpu.software_breakpoints()[0]
        if not software and not cpu.exact_stepping() and cpu.free_debug_registers() <= 0:
            raise TargetError(28, f"no debug register left for a breakpoint at {addr:#x}")
        try:
            ev = cpu.schedule_pc_event(addr, lambda tc: self._stop(CAUSE_BREAK),
                                       name="gdb breakpoint", software=software)
        except DebugUnsupportedError as err:
            raise TargetError(28, str(err)) from err  # ENOSPC: no debug register left
        except ValueError as err:
            raise TargetError(22, str(err)) from err
        self._breakpoints[key] = ev

    def remove_breakpoint(self, addr: int, hardware: bool = False) -> None:
        ev = self._breakpoints.pop((addr, hardware), None)
        if ev is not None:
            ev.remove()  # type: ignore[attr-defined]

    def insert_watchpoint(self, addr: int, length: int, kind: str = "write") -> None:
        """A watchpoint of ``kind`` (``write``, ``read``, ``access``) on ``length``
        bytes at ``addr`` (see the module docstring)."""
        from ..errors import DebugUnsupportedError

        key = (kind, addr, length)
        if key in self._watchpoints or (kind == "write" and (addr, length) in self._watch):
            return
        if not 1 <= length <= MAX_WATCH:
            raise TargetError(22, f"watchpoint length {length} (1 to {MAX_WATCH} bytes: "
                                  "four debug registers of 8)")
        if addr < 0 or addr + length > 1 << 64:
            raise TargetError(22, f"watchpoint at {addr:#x}+{length:#x}")
        cpu = self.system.cpu
        if not cpu.data_breakpoints()[0]:
            if kind != "write":
                raise TargetError(1, f"{kind} watchpoints need data breakpoints, which this "
                                     f"backend does not deliver ({cpu.data_breakpoints()[1]})")
            self._watch[(addr, length)] = self.read_memory(addr, length)
            return
        events: List[DataEvent] = []
        try:
            for a, n in aligned_pieces(addr, length):
                events.append(cpu.schedule_data_event(
                    a, n, lambda tc: self._watch_stop(kind, addr), kind, name="gdb watchpoint"))
        except DebugUnsupportedError as err:
            for ev in events:
                ev.remove()
            raise TargetError(28, str(err)) from err  # ENOSPC: no debug register left
        self._watchpoints[key] = events

    def _watch_stop(self, kind: str, addr: int) -> None:
        if self._stop_event is None or not self._stop_event.scheduled():
            self.watch_hit = addr
            self.watch_kind = kind
        self._stop(CAUSE_WATCH)

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
        self._user_step = False
        self.system.cpu.cancel_steps()

    # ---------------------------------------------------------------- running
    def resume(self, step: bool) -> None:
        """Prepare the next slices: one instruction (``step``) or until a stop."""
        cpu = self.system.cpu
        cpu.cancel_steps()  # a step a breakpoint interrupted is not resumed
        cpu.refresh_data_events()  # what gdb wrote meanwhile is no guest write
        self.watch_hit = None
        self._user_step = step
        if self._watch:
            for key in self._watch:  # compare with the values as they are now
                self._watch[key] = self._peek(*key)
            cpu.request_step(self._after_watched_step)
        elif step:
            cpu.request_step(lambda tc: self._stop(CAUSE_STEP))

    def _peek(self, addr: int, length: int) -> bytes:
        try:
            return self.read_memory(addr, length)
        except TargetError:
            return b""  # not mapped now: a change when it is mapped again

    def _after_watched_step(self, tc: ThreadContext) -> None:
        for key, old in self._watch.items():
            new = self._peek(*key)
            if new != old:
                self._watch[key] = new
                self.watch_hit, self.watch_kind = key[0], "write"
                self._stop(CAUSE_WATCH)
                return
        if self._user_step:
            self._stop(CAUSE_STEP)
            return
        self.system.cpu.request_step(self._after_watched_step)

    def run_slice(self) -> Optional[RunResult]:
        """Run one slice; None when the slice ended only because its time was up,
        else how the run stopped (a breakpoint, a step, or the guest's end)."""
        while True:
            result = self.system.run(max_ticks=self.slice_ticks)
            if result.cause == CAUSE_LIMIT:
                return None
            if result.cause != CAUSE_CHECKPOINT:  # under gdb, checkpoint requests go on
                if result.cause not in STOP_CAUSES:
                    self.remove_all()
                return result

    def stop_pc(self) -> int:
        return self._tc().linear_rip()
