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

:class:`PerfInstCounter` is of another kind: the sampling instruction counter
that instruction-count events use on KVM (:mod:`.instevents`, gem5's
``setupInstCounter``), and :func:`inst_counter_probe` says whether this host has
one.

:func:`choose_counters` picks one at startup and :attr:`CounterSource.describe`
says which, so ``kvmcpu info`` and the stat descriptions can report it.
"""

from __future__ import annotations

import abc
import ctypes
import fcntl
import os
import signal
import struct
import threading
import time
from typing import Dict, Optional, Tuple

from ... import _ioctl
from ...backends.base import RunClock, Vcpu
from ...errors import KvmIoctlError
from . import timer as _timer
from .timer import PERF_EVENT_IOC_DISABLE, PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_PERIOD

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




#: A sample period no run reaches: counting without an overflow.
_NO_OVERFLOW = 1 << 62


class InstCounter(abc.ABC):
    """What instruction-count events need from an instruction counter
    (:mod:`.instevents`): it counts the guest instructions the vCPU retires and
    ends KVM_RUN some instructions after an armed period has been counted (the
    overflow; how many after is the counter's *skid*)."""

    #: One line saying what counts, for messages.
    describe: str = ""

    @abc.abstractmethod
    def open(self) -> None:
        """Start counting (called on the thread that runs the vCPU; idempotent)."""

    @abc.abstractmethod
    def arm(self, period: Optional[int]) -> None:
        """End the next KVM_RUN once ``period`` (>= 1) more instructions are counted;
        None: no overflow (counting goes on)."""

    @abc.abstractmethod
    def read(self) -> int:
        """Instructions counted since :meth:`open`."""

    @abc.abstractmethod
    def close(self) -> None:
        """Stop counting and release the counter (idempotent)."""


class PerfInstCounter(InstCounter):
    """Guest instructions retired by the calling thread's vCPU, from a hardware
    counter (perf_event_open PERF_COUNT_HW_INSTRUCTIONS with ``exclude_host`` and
    ``exclude_hv``, as gem5's ``setupInstCounter``) that samples: ``wakeup_events``
    1, a ``sample_period`` set by :meth:`arm`, and its overflow signals the thread
    that opened it (F_SETOWN_EX to its tid, F_SETSIG ``signo``, O_ASYNC), which
    ends KVM_RUN there as the run timer's signal does (blocked outside KVM_RUN).

    perf counts the thread that opens the event: :meth:`arm` called on another
    thread (a CPU moved to a host thread of its own) opens the event again there,
    and :meth:`read` goes on from the count reached.

    Raises (:meth:`open`):
        KvmIoctlError: the host has no such counter (ENOENT, ENODEV, EOPNOTSUPP).
    """

    describe = "perf PERF_COUNT_HW_INSTRUCTIONS (exclude_host, exclude_hv), sampling"

    def __init__(self, signo: int = _timer.TIMER_SIGNAL) -> None:
        self.signo = signo
        self.fd: Optional[int] = None
        self._tid = 0
        self._base = 0  # counted by the events closed before (another thread's)

    def open(self) -> None:
        self._open_fd()

    def _open_fd(self) -> int:
        if self.fd is not None:
            return self.fd
        attr = _ioctl.perf_event_attr()
        attr.type = _ioctl.PERF_TYPE_HARDWARE
        attr.config = _ioctl.PERF_COUNT_HW_INSTRUCTIONS
        attr.flags = (_ioctl.PERF_ATTR_DISABLED | _ioctl.PERF_ATTR_EXCLUDE_HOST
                      | _ioctl.PERF_ATTR_EXCLUDE_HV)
        attr.sample_period = _NO_OVERFLOW
        attr.wakeup_events = 1
        signal.pthread_sigmask(signal.SIG_BLOCK, {self.signo})
        fd = _ioctl.perf_event_open(attr, 0, -1, -1)
        try:
            self._tid = _ioctl.gettid()
            fcntl.fcntl(fd, _timer.F_SETOWN_EX,
                        bytes(_timer._f_owner_ex(_timer.F_OWNER_TID, self._tid)))
            fcntl.fcntl(fd, _timer.F_SETSIG, self.signo)
            fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_ASYNC)
            _ioctl.ioctl_int(fd, PERF_EVENT_IOC_ENABLE, 0, name="PERF_EVENT_IOC_ENABLE")
        except OSError as err:
            os.close(fd)
            if isinstance(err, KvmIoctlError):
                raise
            raise KvmIoctlError("fcntl", err.errno or 0, str(err)) from err
        self.fd = fd
        return fd

    def arm(self, period: Optional[int]) -> None:
        if self.fd is not None and _ioctl.gettid() != self._tid:
            self._base = self.read()
            self._close_fd()
        fd = self._open_fd()
        # Disabled while the period changes, so the new one counts from here.
        _ioctl.ioctl_int(fd, PERF_EVENT_IOC_DISABLE, 0, name="PERF_EVENT_IOC_DISABLE")
        value = ctypes.c_uint64(_NO_OVERFLOW if period is None else max(1, period))
        _ioctl.ioctl(fd, PERF_EVENT_IOC_PERIOD, value, name="PERF_EVENT_IOC_PERIOD")
        _ioctl.ioctl_int(fd, PERF_EVENT_IOC_ENABLE, 0, name="PERF_EVENT_IOC_ENABLE")

    def read(self) -> int:
        if self.fd is None:
            return self._base
        return self._base + int(_U64.unpack(os.read(self.fd, 8))[0])

    def _close_fd(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)

    def close(self) -> None:
        self._base = self.read()
        self._close_fd()


_inst_probe: Dict[str, Tuple[bool, str]] = {}
_inst_probe_lock = threading.Lock()


def inst_counter_probe() -> Tuple[bool, str]:
    """Whether this host gives a sampling hardware instruction counter of guest
    instructions (:class:`PerfInstCounter` opens), and what the probe found; done
    once per process."""
    with _inst_probe_lock:
        found = _inst_probe.get("perf")
        if found is None:
            counter = PerfInstCounter()
            try:
                counter.open()
            except KvmIoctlError as err:
                found = (False, "perf_event_open(PERF_TYPE_HARDWARE, PERF_COUNT_HW_INSTRUCTIONS, "
                                f"exclude_host|exclude_hv): {err.strerror} (errno {err.errno})")
            else:
                found = (True, "perf_event_open(PERF_COUNT_HW_INSTRUCTIONS, exclude_host): "
                               "a hardware instruction counter")
            finally:
                counter.close()
            _inst_probe["perf"] = found
        return found
