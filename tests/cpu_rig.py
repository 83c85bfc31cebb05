"""A KVM CPU on a small machine, for the CPU-model tests (tests/unit/cpu, tests/hw/test_cpu_kvm.py).

:class:`CpuRig` builds what the CPU model needs and nothing more: a Root with
its own event queue, a :class:`KvmVM` on the requested backend, 64 KiB of RAM
at guest address 0 (a :class:`HostMemory` the test can read and write), an IO
and an MMIO bus, and an :class:`X86KvmCPU`. Devices are plain objects with
``read(offset, size)`` / ``write(offset, size, value)``; :class:`Recorder`
records every access with the tick it happened at.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from kvmcpu.cpu.kvm import KvmVM, X86KvmCPU, real_mode_context
from kvmcpu.cpu.kvm.base import ThreadStatus
from kvmcpu.cpu.thread import ThreadContext
from kvmcpu.hostmem import HostMemory
from kvmcpu.mem.bus import IoBus, MmioBus
from kvmcpu.sim.eventq import EventQueue, SimLoopExitEvent
from kvmcpu.sim.simobject import Root

GUESTS = Path(__file__).resolve().parents[1] / "guests"
RAM_SIZE = 0x10000
ENTRY = 0x1000

#: The value the fake devices give io_real's IN (port 0x3fd) and 4-byte MMIO read (0x20020).
IN_VALUE = 0x5A
MMIO_VALUE = 0x04030201


def guest(name: str) -> bytes:
    """The committed flat image ``guests/NAME.bin``."""
    return (GUESTS / f"{name}.bin").read_bytes()


class Recorder:
    """A device that records ``(tick, kind, offset, size, value)`` and answers reads
    from ``values`` (offset -> value; default 0)."""

    def __init__(self, queue: EventQueue, values: Optional[Dict[int, int]] = None,
                 latency: int = 0) -> None:
        self.queue = queue
        self.values = dict(values or {})
        self.latency = latency
        self.log: List[Tuple[int, str, int, int, int]] = []

    def read(self, offset: int, size: int) -> int:
        value = self.values.get(offset, 0)
        self.log.append((self.queue.cur_tick, "r", offset, size, value))
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        self.log.append((self.queue.cur_tick, "w", offset, size, value))

    def writes(self) -> List[Tuple[int, int, int]]:
        """(offset, size, value) of every write, in order."""
        return [(o, s, v) for _, k, o, s, v in self.log if k == "w"]


class CpuRig:
    """Root + KvmVM + RAM + buses + X86KvmCPU (see the module docstring).

    Args:
        backend: "mock" or "kvm".
        image: a guest name loaded at ENTRY (real mode, CS=0) or None.
        cpu: extra X86KvmCPU keyword arguments / parameters.
        vm: extra KvmVM parameters.
    """

    def __init__(self, backend: str, image: Optional[str] = "io_real", *,
                 tc: Optional[ThreadContext] = None, vm: Optional[Dict[str, Any]] = None,
                 **cpu: Any) -> None:
        self.queue = EventQueue("rig")
        self.root = Root(eventq=self.queue)
        self.ram = HostMemory(RAM_SIZE)
        try:
            self.vm = KvmVM("kvm_vm", self.root, backend=backend, **(vm or {}))
        except BaseException:
            self.ram.close()
            raise
        self.io = IoBus(unclaimed="ignore")
        self.mmio = MmioBus(unclaimed="ignore")
        try:
            self.cpu = X86KvmCPU("cpu0", self.root, vm=self.vm, io_bus=self.io,
                                 mmio_bus=self.mmio, **cpu)
        except BaseException:
            self.vm.close()
            self.ram.close()
            raise
        self.vm.add_ram(0, self.ram)
        if image is not None:
            code = guest(image)
            self.ram[ENTRY:ENTRY + len(code)] = code
        self.cpu.setThreadContext(tc if tc is not None else real_mode_context(0, ENTRY))
        self.cpu.thread_status = ThreadStatus.Suspended

    @property
    def vcpu(self) -> Any:
        return self.cpu.vcpu

    def start(self) -> CpuRig:
        """Instantiate the tree (creates the vCPU) and activate the thread."""
        self.root.instantiate()
        self.cpu.activateContext()
        return self

    def simulate(self, max_ticks: Optional[int] = None) -> SimLoopExitEvent:
        return self.root.simulate(max_ticks)

    def stats(self) -> Dict[str, int]:
        """The CPU's counters by name."""
        s = self.cpu.stats
        names = ("numCycles", "numInsts", "numVMExits", "numVMHalfEntries", "numExitSignal",
                 "numMMIO", "numCoalescedMMIO", "numIO", "numHalt", "numInterrupts",
                 "numHypercalls")
        return {n: int(getattr(s, n).value) for n in names}

    def close(self) -> None:
        self.cpu.close()
        self.vm.close()
        self.ram.close()

    def __enter__(self) -> CpuRig:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def trace_calls(mocker: Any, obj: Any, name: str, log: List[Tuple[str, int, Any]],
                queue: EventQueue) -> Any:
    """Patch ``obj.name`` with a mock that calls the original and appends
    ``(name, tick at the call, return value)`` to ``log``; returns the mock."""
    original = getattr(obj, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        tick = queue.cur_tick
        result = original(*args, **kwargs)
        log.append((name, tick, result))
        return result

    return mocker.patch.object(obj, name, side_effect=wrapper)


@pytest.fixture
def make_rig() -> Iterator[Callable[..., CpuRig]]:
    """``make_rig(backend, image, **kw)``: CpuRigs closed after the test."""
    rigs: List[CpuRig] = []

    def make(backend: str = "mock", image: Optional[str] = "spin", **kw: Any) -> CpuRig:
        rig = CpuRig(backend, image, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
