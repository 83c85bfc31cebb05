"""Several KVM CPUs on host threads (gem5's multi-threaded KVM simulation).

:meth:`ParallelCpus.run` runs one :meth:`System.run` with each CPU on its
own host thread and its own :class:`~kvmcpu.sim.eventq.EventQueue`, the way
gem5 runs KVM CPUs on separate event queues:

* the queues meet at least every ``sim_quantum`` ticks: each CPU thread runs
  its queue up to the quantum's end (a sentinel event there bounds every entry)
  and parks there; once every thread is parked the main thread runs the device
  queue's (the System's) events due by then, decides (an exit, a limit, every
  CPU halted) and releases the next quantum: one wake-up per thread and quantum;
* device events run when the CPUs reach their tick, never ahead of them: a
  quantum ends early at the device queue's next event, and a device event a CPU
  schedules within the quantum (a timer it arms, a debug-exit) ends the quantum
  there for every CPU (the others are kicked). So the quantum bounds only how
  far one CPU's clock may run ahead of another's, not the devices' timing;
* device accesses (port IO, MMIO, the APIC MSRs, interrupt acknowledge,
  coalesced-MMIO flushes) run under one lock, on the device queue's time moved
  on to the accessing CPU's (gem5's ``EventQueue::ScopedMigration``); KVM_RUN
  itself runs without the GIL (ctypes releases it) and without the lock;
* what another thread asks of a CPU (an IPI's wake-up, NMI, INIT, SIPI) is
  posted to the CPU's mailbox and the vCPU kicked (``KvmVcpu.kick``:
  ``immediate_exit`` set before the signal, so a kick cannot be lost); the CPU's
  own thread runs it at its next safe point, between two events. A thread parked
  before the quantum's end (its CPU halted, nothing else on its queue) wakes at
  once, its queue moved on to the poster's tick: a halted CPU woken by an IPI or
  a device runs within the quantum, not at the next meeting of the queues;
* a guest exit, a limit, a host timeout, a signal (``request_exit``) or an
  error on one thread stops every thread: the CPU queues get an exit request,
  every vCPU is kicked, and each thread stops after the event it is in.

Outside :meth:`ParallelCpus.run` the CPUs are back on the System's queue (their
tick events moved there), so drain, checkpoints and ``switch_cpu`` work as with
the single-queue model. Only the KVM backend runs this way: the mock keeps the
single queue, whose interleaving is deterministic.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import AbstractSet, Any, Callable, ContextManager, Iterator, List, Optional, Sequence

from ...errors import KvmIoctlError
from ...sim.eventq import (
    MAX_TICK,
    QUEUE_EMPTY_CAUSE,
    SIM_LIMIT_CAUSE,
    Event,
    EventFunctionWrapper,
    EventQueue,
    Priority,
    SimLoopExitEvent,
)
from .base import BaseKvmCPU
from .x86 import run_again

log = logging.getLogger("kvmcpu.cpu.kvm")

__all__ = ["ParallelCpus", "STOP_CAUSE"]

#: The cause when every CPU halted with nothing to wake it (the System reports it as such).
HALTED_CAUSE = QUEUE_EMPTY_CAUSE
#: The cause a CPU queue's exit request carries when the run stops.
STOP_CAUSE = "parallel run stopped"


class _CpuThread:
    """One CPU's host thread, queue, mailbox and quantum sentinel."""

    def __init__(self, cpu: BaseKvmCPU, lock: threading.RLock) -> None:
        self.cpu = cpu
        self.lock = lock
        self.queue = EventQueue(f"{cpu.name}.queue")
        self.sentinel = EventFunctionWrapper(lambda: None, f"{cpu.name}.quantumEnd",
                                             Priority.Sim_Exit)
        self.mailbox: List[Callable[[], None]] = []
        self.thread: Optional[threading.Thread] = None
        self.ident = 0
        self.done = threading.Event()
        #: The quantum (ParallelCpus._gen) the thread is in.
        self.gen = 0
        self.target = 0
        #: At the quantum's end (or halted with nothing before it), waiting for a
        #: post or for the main thread's release (under ParallelCpus.cv).
        self.parked = False
        #: The poster's tick when a post woke the thread from parked.
        self.wake_tick = 0
        self.error: Optional[BaseException] = None
        self.stopping = False
        self.saved_on_halt: Optional[Callable[[], None]] = None
        self.saved_quantum = 0
        self.saved_peers: Any = None
        self.owner: Optional[ParallelCpus] = None

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on this CPU's thread at its next safe point (now, when called
        there). A thread parked for the rest of the quantum (its CPU halted) wakes at
        once, at the poster's tick (see :meth:`ParallelCpus._park`)."""
        if threading.get_ident() == self.ident or self.thread is None:
            fn()
            return
        with self.lock:
            self.mailbox.append(fn)
        self.queue.async_pending = True  # back to the queue's loop, where it is run
        owner = self.owner
        if owner is not None:
            with owner.cv:
                if self.parked:
                    self.parked = False
                    self.wake_tick = owner.now()
                    owner.cv.notify_all()
        vcpu = self.cpu.vcpu
        if vcpu is not None:
            vcpu.kick()

    def drain_mailbox(self) -> None:
        self.queue.async_pending = False
        while self.mailbox:
            with self.lock:
                todo, self.mailbox = self.mailbox, []
                for fn in todo:
                    fn()


