"""How the System's CPUs are scheduled: one event queue or host threads, the
interrupt controllers, bring-up and "every CPU halted".

:class:`CpuScheduling` is a mixin of :class:`kvmcpu.system.System` (it uses the
System's CPUs, VM, devices and event queue), as :mod:`kvmcpu.power` is: which
irqchip mode and whether host threads (:mod:`kvmcpu.cpu.kvm.parallel`) are
used, the APs' wait for INIT-SIPI-SIPI, the check that ends a run when no CPU
runs and none can be woken, the peers' events on the one queue, and the kick
that makes a stop request reach the vCPUs (docs/architecture.md, "Several CPUs").
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any, List, Optional

from .cpu.kvm.base import ThreadStatus
from .errors import ConfigError
from .sim.eventq import exit_sim_loop

if TYPE_CHECKING:
    from .cpu.kvm import KvmVM, X86KvmCPU
    from .cpu.kvm.parallel import ParallelCpus
    from .devices import PcDevices
    from .sim.eventq import EventFunctionWrapper, EventQueue
    from .sim.simobject import Root

__all__ = ["CAUSE_HALTED", "CpuScheduling", "DEFAULT_SIM_QUANTUM", "IRQCHIP_MODES",
           "PARALLEL_DEFAULT", "SMP_QUANTUM"]

log = logging.getLogger("kvmcpu.system")

#: Every CPU halted and nothing can wake one (RunResult.cause).
CAUSE_HALTED = "guest halted with nothing left to run"

#: The accepted values of System(irqchip=...) and --irqchip.
IRQCHIP_MODES = ("auto", "user", "kernel", "split", "off", "on")

#: The longest entry of each CPU with ``smp > 1`` when ``quantum`` is 0 (10 us): the
#: CPUs share the one event queue and take turns of at most this much simulated time.
SMP_QUANTUM = 10_000_000

#: gem5's sim_quantum: with one host thread per vCPU, the CPUs' event queues and the
#: device queue meet at least every this many ticks (10 ms). Device events end a
#: quantum early and a halted CPU is woken at once, so it bounds only how far one
#: CPU's clock runs ahead of another's; measured by benchmarks/bench_smp_scaling.py
#: (README "Several CPUs": each meeting costs a few hundred microseconds of host
#: time in Python, so 1 ms quanta lose a large share of a 2-core host).
DEFAULT_SIM_QUANTUM = 10_000_000_000
#: System(parallel=None) on KVM with several CPUs: host threads (True) or the one queue.
PARALLEL_DEFAULT = True


class CpuScheduling:
    """The CPUs' scheduling of a System (a mixin; see the module docstring)."""

    if TYPE_CHECKING:
        root: Root
        vm: KvmVM
        cpus: List[X86KvmCPU]
        devices: PcDevices
        eventq: EventQueue
        backend: Any
        _parallel: Optional[ParallelCpus]
        _timeout_event: EventFunctionWrapper

    def _want_parallel(self, choice: Optional[bool], smp: int) -> bool:
        """One host thread per vCPU (:mod:`kvmcpu.cpu.kvm.parallel`)? Only on KVM with
        several CPUs; None: :data:`PARALLEL_DEFAULT` there (the mock always keeps the
        one queue: its interleaving is deterministic)."""
        if choice is None:
            return PARALLEL_DEFAULT and smp > 1 and self.vm.backend.name == "kvm"
        if choice and self.vm.backend.name != "kvm":
            raise ConfigError(f"parallel=True needs the kvm backend (the "
                              f"{self.vm.backend.name} backend runs every CPU on one "
                              "event queue)")
        return choice and smp > 1

    @property
    def parallel(self) -> bool:
        """True when the CPUs run on host threads of their own during run()."""
        return self._parallel is not None

    def _want_irqchip(self, choice: str) -> str:
        """"kernel" (KVM's in-kernel irqchip), "split" (KVM's local APICs, the
        IOAPIC and PIC in user space) or "user"."""
        if choice not in IRQCHIP_MODES:
            raise ConfigError(f"irqchip must be one of {', '.join(IRQCHIP_MODES)}, "
                              f"got {choice!r}")
        if choice == "split":
            if not self.vm.kvm.capSplitIRQChip():
                raise ConfigError(f"irqchip='split' but the {self.vm.backend.name} backend "
                                  "has no KVM_CAP_SPLIT_IRQCHIP (no in-kernel local APIC)")
            return "split"
        if choice in ("on", "kernel"):
            if not self.vm.kvm.capIRQChip():
                raise ConfigError(f"irqchip={choice!r} but the backend has no in-kernel "
                                  "irqchip")
            return "kernel"
        # "auto" = "user" ("off"): the user-space APIC/IOAPIC/PIC/PIT keep timing in
        # simulated time and work on every backend, so a guest gives the same
        # output, tick counts and checkpoints on the mock and on KVM; KVM's
        # in-kernel timers run in host time. The in-kernel irqchip only when asked.
        return "user"

    def _kick(self, on_main_thread: bool) -> None:
        # On the main thread this is a signal handler (or code between two entries):
        # the KVM vCPU's kick() takes a lock the interrupted code may hold, and the
        # signal has ended KVM_RUN already (EINTR). The mock's kick() takes no lock.
        # With the vCPUs on threads of their own the signal ended no KVM_RUN: a
        # short-lived thread kicks them, so the stop does not wait for the quantum.
        parallel = getattr(self, "_parallel", None)
        if parallel is not None and parallel.running:
            parallel.interrupt()  # each CPU thread ends its quantum at once
        if on_main_thread and self.backend.name != "mock":
            if parallel is not None and parallel.running:
                threading.Thread(target=self._kick_vcpus, daemon=True,
                                 name="kvmcpu-stop").start()
            return
        self._kick_vcpus()

    def _kick_vcpus(self) -> None:
        for cpu in getattr(self, "cpus", ()):
            vcpu = cpu.vcpu
            if vcpu is None:
                continue
            try:
                vcpu.kick()
            except Exception as err:  # noqa: BLE001 - racing with close: nothing to stop
                log.debug("kick: %s", err)

    def _aps_wait_for_sipi(self) -> None:
        """Every AP waits for INIT-SIPI-SIPI from the BSP (at start, and again after
        a platform reset or an S3 wake-up, which reset every CPU)."""
        for ap in self.cpus[1:]:
            if self.vm.kernel_lapic:
                ap.wait_in_kernel_for_sipi()
            else:
                ap.post_init()

    def _simulate(self, max_ticks: Optional[int]) -> Any:
        """Run the event loop: each vCPU on a thread of its own (``parallel``) or all
        CPUs taking turns on the one queue."""
        if self._parallel is not None:
            if self.root.drain_manager.is_drained():
                self.root.drain_manager.resume()
            return self._parallel.run(max_ticks, self._all_halted,
                                      frozenset((self._timeout_event,)))
        return self.root.simulate(max_ticks)

    def on_cpu_halt(self) -> None:
        """Called when a CPU halts: end the run if no CPU runs and nothing can ever
        wake one (a CPU waiting for a SIPI is woken only by another CPU's IPI)."""
        cpus = self.cpus
        if len(cpus) > 1 and any(c.thread_status is ThreadStatus.Active for c in cpus):
            return
        if not any(self._wake_possible(c) for c in cpus):
            exit_sim_loop(CAUSE_HALTED, 0, queue=self.eventq)

    def _all_halted(self) -> bool:
        """No CPU runs and none can be woken (the parallel run's check at each quantum)."""
        cpus = self.cpus
        return not any(c.thread_status is ThreadStatus.Active for c in cpus) and \
            not any(self._wake_possible(c) for c in cpus)

    def _wake_possible(self, cpu: X86KvmCPU) -> bool:
        if cpu.wait_for_sipi:
            return False
        if cpu.vcpu is not None and not cpu.vcpu.kvm_run.if_flag and not cpu.pending_nmi:
            return False
        if self.vm.kernel_lapic:
            return True
        pit = self.devices.pit
        if pit is not None and any(ch._event.scheduled() for ch in pit.channels):
            return True
        lapic = cpu.lapic
        if lapic is not None and lapic.timer_next_tick >= 0:
            return True
        for dev in self.devices.all():
            pending = getattr(dev, "timer_pending", None)
            if pending is not None and pending():
                return True
        interrupts = cpu.interrupts
        return bool(interrupts is not None and interrupts.has_pending())

    def _link_cpus(self) -> None:
        """With several CPUs on the one event queue, each CPU's entries are sized by
        the devices' events only: the other CPUs' ticks and the host-time
        housekeeping do not cut them short (so the interleaving on the mock is the
        same on every run)."""
        cpus = self.cpus
        if len(cpus) == 1:
            cpus[0].peer_events = None
            return
        for cpu in cpus:
            cpu.peer_events = frozenset(
                [c.tick_event for c in cpus if c is not cpu] + [self._timeout_event])
