"""Run timers: how long one KVM entry may last (gem5 ``cpu/kvm/timer.hh``).

A run timer turns "run for N ticks of simulated time" into something that
forces the vCPU out of KVM_RUN:

* :class:`PosixKvmTimer` -- a POSIX timer (``timer_create`` with
  SIGEV_THREAD_ID on CLOCK_MONOTONIC) that sends SIGRTMIN to the vCPU thread.
  The signal is blocked in the thread and unblocked only inside KVM_RUN
  (``KVM_SET_SIGNAL_MASK``), so it interrupts the guest but is never delivered
  to Python; :meth:`PosixKvmTimer.discard_pending` dequeues it after each run.
* :class:`PerfKvmTimer` -- the overflow of a perf counter (hardware cycles
  with ``exclude_host`` where the host has a PMU, else the software
  task-clock) signals the thread.
* :class:`BudgetKvmTimer` -- the mock backend's timer: an instruction budget,
  which makes runs on the mock deterministic.

Host time converts to simulated time as in gem5: ``ticks = host_seconds *
hostFactor * TICKS_PER_SECOND`` (and host cycles through ``hostFreq``).
"""

from __future__ import annotations

import abc
import ctypes
import errno
import fcntl
import logging
import os
import signal
import threading
import time
from typing import Any, Dict, Optional

from ... import _ioctl, uapi
from ...backends.base import RunClock
from ...backends.exits import IntrExit
from ...errors import KvmIoctlError
from ...sim.eventq import TICKS_PER_SECOND

log = logging.getLogger("kvmcpu.cpu.kvm")

#: The run timer's signal (gem5's KVM_KICK_SIGNAL is SIGRTMIN too).
TIMER_SIGNAL: int = int(signal.SIGRTMIN)

#: Quanta the calibration tries (host ns), shortest first.
CALIBRATION_QUANTA_NS = (5_000, 10_000, 20_000, 30_000, 50_000, 70_000, 100_000, 150_000,
                         200_000, 300_000, 500_000)
#: The run that measures the guest's speed (host ns).
CALIBRATION_REFERENCE_NS = 500_000
#: A quantum is honoured when the guest gets at least this share of the work it does
#: in that much time during a long run.
CALIBRATION_PROGRESS = 0.5

#: Ticks per host nanosecond (an int, as ``TICKS_PER_SECOND // 10**9`` everywhere here).
_TICKS_PER_NS: int = TICKS_PER_SECOND // 10**9


def _discard_signal(signo: int) -> bool:
    """Dequeue every pending instance of ``signo`` (real-time signals queue);
    True if there was one."""
    got = False
    while signal.sigtimedwait({signo}, 0) is not None:
        got = True
    return got


