"""Several KVM CPUs on host threads (gem5's multi-threaded KVM simulation).

:func:`run_parallel` runs one :meth:`System.run`-like slice with each CPU on its
own host thread and its own :class:`~kvmcpu.sim.eventq.EventQueue`, the way
gem5 runs KVM CPUs on separate event queues:

* the queues are synchronised every ``sim_quantum`` ticks: each CPU thread
  runs its queue up to the quantum's end (a sentinel event there bounds every
  entry), the main thread runs the device queue (the System's) up to it, and
  all meet at a barrier;
* device accesses (port IO, MMIO, the APIC MSRs, interrupt acknowledge) run
  under one lock, on the device queue's time (gem5's
  ``EventQueue::ScopedMigration``); KVM_RUN itself runs without the GIL (ctypes
  releases it) and without the lock;
* what another thread asks of a CPU (an IPI's wake-up, NMI, INIT, SIPI) is
  posted to the CPU's mailbox and the vCPU kicked (``KvmVcpu.kick``:
  ``immediate_exit`` set before the signal, so a kick cannot be lost); the CPU's
  own thread runs it at its next safe point, between two events;
* a guest exit, a limit, a host timeout, a signal (``request_exit``) or an
  error on one thread stops every thread: the CPU queues get an exit request,
  every vCPU is kicked, and each thread stops after the event it is in.

Outside :func:`run_parallel` the CPUs are back on the System's queue (their
tick events moved there), so drain, checkpoints and ``switch_cpu`` work as with
the single-queue model. Only the KVM backend runs this way: the mock keeps the
single queue, whose interleaving is deterministic.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, List, Optional, Sequence

from ...errors import KvmIoctlError
from ...sim.eventq import (
    MAX_TICK,
    QUEUE_EMPTY_CAUSE,
    SIM_LIMIT_CAUSE,
    EventFunctionWrapper,
    EventQueue,
    Priority,
    SimLoopExitEvent,
    exit_sim_loop,
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
        self.go = threading.Event()
        self.done = threading.Event()
        self.target = 0
        self.error: Optional[BaseException] = None
        self.stopping = False
        self.saved_on_halt: Optional[Callable[[], None]] = None
        self.saved_quantum = 0
        self.saved_peers: Any = None

    def post(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on this CPU's thread at its next safe point (now, when called there)."""
        if threading.get_ident() == self.ident or self.thread is None:
            fn()
            return
        with self.lock:
            self.mailbox.append(fn)
        vcpu = self.cpu.vcpu
        if vcpu is not None:
            vcpu.kick()

    def drain_mailbox(self) -> None:
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
        #: True while :meth:`run` is in progress (the CPUs' events are on their queues).
        self.running = False

    # ------------------------------------------------------------------ set-up
    def _wrap(self, t: _CpuThread) -> None:
        """Instance-level wrappers (the single-queue path keeps the class methods)."""
        cpu: Any = t.cpu
        lock = self.lock
        for name in ("handleKvmExitIO", "handleKvmExitMMIO", "handleKvmExitMSR",
                     "handleKvmExitInternalError", "handleKvmExitIoapicEoi"):
            method = getattr(type(cpu), name).__get__(cpu)
            setattr(cpu, name, self._device_access(method, t))
        for name in ("wakeup", "post_nmi", "post_init", "post_sipi"):
            method = getattr(type(cpu), name).__get__(cpu)
            setattr(cpu, name, _posted(method, t))
        cpu.ioctlRun = _locked_interrupts(cpu, lock)
        cpu.flushCoalescedMMIO = _locked_call(type(cpu).flushCoalescedMMIO.__get__(cpu), lock)
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

    def _device_access(self, method: Callable[[Any], int], t: _CpuThread
                       ) -> Callable[[Any], int]:
        """``method`` (an exit handler) under the device lock; when it made the device
        queue end the run (debug-exit, an m5 exit), this CPU stops right after it,
        before entering the guest again."""
        lock, main = self.lock, self.main

        def call(ex: Any) -> int:
            with lock:
                ticks = method(ex)
                if any(isinstance(e[3], SimLoopExitEvent) and e[3]._seq == e[2]
                       for e in main._heap):
                    exit_sim_loop(STOP_CAUSE, 0, queue=t.queue)
            return ticks
        return call

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
    def run(self, max_ticks: Optional[int], all_halted: Callable[[], bool]) -> SimLoopExitEvent:
        """Run until an exit event on the device queue, a limit, an exit request or
        every CPU halted with nothing to wake it (``all_halted()``); returns the
        exit event, as ``EventQueue.simulate`` does."""
        main = self.main
        end = MAX_TICK if max_ticks is None else main.cur_tick + max_ticks
        for t in self.threads:
            t.queue.cur_tick = main.cur_tick
            t.queue.pending_exit = None
            t.error, t.stopping = None, False
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
        main = self.main
        while True:
            if main.pending_exit is not None:
                return main._take_pending_exit()
            start = main.cur_tick
            boundary = min(start + self.sim_quantum, end)
            for t in self.threads:
                t.target = boundary
                t.done.clear()
                t.go.set()
            exit_ev = self._devices_until(boundary)
            for t in self.threads:
                t.done.wait()
            if exit_ev is None:
                exit_ev = self._devices_until(boundary)  # what the CPUs scheduled meanwhile
            if exit_ev is not None:
                return exit_ev
            for t in self.threads:
                if t.error is not None:
                    return SimLoopExitEvent(f"error on {t.cpu.name}: {t.error}", 1)
            if main.pending_exit is not None:
                return main._take_pending_exit()
            if boundary <= main.next_tick():
                main.cur_tick = boundary
            if boundary >= end:
                ev = SimLoopExitEvent(SIM_LIMIT_CAUSE, 0)
                ev.tick = main.cur_tick
                return ev
            if not any(t.mailbox for t in self.threads) and all_halted():
                ev = SimLoopExitEvent(HALTED_CAUSE, 0)
                ev.tick = main.cur_tick
                return ev

    def _devices_until(self, boundary: int) -> Optional[SimLoopExitEvent]:
        """Service the device queue's events before ``boundary`` (each under the lock)."""
        main = self.main
        while True:
            with self.lock:
                if main.next_tick() >= boundary:
                    return None
                ev = main.service_one()
            if isinstance(ev, SimLoopExitEvent):
                return ev
            if main.pending_exit is not None:
                return None

    def _stop_all(self) -> None:
        for t in self.threads:
            t.stopping = True
            t.queue.request_exit(STOP_CAUSE)
            t.go.set()
            vcpu = t.cpu.vcpu
            if vcpu is not None:
                try:
                    vcpu.kick()
                except Exception as err:  # noqa: BLE001 - racing with close
                    log.debug("kick: %s", err)

    def _thread_main(self, t: _CpuThread) -> None:
        t.ident = threading.get_ident()
        cpu = t.cpu
        try:
            cpu.rebind_run_timer()  # the run timer signals the thread that made it
            while True:
                t.go.wait()
                t.go.clear()
                if t.stopping:
                    return
                self._quantum(t)
                t.done.set()
                if t.stopping:
                    return
        except BaseException as err:  # noqa: BLE001 - reported by the main thread
            t.error = err
            self.main.request_exit(f"error on {cpu.name}", 1)
        finally:
            t.done.set()

    def _quantum(self, t: _CpuThread) -> None:
        q = t.queue
        target = t.target
        t.drain_mailbox()
        if q.cur_tick < target:
            q.schedule(t.sentinel, target)
        try:
            while not t.stopping:
                t.drain_mailbox()
                if q.next_tick() >= target:
                    break
                ev = q.service_one()
                if isinstance(ev, SimLoopExitEvent):
                    if ev.cause != STOP_CAUSE:  # e.g. a guest's system event
                        self.main.request_exit(ev.cause, ev.code)
                    break
                if q.pending_exit is not None:
                    break
        finally:
            if t.sentinel.scheduled():
                q.deschedule(t.sentinel)
        if q.cur_tick < target and q.next_tick() >= target:
            q.cur_tick = target


def _locked_call(method: Callable[[], int], lock: threading.RLock) -> Callable[[], int]:
    def call() -> int:
        with lock:
            return method()
    return call


def _posted(method: Callable[..., None], t: _CpuThread) -> Callable[..., None]:
    def call(*args: Any) -> None:
        t.post(lambda: method(*args))
    return call


def _locked_interrupts(cpu: Any, lock: threading.RLock) -> Callable[[], Any]:
    """X86KvmCPU.ioctlRun with the interrupt controller asked under the device lock
    and KVM_RUN entered without it."""
    def ioctl_run() -> Any:
        vcpu = cpu._vcpu()
        src = cpu.interrupts
        if cpu.drain_state.name != "Draining" and (cpu.pending_nmi or (
                src is not None and not cpu.vm.has_irqchip)):
            with lock:
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
        try:
            return vcpu.run()
        except KvmIoctlError as err:
            return run_again(vcpu, err)
    return ioctl_run

