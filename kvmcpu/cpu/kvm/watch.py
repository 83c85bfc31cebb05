"""Data events of a KVM CPU: gdb's watchpoints as debug-register data breakpoints.

See :mod:`.debug` (its docstring's "Data events") for the semantics. This is a
mixin of :class:`~kvmcpu.cpu.kvm.debug.KvmDebug`, which programs the registers
(``_apply_guest_debug``) and routes the exits (``_fire_data_events``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List, Optional, Tuple, cast

from ...errors import DebugUnsupportedError
from . import debug_probe
from .cpu_events import Callback, _CpuEvent, check_callback

if TYPE_CHECKING:
    from ...backends.base import Vcpu
    from ..thread import ThreadContext
    from .debug import KvmDebug
    from .vm import KvmVM

#: Hardware breakpoints an x86 vCPU has (DR0-DR3).
HW_BREAKPOINTS = 4
#: Data event kinds and the DR7 R/W field each uses.
DATA_KINDS = {"write": 1, "read": 3, "access": 3}
#: Data breakpoint length -> the DR7 LEN field (SDM 17.2.4).
_DR7_LEN = {1: 0, 2: 1, 4: 3, 8: 2}


class DataEvent(_CpuEvent):
    """A scheduled data event (see :meth:`KvmDebug.schedule_data_event`)."""

    __slots__ = ("addr", "length", "kind", "last")

    def __init__(self, cpu: KvmDebug, addr: int, length: int, kind: str,
                 callback: Callback, name: str) -> None:
        super().__init__(cpu, callback, name)
        self.addr = addr
        self.length = length
        self.kind = kind
        #: The watched bytes as last seen (how a ``read`` hit is told from a write).
        self.last: Optional[bytes] = None

    @property
    def register_key(self) -> Tuple[int, int, int]:
        """(address, length, DR7 R/W): events with one key share a debug register."""
        return self.addr, self.length, DATA_KINDS[self.kind]

    def _unschedule(self, cpu: KvmDebug) -> None:
        cpu.remove_data_event(self)

    def __repr__(self) -> str:
        return (f"DataEvent({self.name!r}: {self.kind} {self.addr:#x}+{self.length}"
                f"{'' if self.cpu else ', removed'})")


class KvmDataEvents:
    """The data-event part of :class:`~kvmcpu.cpu.kvm.debug.KvmDebug` (a mixin)."""

    if TYPE_CHECKING:
        vcpu: Optional[Vcpu]
        vm: KvmVM
        threadContextDirty: bool

        def path(self) -> str: ...
        def getContext(self, tn: int = 0) -> ThreadContext: ...
        def syncKvmState(self) -> None: ...
        def exact_stepping(self) -> bool: ...
        def software_breakpoints(self) -> Tuple[bool, str]: ...
        def _plan(self) -> Tuple[List[int], List[int], bool]: ...
        def _apply_guest_debug(self) -> None: ...
        def _run_callbacks(self, callbacks: List[Callback]) -> None: ...

    _data_events: Optional[List[DataEvent]] = None
    #: DR index -> the data breakpoint (address, length, R/W) programmed there.
    _dr_data: Dict[int, Tuple[int, int, int]] = {}

    def _data_keys(self) -> List[Tuple[int, int, int]]:
        """The distinct data breakpoints, in the order they were scheduled."""
        keys: List[Tuple[int, int, int]] = []
        for ev in self._data_events or ():
            if ev.register_key not in keys:
                keys.append(ev.register_key)
        return keys

    # -------------------------------------------------------------- data events
    def data_breakpoints(self) -> Tuple[bool, str]:
        """(delivered, how) for data breakpoints in the thread's current mode on this
        backend (a probe, see :mod:`.debug_probe`)."""
        return debug_probe.probe(self.vm.backend, debug_probe.DATA,
                                 debug_probe.mode_of(self.getContext()))

    def schedule_data_event(self, addr: int, length: int, callback: Callback,
                            kind: str = "write", name: Optional[str] = None) -> DataEvent:
        """Call ``callback(tc)`` after each instruction that writes (``kind="write"``),
        reads (``"read"``) or accesses (``"access"``) the ``length`` bytes at linear
        address ``addr``; returns the event (``remove()`` it).

        Raises:
            TypeError, ValueError: ``addr`` is not an int in 0..2**64-1, ``length`` not
                1, 2, 4 or 8, ``addr`` not aligned to ``length``, an unknown ``kind``,
                or ``callback`` is not callable.
            DebugUnsupportedError: the backend does not deliver data breakpoints in
                this mode, or all four debug registers are taken.
        """
        if not isinstance(addr, int) or isinstance(addr, bool):
            raise TypeError(f"addr must be an int, got {type(addr).__name__}")
        if not isinstance(length, int) or isinstance(length, bool):
            raise TypeError(f"length must be an int, got {type(length).__name__}")
        if not 0 <= addr < 1 << 64:
            raise ValueError(f"addr must be in 0..2**64-1, got {addr:#x}")
        if length not in _DR7_LEN:
            raise ValueError(f"length must be 1, 2, 4 or 8 (a debug register's LEN), got {length}")
        if addr % length:
            raise ValueError(f"addr {addr:#x} must be aligned to its length {length} (a debug "
                             "register ignores the low address bits, SDM 17.2.5)")
        if kind not in DATA_KINDS:
            raise ValueError(f"kind must be one of {', '.join(DATA_KINDS)}, got {kind!r}")
        check_callback(callback)
        works, seen = self.data_breakpoints()
        if not works:
            raise DebugUnsupportedError(
                f"{self.path()}: this backend does not deliver data breakpoints in "
                f"{debug_probe.mode_of(self.getContext())} mode (probe: {seen})")
        ev = DataEvent(cast("KvmDebug", self), addr, length, kind, callback,
                       name or f"{kind} {addr:#x}+{length}")
        keys = self._data_keys()
        if ev.register_key not in keys:
            pcs = len(self._plan()[0])
            if pcs and not self.exact_stepping() and self.software_breakpoints()[0]:
                pcs = 0  # the PC events beyond the free registers become INT3s
            if len(keys) + 1 + pcs > HW_BREAKPOINTS:
                raise DebugUnsupportedError(
                    f"{self.path()}: no debug register left for a {kind} data breakpoint at "
                    f"{addr:#x}: the {HW_BREAKPOINTS} registers (DR0-DR3) hold {len(keys)} "
                    f"data breakpoint(s) and {pcs} hardware PC event address(es)")
        ev.last = self._read_linear(addr, length)
        if self._data_events is None:
            self._data_events = []
        self._data_events.append(ev)
        self._apply_guest_debug()
        return ev

    def remove_data_event(self, ev: DataEvent) -> None:
        """Remove a data event (idempotent)."""
        if self._data_events is not None and ev in self._data_events and ev.cpu is self:
            self._data_events.remove(ev)
            if not self._data_events:
                self._data_events = None
        ev.cpu = None
        self._apply_guest_debug()

    def data_events(self) -> List[DataEvent]:
        """The scheduled data events, in the order they were scheduled."""
        return list(self._data_events or ())

    def refresh_data_events(self) -> None:
        """Take the watched bytes as they are now (memory written from outside the
        guest, e.g. by a debugger, is not a guest write for the next ``read`` hit)."""
        for ev in self._data_events or ():
            ev.last = self._read_linear(ev.addr, ev.length)

    def _read_linear(self, addr: int, length: int) -> Optional[bytes]:
        """The guest's bytes at linear ``addr`` (None where not mapped RAM)."""
        vcpu = self.vcpu
        if vcpu is None:
            return None
        if self.threadContextDirty:
            self.syncKvmState()
        out = b""
        while length:
            n = min(length, 0x1000 - (addr & 0xFFF))
            t = vcpu.translate(addr)
            if not t.valid:
                return None
            try:
                out += self.vm.vm.read_guest(int(t.physical_address), n)
            except ValueError:
                return None
            addr, length = addr + n, length - n
        return out

    def _fire_data_events(self, bits: int) -> None:
        hit = [key for i, key in self._dr_data.items() if bits >> i & 1]
        due: List[Callback] = []
        for ev in list(self._data_events or ()):
            if ev.register_key not in hit:
                continue
            if ev.kind == "read":
                now = self._read_linear(ev.addr, ev.length)
                changed, ev.last = now != ev.last, now
                if changed:
                    continue  # an R/W=11 hit that changed the bytes: a write
            due.append(ev.callback)
        self._run_callbacks(due)