class ParallelCpus:
    """The CPUs of one System on host threads (see the module docstring).

    Args:
        cpus: the CPUs (X86KvmCPU on the KVM backend).
        main: the device queue (the System's).
        sim_quantum: ticks between two synchronisations of the queues.
        lock: the device lock (an RLock the System's devices are used under).
    """

    def __init__(self, cpus: Sequence[BaseKvmCPU], main: EventQueue, sim_quantum: int,
                 lock: threading.RLock) -> None:
        if sim_quantum <= 0:
            raise ValueError(f"sim_quantum must be positive, got {sim_quantum}")
        self.main = main
        self.sim_quantum = sim_quantum
        self.lock = lock
        self.threads = [_CpuThread(cpu, lock) for cpu in cpus]
        for t in self.threads:
            t.owner = self
        #: True while :meth:`run` is in progress (the CPUs' events are on their queues).
        self.running = False
        #: Counts the vCPUs' entries (a debugger's step over an INT3 runs alone).
        self.gate = EntryGate()
        #: Guards the threads' ``parked`` flags and the quantum's release.
        self.cv = threading.Condition(threading.Lock())
        #: Counts the quanta of a run: :meth:`_release` starts the next one.
        self._gen = 0
        self._unbounded: AbstractSet[Event] = frozenset()
        #: The current quantum's end (lowered by :meth:`_shrink`).
        self._boundary = 0
        self._local = threading.local()

    def now(self) -> int:
        """The calling thread's tick: its CPU queue's, or the device queue's."""
        queue: Optional[EventQueue] = getattr(self._local, "queue", None)
        return (queue if queue is not None else self.main).cur_tick

    # ------------------------------------------------------------------ set-up
    def _wrap(self, t: _CpuThread) -> None:
        """Instance-level wrappers (the single-queue path keeps the class methods)."""
        cpu: Any = t.cpu
        for name in ("handleKvmExitIO", "handleKvmExitMMIO", "handleKvmExitMSR",
                     "handleKvmExitInternalError", "handleKvmExitIoapicEoi"):
            method = getattr(type(cpu), name).__get__(cpu)
            setattr(cpu, name, self._device_access(method, t))
        for name in ("wakeup", "post_nmi", "post_init", "post_sipi"):
            method = getattr(type(cpu), name).__get__(cpu)
            setattr(cpu, name, _posted(method, t))
        cpu.ioctlRun = _locked_interrupts(cpu, lambda: self._devices_at(t), self.gate,
                                          [o.cpu for o in self.threads if o is not t])
        flush: Callable[[], int] = type(cpu).flushCoalescedMMIO.__get__(cpu)

        def flush_coalesced() -> int:
            with self._devices_at(t):
                return flush()
        cpu.flushCoalescedMMIO = flush_coalesced
        t.saved_on_halt = cpu.on_halt
        cpu.on_halt = None  # the main thread checks "all halted" at each boundary
        # Entries end at the quantum's sentinel; the other CPUs are on other queues.
        t.saved_quantum, cpu.params.quantum = cpu.params.quantum, 0
        t.saved_peers, cpu.peer_events = cpu.peer_events, None

    def _unwrap(self, t: _CpuThread) -> None:
        cpu: Any = t.cpu
        for name in ("handleKvmExitIO", "handleKvmExitMMIO", "handleKvmExitMSR",
                     "handleKvmExitInternalError", "handleKvmExitIoapicEoi", "wakeup",
                     "post_nmi", "post_init",
                     "post_sipi", "ioctlRun", "flushCoalescedMMIO"):
            cpu.__dict__.pop(name, None)
        cpu.on_halt = t.saved_on_halt
        cpu.params.quantum = t.saved_quantum
        cpu.peer_events = t.saved_peers

    def interrupt(self) -> None:
        """Make every CPU thread end its quantum at once (with the vCPUs kicked by
        the caller): an exit request on the device queue is then taken at the next
        meeting, not at the quantum's end. Safe from a signal handler."""
        for t in self.threads:
            t.queue.async_pending = True

    def _device_access(self, method: Callable[[Any], int], t: _CpuThread
                       ) -> Callable[[Any], int]:
        """``method`` (an exit handler) on the device queue (see :meth:`_devices_at`)."""
        def call(ex: Any) -> int:
            with self._devices_at(t):
                return method(ex)
        return call

    @contextlib.contextmanager
    def _devices_at(self, t: _CpuThread) -> Iterator[None]:
        """Device work for ``t``'s CPU (an exit handler, an interrupt acknowledge, a
        coalesced-MMIO flush), under the device lock, on the device queue's time
        moved on to the CPU's (gem5's ``EventQueue::ScopedMigration``; never past a
        pending device event or the quantum's end). A device event it schedules
        before the quantum's end ends the quantum there for every CPU (this one
        at once, the others kicked), so it runs when the CPUs reach its tick: a
        timer a CPU arms, a debug-exit, a device's own delay."""
        main = self.main
        with self.lock:
            tick = min(t.queue.cur_tick, self._due(), self._boundary)
            if tick > main.cur_tick:
                main.cur_tick = tick
            try:
                yield
            finally:
                due = self._due()
                # Due now (a debug-exit, a device's immediate work): this CPU stops
                # at once, before it enters the guest again, even where its clock
                # is behind the device queue's.
                now = due <= main.cur_tick
                if due < self._boundary or now and t.target > t.queue.cur_tick:
                    self._shrink(min(self._boundary, max(due, main.cur_tick)), t,
                                 t.queue.cur_tick if now else None)
                elif t.target < t.sentinel.when():
                    _retarget(t)  # another CPU ended the quantum early

    def _due(self) -> int:
        """The device queue's next event that bounds a quantum."""
        unbounded = self._unbounded
        return self.main.next_tick_except(unbounded) if unbounded else self.main.next_tick()

    def _shrink(self, boundary: int, t: _CpuThread, own: Optional[int] = None) -> None:
        """End the current quantum at ``boundary`` (earlier than planned), and
        ``t``'s at ``own`` when given; called on ``t``'s thread."""
        with self.cv:
            self._boundary = boundary
            for other in self.threads:
                if other.target > boundary:
                    other.target = boundary
            if own is not None and t.target > own:
                t.target = own
        _retarget(t)
        for other in self.threads:
            if other is not t:
                other.queue.async_pending = True  # its loop moves its sentinel
                vcpu = other.cpu.vcpu
                if vcpu is not None:
                    vcpu.kick()

    def _move(self, cpu: BaseKvmCPU, queue: EventQueue) -> None:
        """Put ``cpu`` (and its tick event) on ``queue``."""
        ev = cpu.tick_event
        when = ev.when() if ev.scheduled() else -1
        cpu.eventq.purge(ev)
        cpu.eventq = queue
        cpu._queue = queue  # Clocked's "now"
        if when >= 0:
            queue.schedule(ev, max(when, queue.cur_tick))

    # ------------------------------------------------------------------ running
    def run(self, max_ticks: Optional[int], all_halted: Callable[[], bool],
            unbounded: AbstractSet[Event] = frozenset()) -> SimLoopExitEvent:
        """Run until an exit event on the device queue, a limit, an exit request or
        every CPU halted with nothing to wake it (``all_halted()``); returns the
        exit event, as ``EventQueue.simulate`` does. ``unbounded``: device-queue
        events that do not end a quantum early (host-side housekeeping)."""
        main = self.main
        end = MAX_TICK if max_ticks is None else main.cur_tick + max_ticks
        self._unbounded = unbounded
        self._gen = 0
        self._boundary = main.cur_tick  # a first quantum of no time: the loop starts it
        for t in self.threads:
            t.queue.cur_tick = main.cur_tick
            t.queue.pending_exit = None
            t.error, t.stopping, t.parked = None, False, False
            t.target, t.gen = main.cur_tick, 0
            t.done.clear()
            t.mailbox = []
            self._move(t.cpu, t.queue)
            self._wrap(t)
            t.thread = threading.Thread(target=self._thread_main, args=(t,),
                                        name=f"kvmcpu-{t.cpu.name}", daemon=True)
        for t in self.threads:
            assert t.thread is not None  # noqa: S101 - just made
            t.thread.start()
        result: Optional[SimLoopExitEvent] = None
        self.running = True
        try:
            result = self._loop(end, all_halted)
        finally:
            self.running = False
            self._stop_all()
            for t in self.threads:
                if t.thread is not None:
                    t.thread.join()
                t.thread, t.ident = None, 0
                if t.sentinel.scheduled():
                    t.queue.deschedule(t.sentinel)
                self._unwrap(t)
                t.drain_mailbox()  # what was posted after the thread stopped
                self._move(t.cpu, main)
        for t in self.threads:
            if t.error is not None:
                raise t.error
        assert result is not None  # noqa: S101 - _loop returns or raises
        main.last_exit = result
        return result

    def _loop(self, end: int, all_halted: Callable[[], bool]) -> SimLoopExitEvent:
        """The device queue's side: at each meeting (every CPU thread parked at the
        quantum's end) run the device events due there, decide (an exit, a limit,
        every CPU halted) and release the next quantum."""
        while True:
            with self.cv:
                self.cv.wait_for(self._all_parked)
            result = self._meeting(self._boundary, end, all_halted)
            if result is not None:
                return result
            self._release(self._next_boundary(end))

    def _meeting(self, boundary: int, end: int,
                 all_halted: Callable[[], bool]) -> Optional[SimLoopExitEvent]:
        """The device queue at ``boundary``: its events due by then run (the CPUs are
        all there); the run's exit event, or None to go on."""
        main = self.main
        for ev in self._unbounded:  # housekeeping the CPUs' device time passed
            if ev.scheduled() and ev.when() < main.cur_tick:
                main.reschedule(ev, main.cur_tick)
        exit_ev = self._devices_through(boundary)
        if exit_ev is not None:
            return exit_ev
        for t in self.threads:
            if t.error is not None:
                return SimLoopExitEvent(f"error on {t.cpu.name}: {t.error}", 1)
        if main.pending_exit is not None:
            return main._take_pending_exit()
        if main.cur_tick >= end:
            ev = SimLoopExitEvent(SIM_LIMIT_CAUSE, 0)
            ev.tick = main.cur_tick
            return ev
        if not any(t.mailbox for t in self.threads) and all_halted():
            ev = SimLoopExitEvent(HALTED_CAUSE, 0)
            ev.tick = main.cur_tick
            return ev
        return None

    def _next_boundary(self, end: int) -> int:
        """The next quantum's end: ``sim_quantum`` on, or earlier at the device
        queue's next event, so that the CPUs meet there and the event runs when
        they reach its tick (a device timer is never serviced ahead of the CPUs it
        interrupts, whatever the quantum)."""
        now = self.main.cur_tick
        boundary = min(now + self.sim_quantum, end)
        due = self._due()
        if now < due < boundary:
            boundary = due
        return boundary

    def _all_parked(self) -> bool:
        return all(t.parked or t.done.is_set() for t in self.threads)

    def _release(self, boundary: int) -> None:
        """Start the next quantum: every parked thread runs on to ``boundary``
        (one wake-up per thread and quantum)."""
        with self.cv:
            self._boundary = boundary
            for t in self.threads:
                t.target = boundary
                t.parked = False
            self._gen += 1
            self.cv.notify_all()

    def _park(self, t: _CpuThread) -> bool:
        """Wait, at the quantum's end or halted with nothing before it, for a post
        (True: the CPU goes on, its queue advanced to the poster's tick, as a wake-up
        delivered at once) or for the next quantum or the run's end (False)."""
        with self.cv:
            if t.stopping or self._gen != t.gen:
                return False
            if t.mailbox:
                return True
            t.parked = True
            self.cv.notify_all()
            while t.parked and self._gen == t.gen and not t.stopping:
                self.cv.wait()
            woken = not t.parked and self._gen == t.gen and not t.stopping
            t.parked = False
        if woken:
            q = t.queue
            tick = min(t.wake_tick, t.target)
            if tick > q.cur_tick and q.next_tick() >= tick:
                q.cur_tick = tick
        return woken

    def _devices_through(self, boundary: int) -> Optional[SimLoopExitEvent]:
        """Service the device queue's events due by ``boundary`` (each under the
        lock), then move its time there."""
        main = self.main
        while True:
            with self.lock:
                if main.next_tick() > boundary:
                    if main.cur_tick < boundary:
                        main.cur_tick = boundary
                    return None
                ev = main.service_one()
            if isinstance(ev, SimLoopExitEvent):
                return ev
            if main.pending_exit is not None:
                return None

    def _stop_all(self) -> None:
        with self.cv:
            for t in self.threads:
                t.stopping = True
                t.queue.request_exit(STOP_CAUSE)
            self.cv.notify_all()
        for t in self.threads:
            vcpu = t.cpu.vcpu
            if vcpu is not None:
                try:
                    vcpu.kick()
                except Exception as err:  # noqa: BLE001 - racing with close
                    log.debug("kick: %s", err)

    def _thread_main(self, t: _CpuThread) -> None:
        t.ident = threading.get_ident()
        self._local.queue = t.queue
        cpu = t.cpu
        try:
            cpu.rebind_run_timer()  # the run timer signals the thread that made it
            self._quanta(t)
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            t.error = err
            self.main.request_exit(f"error on {cpu.name}", 1)
        finally:
            with self.cv:
                t.done.set()
                self.cv.notify_all()

    def _quanta(self, t: _CpuThread) -> None:
        """Run quantum after quantum until the run stops or this CPU's queue exits."""
        q = t.queue
        while not t.stopping:
            with self.cv:
                target, t.gen = t.target, self._gen
            t.drain_mailbox()
            if q.cur_tick < target:
                q.schedule(t.sentinel, target)
            try:
                while not t.stopping:
                    t.drain_mailbox()
                    if t.target < target:  # the quantum was ended early (_shrink)
                        _retarget(t)
                        target = t.target
                    if q.next_tick() >= target or self.main.pending_exit is not None:
                        if self._park(t):
                            continue
                        break
                    ev = q.service_one()
                    if isinstance(ev, SimLoopExitEvent):
                        if ev.cause != STOP_CAUSE:  # e.g. a guest's system event
                            self.main.request_exit(ev.cause, ev.code)
                        return
                    if q.pending_exit is not None:
                        return
            finally:
                if t.sentinel.scheduled():
                    q.deschedule(t.sentinel)
                if q.cur_tick < target and q.next_tick() >= target:
                    q.cur_tick = target