class BaseKvmTimer(abc.ABC):
    """Common arithmetic of every run timer.

    Args:
        host_factor: simulated time per host time (1.0: one host second is one
            simulated second).
        host_freq: host CPU frequency in Hz, to convert host cycles.
    """

    def __init__(self, host_factor: float = 1.0, host_freq: float = 2e9) -> None:
        if host_factor <= 0:
            raise ValueError(f"host_factor must be positive, got {host_factor}")
        if host_freq <= 0:
            raise ValueError(f"host_freq must be positive, got {host_freq}")
        self.host_factor = host_factor
        self.host_freq = host_freq
        self._resolution = 1

    # gem5 BaseKvmTimer helpers ------------------------------------------------
    def ticks_from_host_cycles(self, cycles: int) -> int:
        """Host cycles -> simulated ticks."""
        return int(cycles * self.host_factor / self.host_freq * TICKS_PER_SECOND)

    def ticks_from_host_ns(self, ns: int) -> int:
        """Host nanoseconds -> simulated ticks."""
        return int(ns * self.host_factor * _TICKS_PER_NS)

    def host_ns(self, ticks: int) -> int:
        """Simulated ticks -> host nanoseconds (at least 1)."""
        return max(1, int(ticks / self.host_factor / (TICKS_PER_SECOND // 10**9)))

    def host_cycles(self, ticks: int) -> int:
        """Simulated ticks -> host cycles."""
        return int(ticks / self.host_factor / TICKS_PER_SECOND * self.host_freq)

    def resolution(self) -> int:
        """The shortest quantum (ticks) this timer honours; kvmRun clamps to it."""
        return self._resolution

    ticksFromHostCycles = ticks_from_host_cycles
    ticksFromHostNs = ticks_from_host_ns

    # --------------------------------------------------------------------------
    @abc.abstractmethod
    def arm(self, ticks: int) -> None:
        """Start the timer so that the vCPU leaves KVM_RUN after ``ticks``."""

    @abc.abstractmethod
    def disarm(self) -> None:
        """Stop the timer (a signal that already fired may still be pending)."""

    def discard_pending(self) -> bool:
        """Dequeue a timer signal that fired after the run ended. True if one was pending."""
        return False

    def after_run(self, interrupted: bool) -> None:
        """Called after every timed KVM entry; ``interrupted``: it ended with EINTR.

        The default is gem5's: disarm, then drop a signal that fired after the
        run ended so that it cannot end the next entry at once.
        """
        self.disarm()
        self.discard_pending()

    def close(self) -> None:
        """Release the timer."""

    describe: str = "run timer"


class PosixKvmTimer(BaseKvmTimer):
    """A POSIX timer signalling the vCPU thread (create it *in* that thread).

    The timer is armed with an absolute CLOCK_MONOTONIC deadline
    (TIMER_ABSTIME) and is left armed between entries: an entry whose deadline
    is no earlier than the armed one, and later by at most :attr:`slack_fraction`
    of the time left (or :attr:`min_slack_ns`), keeps the armed deadline and
    costs no system call, unless it is less than ``min_quantum_ns`` away. Keeping
    it can only end a run early, never late; the CPU then accounts the time the
    guest really ran and enters again.

    A signal is dequeued after an entry that ended with EINTR (the timer, a
    kick) and before re-arming a deadline that has already passed (the timer
    fired while the thread was outside KVM_RUN), so it never ends the next
    entry at once.

    Args:
        signo: the signal (default SIGRTMIN); the constructor blocks it in the
            calling thread.
        clock: CLOCK_MONOTONIC (default) or another clock id.
        min_quantum_ns: the shortest quantum worth asking for on this host (see
            :func:`measure_min_quantum_ns`); 0: only the clock's resolution.
    """

    describe = "POSIX timer (CLOCK_MONOTONIC, SIGEV_THREAD_ID)"

    #: An armed deadline is kept when the wanted one is later by at most this share
    #: of the time left before it ...
    slack_fraction = 0.25
    #: ... or by at most this many nanoseconds.
    min_slack_ns = 20_000

    def __init__(self, signo: int = TIMER_SIGNAL, clock: int = _ioctl.CLOCK_MONOTONIC,
                 host_factor: float = 1.0, host_freq: float = 2e9,
                 min_quantum_ns: int = 0) -> None:
        super().__init__(host_factor, host_freq)
        self.signo = signo
        self.clock = clock
        self.thread_id = threading.get_ident()
        # Keep the signal pending (never delivered to Python) outside KVM_RUN.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signo})
        self._timer: Optional[int] = _ioctl.timer_create(signo, clock=clock)
        res_ns = max(1, int(clock_getres_ns(clock)))
        self.clock_resolution_ns = res_ns
        self.min_quantum_ns = max(res_ns, int(min_quantum_ns))
        self._resolution = self.ticks_from_host_ns(self.min_quantum_ns)
        #: The armed absolute deadline (host ns on ``clock``), None when disarmed.
        self.deadline: Optional[int] = None
        #: How many arm() calls reprogrammed the timer (the others kept its deadline).
        self.rearms = 0
        self._ns_per_tick = 1.0 / self.host_factor / (TICKS_PER_SECOND // 10**9)
        self._now = (time.monotonic_ns if clock == _ioctl.CLOCK_MONOTONIC
                     else lambda: time.clock_gettime_ns(clock))

    def arm(self, ticks: int) -> None:
        timer = self._timer
        if timer is None:
            raise KvmIoctlError("timer_settime", errno.EBADF, "the run timer is closed")
        now = self._now()
        ns = int(ticks * self._ns_per_tick)
        want = now + (ns if ns > 1 else 1)
        armed = self.deadline
        # Keep a deadline that is not imminent (an entry would only be interrupted
        # at once) and not too much earlier than the wanted one.
        if armed is not None and now + self.min_quantum_ns <= armed <= want:
            slack = (armed - now) * self.slack_fraction
            min_slack = self.min_slack_ns
            if want - armed <= (slack if slack > min_slack else min_slack):
                return
        if armed is not None and armed <= now + self.min_quantum_ns:
            # The old setting is due (or nearly so) outside KVM_RUN: stop it first so
            # that it cannot fire any more, then drop a signal it already sent (it
            # would end the next entry at once), then set the new deadline.
            _ioctl.timer_settime(timer, 0)
            self.discard_pending()
        _ioctl.timer_settime(timer, want, flags=_ioctl.TIMER_ABSTIME)
        self.rearms += 1
        self.deadline = want

    def disarm(self) -> None:
        if self._timer is not None and self.deadline is not None:
            _ioctl.timer_settime(self._timer, 0)
        self.deadline = None

    def after_run(self, interrupted: bool) -> None:
        if interrupted:
            self.discard_pending()
            armed = self.deadline
            if armed is not None and armed <= self._now():
                self.deadline = None  # one-shot: it fired and is spent
            # else something else (a kick) ended the run: the setting still stands.

    def discard_pending(self) -> bool:
        return _discard_signal(self.signo)

    def close(self) -> None:
        if self._timer is not None:
            timer, self._timer = self._timer, None
            self.deadline = None
            _ioctl.timer_delete(timer)
            self.discard_pending()


# perf ioctls (<linux/perf_event.h>), derived like the KVM ones.
_PERF_IOC_MAGIC = ord("$")
PERF_EVENT_IOC_ENABLE = uapi._IO(_PERF_IOC_MAGIC, 0)
PERF_EVENT_IOC_DISABLE = uapi._IO(_PERF_IOC_MAGIC, 1)
PERF_EVENT_IOC_REFRESH = uapi._IO(_PERF_IOC_MAGIC, 2)
PERF_EVENT_IOC_RESET = uapi._IO(_PERF_IOC_MAGIC, 3)
PERF_EVENT_IOC_PERIOD = uapi._IOW(_PERF_IOC_MAGIC, 4, ctypes.c_uint64)

F_SETSIG = 10
F_SETOWN_EX = 15
F_OWNER_TID = 0


class _f_owner_ex(ctypes.Structure):  # <fcntl.h>
    _fields_ = [("type", ctypes.c_int), ("pid", ctypes.c_int)]


class PerfKvmTimer(BaseKvmTimer):
    """A run timer driven by the overflow of a perf counter.

    With ``hardware=True`` the counter is the guest's cycle count
    (PERF_COUNT_HW_CPU_CYCLES, exclude_host), as gem5's PerfKvmTimer; with
    ``hardware=False`` it is the software task-clock of the vCPU thread (in
    ns), which works on hosts without a PMU. Overflow signals the thread with
    ``signo`` (F_SETOWN_EX / F_SETSIG / O_ASYNC).

    Raises:
        KvmIoctlError: perf_event_open refused the event (ENOENT: no such counter).
    """

    def __init__(self, *, hardware: bool, signo: int = TIMER_SIGNAL, host_factor: float = 1.0,
                 host_freq: float = 2e9, min_quantum_ns: int = 0) -> None:
        super().__init__(host_factor, host_freq)
        self.signo = signo
        self.hardware = hardware
        attr = _ioctl.perf_event_attr()
        if hardware:
            attr.type = _ioctl.PERF_TYPE_HARDWARE
            attr.config = _ioctl.PERF_COUNT_HW_CPU_CYCLES
            attr.flags = _ioctl.PERF_ATTR_DISABLED | _ioctl.PERF_ATTR_EXCLUDE_HOST
        else:
            attr.type = _ioctl.PERF_TYPE_SOFTWARE
            attr.config = _ioctl.PERF_COUNT_SW_TASK_CLOCK
            attr.flags = _ioctl.PERF_ATTR_DISABLED
        attr.sample_period = 1 << 62
        attr.wakeup_events = 1
        signal.pthread_sigmask(signal.SIG_BLOCK, {signo})
        self.fd: Optional[int] = _ioctl.perf_event_open(attr, 0, -1, -1)
        try:
            owner = _f_owner_ex(F_OWNER_TID, _ioctl.gettid())
            fcntl.fcntl(self.fd, F_SETOWN_EX, bytes(owner))
            fcntl.fcntl(self.fd, F_SETSIG, signo)
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags | os.O_ASYNC)
        except OSError:
            os.close(self.fd)
            self.fd = None
            raise
        self.min_quantum_ns = max(1, int(min_quantum_ns))
        self._resolution = self.ticks_from_host_ns(self.min_quantum_ns)
        self.describe = (
            "perf overflow timer (hardware cycles, exclude_host)" if hardware
            else "perf overflow timer (software task-clock)"
        )

    def _period(self, ticks: int) -> int:
        return max(1, self.host_cycles(ticks) if self.hardware else self.host_ns(ticks))

    def arm(self, ticks: int) -> None:
        if self.fd is None:
            raise KvmIoctlError("PERF_EVENT_IOC_PERIOD", errno.EBADF, "the run timer is closed")
        period = ctypes.c_uint64(self._period(ticks))
        fd = self.fd
        _ioctl.ioctl(fd, PERF_EVENT_IOC_PERIOD, period, name="PERF_EVENT_IOC_PERIOD")
        _ioctl.ioctl_int(fd, PERF_EVENT_IOC_RESET, 0, name="PERF_EVENT_IOC_RESET")
        # REFRESH 1: enable and disable again after one overflow.
        _ioctl.ioctl_int(fd, PERF_EVENT_IOC_REFRESH, 1, name="PERF_EVENT_IOC_REFRESH")

    def disarm(self) -> None:
        if self.fd is not None:
            _ioctl.ioctl_int(self.fd, PERF_EVENT_IOC_DISABLE, 0, name="PERF_EVENT_IOC_DISABLE")

    def discard_pending(self) -> bool:
        return _discard_signal(self.signo)

    def close(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            os.close(fd)
            self.discard_pending()


class BudgetKvmTimer(BaseKvmTimer):
    """The mock backend's run timer: a budget of guest instructions.

    One instruction is one cycle of the CPU clock (``clock_period`` ticks), so
    a run of N ticks executes ``ceil(N / clock_period)`` instructions and
    simulated time is exact and repeatable.

    Args:
        vcpu: the vCPU's run clock (``Vcpu.run_clock()``, the mock's).
        clock_period: ticks per CPU cycle.
    """

    describe = "mock instruction budget (1 instruction = 1 cycle)"

    def __init__(self, vcpu: RunClock, clock_period: int) -> None:
        super().__init__(1.0, TICKS_PER_SECOND / clock_period)
        self.vcpu = vcpu
        self.clock_period = clock_period
        self._resolution = clock_period

    def arm(self, ticks: int) -> None:
        self.vcpu.set_budget(max(1, -(-ticks // self.clock_period)))

    def disarm(self) -> None:
        self.vcpu.set_budget(None)


def clock_getres_ns(clock: int) -> int:
    """clock_getres(2) in nanoseconds."""
    return max(1, int(round(time.clock_getres(clock) * 1e9)))


# ---------------------------------------------------------------------------
# The shortest useful quantum, measured
# ---------------------------------------------------------------------------
#: 64-bit code of the calibration guest: ``1: inc rax; jmp 1b``.
_COUNTING_GUEST = bytes.fromhex("48ffc0ebfb")
_calibrated: Dict[int, int] = {}
_calibration_lock = threading.Lock()


class CountingGuest:
    """A throw-away VM of ``backend`` whose one vCPU counts (``inc rax; jmp``, 64-bit
    user mode, which runs natively everywhere) under its own POSIX run timer:
    :meth:`work` is how far it counts in one entry armed for a quantum. Create and
    use it in one thread (the timer signals that thread)."""

    def __init__(self, backend: Any, *, clock: int = _ioctl.CLOCK_MONOTONIC,
                 signo: int = TIMER_SIGNAL) -> None:
        self.vm = backend.create_vm()
        self.timer: Optional[PosixKvmTimer] = None
        try:
            ram = self.vm.add_ram(0, 0x10000)
            ram[0x1000 : 0x1000 + len(_COUNTING_GUEST)] = _COUNTING_GUEST
            self.vcpu = self.vm.create_vcpu(0)
            self.vcpu.set_long_mode(rip=0x1000, cpl=3)
            self.timer = PosixKvmTimer(signo=signo, clock=clock, min_quantum_ns=1)
            blocked = set(signal.pthread_sigmask(signal.SIG_BLOCK, []))
            self.vcpu.set_signal_mask(blocked - {signo})
        except BaseException:
            self.close()
            raise

    def work(self, ns: int) -> int:
        """Counts done in one entry with the timer armed ``ns`` host ns ahead."""
        vcpu, timer = self.vcpu, self.timer
        if timer is None:
            raise KvmIoctlError("timer_settime", errno.EBADF, "the counting guest is closed")
        regs = vcpu.get_regs()
        regs.rax = 0
        vcpu.set_regs(regs)
        timer.disarm()
        timer.discard_pending()
        timer.arm(max(1, timer.ticks_from_host_ns(ns)))
        ex = vcpu.run()
        timer.after_run(isinstance(ex, IntrExit))
        return int(vcpu.get_regs().rax)

    def close(self) -> None:
        """Release the timer and the VM. Idempotent."""
        if self.timer is not None:
            self.timer.close()
            self.timer = None
        self.vm.close()

    def __enter__(self) -> CountingGuest:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def measure_min_quantum_ns(backend: Any, *, clock: int = _ioctl.CLOCK_MONOTONIC,
                           signo: int = TIMER_SIGNAL) -> int:
    """The shortest run quantum (host ns) this host honours with a POSIX run timer.

    An entry that the timer ends costs the time of a KVM exit and a signal, which on
    a nested host is tens of microseconds: a quantum shorter than that ends before
    the guest has done the work the quantum stands for. The measurement uses a
    :class:`CountingGuest`: one long run gives the guest's speed, then each of
    :data:`CALIBRATION_QUANTA_NS` is tried (median of three runs) and the first one
    where the guest does at least :data:`CALIBRATION_PROGRESS` of the work it does
    in that time during the long run is the answer, never below the clock's
    resolution. Done once per process and clock (a few milliseconds), then cached.

    Raises:
        KvmIoctlError: the throw-away VM could not be built or run.
        RuntimeError: the guest made no progress in the reference run (even after a
            warm-up and 16 times the reference time).
    """
    with _calibration_lock:
        cached = _calibrated.get(clock)
        if cached is not None:
            return cached
        floor = clock_getres_ns(clock)
        with CountingGuest(backend, clock=clock, signo=signo) as guest:
            # The first entries fault the guest's pages in (slow under shadow paging or
            # on a loaded host): warm up, and lengthen the reference run while it shows
            # no progress at all, up to 16 times before giving up.
            guest.work(CALIBRATION_REFERENCE_NS)
            ref_ns = CALIBRATION_REFERENCE_NS
            while True:
                reference = sorted(guest.work(ref_ns) for _ in range(3))[1]
                if reference > 0 or ref_ns >= 16 * CALIBRATION_REFERENCE_NS:
                    break
                ref_ns *= 2
            if reference <= 0:
                raise RuntimeError(f"the calibration guest made no progress in {ref_ns} ns")
            per_ns = reference / ref_ns
            found = CALIBRATION_QUANTA_NS[-1]
            for quantum in CALIBRATION_QUANTA_NS:
                done = sorted(guest.work(quantum) for _ in range(3))[1]
                if done >= CALIBRATION_PROGRESS * per_ns * quantum:
                    found = quantum
                    break
            else:
                log.warning("no quantum up to %d ns was honoured; using it as the floor",
                            found)
        result = max(floor, found)
        _calibrated[clock] = result
        return result
