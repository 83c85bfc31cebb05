"""Where a KVM CPU's cycle and instruction counts come from (gem5 ``cpu/kvm/perfevent.hh``).

A *counter source* measures one KVM entry: ``begin()`` before KVM_RUN,
``end()`` after, returning the host cycles and guest instructions of that run.

* :class:`PerfCounters` -- hardware counters through perf_event_open with
  ``exclude_host`` (guest cycles and instructions), as gem5 does. Needs a
  PMU the host exposes to guests.
* :class:`HostClockCounters` -- the host's monotonic clock scaled by
  ``hostFreq``; instructions are *estimated* as one per cycle. Used where
  perf has no hardware counters (nested hosts, ``enable_pmu=N``).
* :class:`MockCounters` -- the mock vCPU's exact retired-instruction and
  cycle counters.

:func:`choose_counters` picks one at startup and :attr:`CounterSource.describe`
says which, so ``kvmcpu info`` and the stat descriptions can report it.
"""

from __future__ import annotations

import abc
import os
import struct
import time
from typing import Tuple

from ... import _ioctl
from ...backends.base import RunClock, Vcpu
from ...errors import KvmIoctlError
from .timer import PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_ENABLE

_U64 = struct.Struct("<Q")


class CounterSource(abc.ABC):
    """Measures host cycles and guest instructions across one KVM entry."""

    #: One line saying what is measured, for stats descriptions and ``kvmcpu info``.
    describe: str = ""
    #: True when instruction counts are measured, False when estimated.
    exact_instructions: bool = False

    @abc.abstractmethod
    def begin(self) -> None:
        """Called right before KVM_RUN."""

    @abc.abstractmethod
    def end(self) -> Tuple[int, int]:
        """Called right after KVM_RUN: (host cycles, guest instructions) of the run."""

    def close(self) -> None:
        """Release resources."""


class PerfCounters(CounterSource):
    """Guest cycles and instructions from hardware perf counters (exclude_host).

    Raises:
        KvmIoctlError: the host has no such counters (ENOENT/ENODEV/EOPNOTSUPP).
    """

    describe = "hardware perf counters (cycles, instructions; exclude_host)"
    exact_instructions = True

    def __init__(self) -> None:
        self._cycles_fd = self._open(_ioctl.PERF_COUNT_HW_CPU_CYCLES, -1)
        try:
            self._insts_fd = self._open(_ioctl.PERF_COUNT_HW_INSTRUCTIONS, self._cycles_fd)
        except KvmIoctlError:
            os.close(self._cycles_fd)
            raise
        self._c0 = 0
        self._i0 = 0
        _ioctl.ioctl_int(self._cycles_fd, PERF_EVENT_IOC_ENABLE, 0, name="PERF_EVENT_IOC_ENABLE")

    @staticmethod
    def _open(config: int, group: int) -> int:
        attr = _ioctl.perf_event_attr()
        attr.type = _ioctl.PERF_TYPE_HARDWARE
        attr.config = config
        attr.flags = _ioctl.PERF_ATTR_EXCLUDE_HOST | (_ioctl.PERF_ATTR_DISABLED if group < 0 else 0)
        return _ioctl.perf_event_open(attr, 0, -1, group)

    def _read(self, fd: int) -> int:
        return int(_U64.unpack(os.read(fd, 8))[0])

    def begin(self) -> None:
        self._c0 = self._read(self._cycles_fd)
        self._i0 = self._read(self._insts_fd)

    def end(self) -> Tuple[int, int]:
        return self._read(self._cycles_fd) - self._c0, self._read(self._insts_fd) - self._i0

    def close(self) -> None:
        for fd in (self._insts_fd, self._cycles_fd):
            if fd >= 0:
                try:
                    _ioctl.ioctl_int(fd, PERF_EVENT_IOC_DISABLE, 0)
                except KvmIoctlError:
                    pass
                os.close(fd)
        self._insts_fd = self._cycles_fd = -1


class HostClockCounters(CounterSource):
    """Host time inside KVM_RUN scaled by ``host_freq``; instructions estimated at IPC 1."""

    exact_instructions = False

    def __init__(self, host_freq: float) -> None:
        if host_freq <= 0:
            raise ValueError(f"host_freq must be positive, got {host_freq}")
        self.host_freq = host_freq
        self._t0 = 0
        self._scale = host_freq / 1e9
        self.describe = (
            f"host monotonic clock x hostFreq ({host_freq / 1e9:g} GHz); no hardware counters, "
            "instructions estimated as cycles"
        )

    def cycles_in(self, elapsed_ns: int) -> int:
        """The cycles (and estimated instructions) of ``elapsed_ns`` host nanoseconds."""
        return int(elapsed_ns * self._scale)

    def begin(self) -> None:
        self._t0 = time.perf_counter_ns()

    def end(self) -> Tuple[int, int]:
        cycles = int((time.perf_counter_ns() - self._t0) * self._scale)
        return cycles, cycles


class MockCounters(CounterSource):
    """Exact counts from a vCPU's run clock (``Vcpu.run_clock()``: the mock's
    ``instructions_retired``, ``cycles``)."""

    describe = "mock vCPU counters (exact retired instructions and cycles)"
    exact_instructions = True

    def __init__(self, vcpu: RunClock) -> None:
        self.vcpu = vcpu
        self._c0 = 0
        self._i0 = 0

    def begin(self) -> None:
        self._c0 = int(self.vcpu.cycles)
        self._i0 = int(self.vcpu.instructions_retired)

    def end(self) -> Tuple[int, int]:
        return int(self.vcpu.cycles) - self._c0, int(self.vcpu.instructions_retired) - self._i0


def hardware_counters_usable() -> Tuple[bool, str]:
    """Whether perf has hardware cycle/instruction counters for guests here, and why not."""
    try:
        counters = PerfCounters()
    except KvmIoctlError as err:
        return False, f"perf_event_open(PERF_TYPE_HARDWARE): {err.strerror} (errno {err.errno})"
    counters.close()
    return True, "hardware counters available"


def choose_counters(vcpu: Vcpu, *, use_perf: bool, host_freq: float) -> CounterSource:
    """The best counter source for ``vcpu``: mock counters on the mock, perf where
    usable and wanted, else the host clock."""
    clock = vcpu.run_clock()
    if clock is not None:
        return MockCounters(clock)
    if use_perf:
        try:
            return PerfCounters()
        except KvmIoctlError:
            pass
    return HostClockCounters(host_freq)