def _retarget(t: _CpuThread) -> None:
    """Move ``t``'s quantum sentinel to its (earlier) target; on ``t``'s thread."""
    sentinel, q = t.sentinel, t.queue
    if sentinel.scheduled() and sentinel.when() > t.target:
        # At once when the target is already past: the entry in progress ends
        # before the CPU enters the guest again.
        q.reschedule(sentinel, max(t.target, q.cur_tick))


def _posted(method: Callable[..., None], t: _CpuThread) -> Callable[..., None]:
    def call(*args: Any) -> None:
        t.post(lambda: method(*args))
    return call


class EntryGate:
    """KVM_RUN of the CPU threads, counted: an entry that runs with one of the
    debugger's INT3s out of guest memory (a CPU stepping over its breakpoint,
    ``KvmDebug._entry_lifted``) runs alone, the other vCPUs kicked out and held
    until it ends, so that none runs through the lifted breakpoint (gdb's all-stop
    step over a breakpoint)."""

    def __init__(self) -> None:
        self.cv = threading.Condition(threading.Lock())
        self.active = 0
        self.exclusive = False

    @contextlib.contextmanager
    def entry(self, alone: bool, others: Sequence[Any]) -> Iterator[None]:
        cv = self.cv
        with cv:
            while self.exclusive:
                cv.wait()
            if alone:
                self.exclusive = True
                for other in others:
                    vcpu = other.vcpu
                    if vcpu is not None:
                        vcpu.kick()
                while self.active:
                    cv.wait()
            self.active += 1
        try:
            yield
        finally:
            with cv:
                self.active -= 1
                if alone:
                    self.exclusive = False
                cv.notify_all()


def _locked_interrupts(cpu: Any, devices: Callable[[], ContextManager[None]],
                       gate: EntryGate, others: Sequence[Any]) -> Callable[[], Any]:
    """X86KvmCPU.ioctlRun with the interrupt controller asked on the device queue
    (``devices()``) and KVM_RUN entered outside it."""
    def ioctl_run() -> Any:
        vcpu = cpu._vcpu()
        src = cpu.interrupts
        if cpu.drain_state.name != "Draining" and (cpu.pending_nmi or (
                src is not None and not cpu.vm.has_irqchip)):
            with devices():
                if cpu.pending_nmi:
                    cpu.pending_nmi = False
                    cpu.kvmNonMaskableInterrupt()
                if src is not None:
                    run = vcpu.kvm_run
                    if src.has_pending():
                        if run.ready_for_interrupt_injection and run.if_flag:
                            cpu.kvmInterrupt(src.acknowledge())
                            run.request_interrupt_window = 1 if src.has_pending() else 0
                        else:
                            run.request_interrupt_window = 1
                    elif run.request_interrupt_window:
                        run.request_interrupt_window = 0
        with gate.entry(getattr(cpu, "_entry_lifted", None) is not None, others):
            try:
                return vcpu.run()
            except KvmIoctlError as err:
                return run_again(vcpu, err)
    return ioctl_run

