"""System: guest RAM + IO and MMIO buses + PC devices + a KVM CPU, built in one call.

::

    import kvmcpu
    from kvmcpu import System

    system = System(memory="128M", backend="auto")
    system.load(kvmcpu.guests.path("hello"))    # Multiboot, ELF64 or flat (*.bin)
    result = system.run(max_seconds=10)         # -> RunResult(cause, code, tick, status)
    print(result.cause, system.serial.output)
    system.stats.dump("stats.txt")
    system.checkpoint("cpt.1", overwrite=True)  # System.restore("cpt.1", backend="mock")

The object tree is gem5's: a Root holding ``system`` (this object), which
holds ``kvm_vm`` and ``cpu0``; stats come out as ``system.cpu0.numVMExits``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from .backends.modes import sregs_refusal
from .cpu.kvm import KvmVM, X86KvmCPU, switch_cpu_group
from .cpu.kvm.base import GuestTripleFault, ThreadStatus
from .cpu.kvm.parallel import ParallelCpus
from .cpu.kvm.vm import smp_limit
from .cpu.kvm.x86 import (
    fixup_sregs,
    long_mode_context,
    long_mode_tables,
    protected_mode_context,
    real_mode_context,
)
from .devices import KernelIrqChip, PcDevices, pc_devices
from .devices.ioapic import IOAPIC_PINS
from .devices.testdevs import format_device, parse_devices
from .errors import CheckpointError, ClosedError, ConfigError, GuestError, KvmIoctlError
from .firmware import FirmwareConfig, FirmwareTables, install_tables
from .loader import LoadedImage, load_image
from .loader.image import PAGE_TABLE_BYTES
from .mem.bus import IoBus, MmioBus
from .mem.physmem import PhysicalMemory, parse_size
from .power import CAUSE_POWER_OFF, CAUSE_RESET, CAUSE_SUSPEND, PowerControl
from .sim.checkpoint import DEFAULT_COMPRESSION, CheckpointIn, CheckpointOut
from .sim.eventq import (
    QUEUE_EMPTY_CAUSE,
    SIM_LIMIT_CAUSE,
    TICKS_PER_SECOND,
    EventFunctionWrapper,
    EventQueue,
    Priority,
    SimLoopExitEvent,
    exit_sim_loop,
)
from .sim.params import param
from .sim.simobject import Root, SimObject, SimObjectParams
from .sim.stats import Statistics
from .smp import (
    CAUSE_HALTED as CAUSE_HALTED,
)
from .smp import (
    DEFAULT_SIM_QUANTUM,
    IRQCHIP_MODES,
    PARALLEL_DEFAULT,
    SMP_QUANTUM,
    CpuScheduling,
)

log = logging.getLogger("kvmcpu.system")

#: Exit causes the System produces (RunResult.cause).
CAUSE_DEBUG_EXIT = "isa-debug-exit"
CAUSE_M5_EXIT = "m5_exit instruction encountered"
CAUSE_LIMIT = SIM_LIMIT_CAUSE
CAUSE_TIMEOUT = "host timeout"
CAUSE_TRIPLE_FAULT = "triple fault"
CAUSE_CHECKPOINT = "checkpoint"
#: A signal (SIGINT, SIGTERM, SIGHUP) or :meth:`System.request_stop` ended the run;
#: the code is the signal number and the status 128 + it, as a shell reports it.
CAUSE_INTERRUPTED = "interrupted"

#: Devices added after the first checkpoint format: a checkpoint without their
#: section leaves them at their reset state.
_LATER_DEVICES = ("ioapic", "lapic", "acpi_pm", "gpe0", "i8042", "hpet")

#: Process exit statuses ``kvmcpu run`` uses (besides the guest's debug-exit status).
STATUS_OK = 0
STATUS_ERROR = 1
STATUS_USAGE = 2
STATUS_TIMEOUT = 124
STATUS_TRIPLE_FAULT = 125
STATUS_VCPU_ERROR = 126
#: ``kvmcpu run`` stopped by SIGINT / SIGTERM / SIGHUP: 128 + the signal number.
STATUS_SIGINT = 130
STATUS_SIGTERM = 143
STATUS_SIGHUP = 129

#: The longest simulated time between two host-timeout (and progress) checks.
TIMEOUT_CHECK_PERIOD = 1_000_000_000  # 1 ms
#: The shortest one, where simulated time is slow on the host (the mock backend).
MIN_CHECK_PERIOD = 1_000_000  # 1 us
#: The host time the check period adapts to (so --timeout is kept to about this).
HOST_CHECK_INTERVAL = 0.05


def _check_type(name: str, value: Any, types: Tuple[type, ...], what: str) -> None:
    """TypeError naming the parameter unless ``value`` is one of ``types`` (bool is no int)."""
    if isinstance(value, types) and not (isinstance(value, bool) and bool not in types):
        return
    raise TypeError(f"{name} must be {what}, got {type(value).__name__} {value!r}")


def _seconds(name: str, value: Optional[float]) -> Optional[float]:
    """A non-negative number of seconds; None or ``math.inf``: no limit (None)."""
    if value is None:
        return None
    _check_type(name, value, (int, float), "a number of seconds (or None)")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
    return None if math.isinf(value) else float(value)


def run_limits(max_seconds: Optional[float], max_ticks: Optional[int],
               timeout: Optional[float]) -> Tuple[Optional[int], Optional[float]]:
    """The checked limits of :meth:`System.run`: ``(max_ticks, timeout)``.

    Raises:
        TypeError: a limit of the wrong type (the message names it).
        ValueError: a negative or NaN limit (the message names it).
    """
    if max_ticks is not None:
        _check_type("max_ticks", max_ticks, (int,), "an int (or None)")
        if max_ticks < 0:
            raise ValueError(f"max_ticks must be non-negative, got {max_ticks}")
    seconds = _seconds("max_seconds", max_seconds)
    if max_ticks is None and seconds is not None:
        max_ticks = int(seconds * TICKS_PER_SECOND)
    return max_ticks, _seconds("timeout", timeout)


@dataclasses.dataclass
class RunResult:
    """How a :meth:`System.run` ended.

    Attributes:
        cause: why the simulation loop stopped (one of the CAUSE_* strings or
            the guest's own, e.g. "guest system event: shutdown").
        code: the exit code attached to the cause (debug-exit: ``(v << 1) | 1``).
        tick: the simulated tick it stopped at.
        status: the process exit status ``kvmcpu run`` would return.
        host_seconds: wall time the run took.
    """

    cause: str
    code: int
    tick: int
    status: int
    host_seconds: float

    @property
    def sim_seconds(self) -> float:
        return self.tick / TICKS_PER_SECOND


@dataclasses.dataclass
class SystemParams(SimObjectParams):
    """What a System is built from (all recorded in checkpoints)."""

    memory: int = param(128 << 20, "guest RAM in bytes", check=lambda v: v > 0)
    smp: int = param(1, "number of CPUs", check=lambda v: v >= 1)
    irqchip: str = param("auto", "interrupt controllers: 'auto' or 'user' (the user-space "
                         "local APIC, IOAPIC, 8259 and 8254), 'kernel' (KVM's in-kernel "
                         "irqchip and PIT), 'split' (KVM's local APICs, the user-space "
                         "IOAPIC, 8259 and 8254); 'off' and "
                         "'on' are the old names of 'user' and 'kernel'",
                         check=lambda v: v in IRQCHIP_MODES)
    clock_period: int = param(1000, "CPU clock period in ticks (1000 = 1 GHz)",
                              check=lambda v: v > 0)
    quantum: int = param(0, "longest KVM entry in ticks (0: until the next event; with "
                         "smp > 1: SMP_QUANTUM)",
                         check=lambda v: v >= 0)
    hpet: bool = param(True, "map the HPET at 0xfed00000 (as QEMU's pc; the firmware "
                       "tables then describe it)")
    unclaimed: str = param("log", "unclaimed port/MMIO accesses: 'ignore', 'log' or 'raise'",
                           check=lambda v: v in ("ignore", "log", "raise"))


class System(CpuScheduling, PowerControl, SimObject):
    """A PC-like machine with ``smp`` KVM CPUs (see the module docstring).

    Args:
        memory: RAM size (bytes or "128M").
        backend: "auto", "kvm", "mock" or an open Backend.
        serial: where the UART's output goes besides ``serial.output``:
            None, "stdout", a callable taking bytes, or a binary file.
        serial_input: bytes the guest receives on COM1.
        smp: CPUs, up to the backend's limit (KVM_CAP_MAX_VCPUS; 8 on the mock):
            cpu0 (the BSP) starts at the image's entry, the others wait for
            INIT-SIPI-SIPI from it. They take turns on the one event queue, each
            entry at most ``quantum`` (default :data:`SMP_QUANTUM`).
        irqchip: "auto" (the default) and "user" use the user-space local
            APIC, IOAPIC, 8259 and 8254 on every backend (they keep timing in
            simulated time, so the mock and KVM agree tick for tick);
            "kernel" uses KVM's in-kernel irqchip (LAPIC, IOAPIC, PIC) and PIT
            (ConfigError when the backend has none, e.g. the mock); "split"
            uses KVM's local APICs (KVM_CAP_SPLIT_IRQCHIP) with the user-space
            IOAPIC, 8259 and 8254 (ConfigError without the capability, e.g.
            on the mock). "off" and "on" are the old names of "user" and "kernel".
        quantum: longest KVM entry in ticks (0: run until the next event; with
            several CPUs :data:`SMP_QUANTUM`).
        unclaimed: policy for accesses no device claims.
        cpu_params: extra BaseKvmCPU parameters (``{"usePerf": False}``).
        stats_file: where a guest's m5 dump-stats request appends a stats.txt
            block (None: the request is only logged).
        emulation_fallback: on KVM, run an instruction KVM's emulator refuses
            (KVM_INTERNAL_ERROR_EMULATION) on the mock and carry on (the CPU's
            ``emulationFallback``; False: the run ends in a VcpuRunError).
        eventq: the event queue (default: a new one).
        hpet: the HPET at pc_layout.HPET_BASE (True, as on QEMU's pc machine);
            ``params.hpet`` and ``devices.hpet`` (None without) say whether it is there.
        devices: QEMU's test devices, as ``--device`` spells them:
            ``["pci-testdev", "isa-debug-exit,iobase=0x501,iosize=2"]`` (or
            (name, {key: int}) pairs); ConfigError for an unknown device or key.
        no_reboot: a platform reset request ends the run (cause "reset",
            status 0) instead of resetting the machine (QEMU's ``-no-reboot``).
        parallel: with several CPUs on KVM, run each vCPU on a host thread of its
            own, with its own event queue, during :meth:`run` (True), or all
            CPUs on the one queue (False); None: :data:`PARALLEL_DEFAULT`. The
            mock always uses the one queue (ConfigError for True).
        sim_quantum: ticks between two synchronisations of the CPUs' queues with
            the device queue when ``parallel`` (gem5's ``sim_quantum``).
    """

    params_class = SystemParams
    params: SystemParams

    def __init__(self, memory: Union[int, str] = "128M", backend: Any = "auto", *,
                 serial: Any = None, serial_input: bytes = b"", smp: int = 1,
                 irqchip: str = "auto", quantum: int = 0, unclaimed: str = "log",
                 clock_period: int = 1000, cpu_params: Optional[Dict[str, Any]] = None,
                 stats_file: Optional[str] = None, emulation_fallback: bool = True,
                 eventq: Optional[EventQueue] = None, no_reboot: bool = False,
                 hpet: bool = True, devices: Sequence[Any] = (),
                 parallel: Optional[bool] = None,
                 sim_quantum: int = DEFAULT_SIM_QUANTUM) -> None:
        _check_type("no_reboot", no_reboot, (bool,), "a bool")
        _check_type("devices", devices, (list, tuple), "a list of device strings")
        self.device_specs = parse_devices(devices)
        _check_type("hpet", hpet, (bool,), "a bool")
        _check_type("memory", memory, (int, str), "a size in bytes or a string like '128M'")
        _check_type("smp", smp, (int,), "an int")
        _check_type("irqchip", irqchip, (str,), "a string")
        _check_type("unclaimed", unclaimed, (str,), "a string")
        _check_type("quantum", quantum, (int,), "an int (ticks)")
        _check_type("clock_period", clock_period, (int,), "an int (ticks)")
        _check_type("serial_input", serial_input, (bytes, bytearray), "bytes")
        if cpu_params is not None:
            _check_type("cpu_params", cpu_params, (Mapping,), "a dict of CPU parameters")
        _check_type("emulation_fallback", emulation_fallback, (bool,), "a bool")
        if parallel is not None:
            _check_type("parallel", parallel, (bool,), "a bool (or None)")
        _check_type("sim_quantum", sim_quantum, (int,), "an int (ticks)")
        if sim_quantum <= 0:
            raise ValueError(f"sim_quantum must be positive, got {sim_quantum}")
        if stats_file is not None:
            _check_type("stats_file", stats_file, (str, os.PathLike), "a path (or None)")
        if smp < 1:
            raise ValueError(f"smp must be at least 1, got {smp}")
        self.root = Root(eventq=eventq if eventq is not None else EventQueue("system"))
        super().__init__("system", self.root, memory=parse_size(memory), smp=smp,
                         irqchip=irqchip, quantum=quantum, unclaimed=unclaimed,
                         clock_period=clock_period, hpet=hpet)
        self._closers: List[Callable[[], None]] = []
        self.no_reboot = no_reboot
        #: Platform resets done so far (each re-ran the loaded image).
        self.resets = 0
        self._load_args: Optional[Dict[str, Any]] = None
        self.exit_status: Optional[int] = None
        self.loaded: Optional[LoadedImage] = None
        #: The ACPI/MP/SMBIOS tables written at the last load (None: none).
        self.firmware_tables: Optional[FirmwareTables] = None
        self._host_deadline: Optional[float] = None
        self._check_period = MIN_CHECK_PERIOD
        self._last_check = 0.0
        self.stats_file = stats_file
        self._timeout_event = EventFunctionWrapper(self._check_timeout, "system.hostTimeout",
                                                   Priority.Sim_Exit)
        self._wake_event = EventFunctionWrapper(self._wake_from_s3, "system.wake")
        self.physmem = PhysicalMemory(self.params.memory)
        self._closers.append(self.physmem.close)
        try:
            self.vm = KvmVM("kvm_vm", self, backend=backend)
            self._closers.insert(0, self.vm.close)
            for region in self.physmem.regions:
                self.vm.add_ram(region[0], region[1])
            self.io_bus = IoBus(unclaimed=unclaimed)
            self.mmio_bus = MmioBus(unclaimed=unclaimed)
            limit = smp_limit(self.vm.kvm)
            if smp > limit:
                raise ConfigError(f"smp={smp}: the {self.vm.backend.name} backend runs at "
                                  f"most {limit} CPUs (KVM_CAP_MAX_VCPUS)")
            chip_mode = self._want_irqchip(irqchip)
            use_kernel = chip_mode == "kernel"
            split = chip_mode == "split"
            if split:  # before any vCPU exists
                self.vm.enable_split_irqchip(IOAPIC_PINS)
            self.vm.params.irqchip = use_kernel
            self.vm.params.pit = use_kernel and self.vm.kvm.capPIT2()
            kernel_chip = KernelIrqChip(self.vm.set_irq_line) if use_kernel else None
            self.devices: PcDevices = pc_devices(
                self.io_bus, self.mmio_bus, memory=self.physmem, nb_cpus=smp,
                uart_sink=serial, uart_input=serial_input, on_exit=self._on_debug_exit,
                m5_handler=self, irqchip=kernel_chip, pit=not self.vm.params.pit,
                queue=self.eventq, on_interrupt=self._on_interrupt, apic=not use_kernel,
                tsc_period=clock_period, on_sleep=self._on_sleep, on_reset=self._on_reset,
                hpet=hpet, devices=self.device_specs,
                msi=self.vm.signal_msi if split else None,
                on_routes=self.vm.set_msi_routes if split else None,
            )
            cpu_quantum = quantum or (SMP_QUANTUM if smp > 1 else 0)
            #: The CPUs, cpu0 (the BSP, also ``self.cpu``) to cpu{smp-1}.
            self.cpus: List[X86KvmCPU] = []
            for index in range(smp):
                cpu = X86KvmCPU(
                    f"cpu{index}", self, vm=self.vm, io_bus=self.io_bus,
                    mmio_bus=self.mmio_bus, interrupts=self.devices.interrupts_for(index),
                    clock_period=clock_period, quantum=cpu_quantum,
                    **{"emulationFallback": emulation_fallback, **(cpu_params or {})},
                )
                self.cpus.append(cpu)
                self._closers.insert(0, cpu.close)
                cpu.on_halt = self.on_cpu_halt
                cpu.sw_shadow = self.physmem.overlay  # INT3 patches hidden from reads
                if split and self.devices.ioapic is not None:
                    cpu.on_ioapic_eoi = self.devices.ioapic.eoi
            self.cpu = self.cpus[0]
            self.devices.cmos.on_alarm = self._on_rtc_alarm
            self._link_cpus()
            self.sim_quantum = sim_quantum
            self._parallel_choice = parallel
            self._parallel: Optional[ParallelCpus] = None
            if self._want_parallel(parallel, smp):
                self._parallel = ParallelCpus(self.cpus, self.eventq, sim_quantum,
                                              threading.RLock())
        except BaseException:
            self.close()
            raise
        self._closed = False

    # ------------------------------------------------------------------ set-up
    def _check_open(self, operation: str) -> None:
        if self._closed:
            raise ClosedError(f"System.{operation}: the system is closed")

    @property
    def closed(self) -> bool:
        """True after :meth:`close` (every operation then raises ClosedError)."""
        return self._closed

    @property
    def backend(self) -> Any:
        return self.vm.backend

    @property
    def serial(self) -> Any:
        """The COM1 UART (``serial.output`` holds what the guest printed)."""
        return self.devices.uart

    @property
    def stats(self) -> Statistics:
        """The statistics of the whole tree (``dump(path)``, ``dump_json(path)``, ``reset()``)."""
        return self.root.statistics

    @stats.setter
    def stats(self, value: Any) -> None:
        # SimObject.__init__ assigns the stats group; the System exposes Statistics instead.
        self._stats_group_alias = value

    # ------------------------------------------------------------------ loading
    def load(self, image: Union[str, os.PathLike[str], bytes], *, fmt: str = "auto",
             cmdline: str = "", modules: Sequence[Any] = (), load_addr: Optional[int] = None,
             entry: Optional[int] = None, mode: Optional[str] = None,
             initrd: Any = None) -> LoadedImage:
        """Load a guest image (a Linux bzImage, Multiboot, ELF64 or flat) and set the
        CPU's start state. ``cmdline`` is the kernel command line of a bzImage or
        Multiboot kernel, ``initrd`` (a path or bytes) a bzImage's initial ramdisk.

        Raises:
            GuestError: the image is missing, malformed, not a kernel or does
                not fit in RAM.
            TypeError: ``image`` is not a path or bytes.
            ClosedError: the system is closed.
        """
        self._check_open("load")
        _check_type("image", image, (str, os.PathLike, bytes, bytearray, memoryview),
                    "a path or the image's bytes")
        args: Dict[str, Any] = dict(fmt=fmt, cmdline=cmdline, modules=modules,
                                    load_addr=load_addr, entry=entry, mode=mode, initrd=initrd)
        loaded = load_image(image, self.physmem, **args)
        ranges = [(r.start, r.end) for r in loaded.ranges]
        if loaded.mode == "long":  # the page tables set_start_state writes
            ranges.append((loaded.page_tables, loaded.page_tables + PAGE_TABLE_BYTES))
        self.firmware_tables = install_tables(
            self.physmem, self.firmware_config(), fmt=loaded.format, ranges=ranges,
            name=os.fspath(image) if isinstance(image, (str, os.PathLike)) else "<bytes>")
        self.set_start_state(loaded)
        self.loaded = loaded
        self._load_args = dict(args, image=image)
        return loaded

    def firmware_config(self) -> FirmwareConfig:
        """What the firmware tables describe: the CPUs, the RAM regions, the HPET."""
        return FirmwareConfig(cpus=self.params.smp,
                              ram=tuple((r.gpa, r.size) for r in self.physmem.regions),
                              hpet=getattr(self.devices, "hpet", None) is not None)

    def symbol(self, name: str) -> int:
        """The address of ``name`` in the symbol table of the loaded ELF image.

        Raises:
            GuestError: nothing loaded, the image has no symbol table, or no such symbol.
        """
        _check_type("name", name, (str,), "a symbol name")
        symbols = self.loaded.symbols if self.loaded is not None else {}
        if name not in symbols:
            what = "no image is loaded" if self.loaded is None else (
                "the image has no symbol table" if not symbols else
                f"it has {len(symbols)} symbols, e.g. {', '.join(sorted(symbols)[:8])}")
            raise GuestError(f"no symbol {name!r}: {what}")
        return symbols[name]

    def schedule_pc_event(self, where: Union[int, str], callback: Callable[[Any], Any],
                          name: Optional[str] = None, *, software: bool = False) -> Any:
        """Schedule a PC event on the CPU at a linear address or at a symbol of the
        loaded ELF image (see :meth:`~kvmcpu.cpu.kvm.debug.KvmDebug.schedule_pc_event`:
        ``callback(tc)`` runs before the instruction there; ``software``: an INT3
        breakpoint). Returns the event.

        Raises:
            GuestError: an unknown symbol.
            DebugUnsupportedError: more distinct addresses than the backend can watch.
        """
        self._check_open("schedule_pc_event")
        addr = self.symbol(where) if isinstance(where, str) else where
        label = name or (where if isinstance(where, str) else None)
        return self.cpu.schedule_pc_event(addr, callback, label, software=software)

    def set_start_state(self, loaded: LoadedImage) -> None:
        """Put the CPU in the mode the loader asked for."""
        self._check_open("set_start_state")
        regs = dict(loaded.regs)
        if loaded.mode == "real":
            cs, ip = loaded.cs_ip
            tc = real_mode_context(cs, ip, sp=regs.pop("rsp", 0))
        elif loaded.mode == "protected":
            tc = protected_mode_context(loaded.entry, esp=regs.pop("rsp", 0))
        elif loaded.mode == "long":
            tables = long_mode_tables(loaded.page_tables, 1)
            self.physmem.write(loaded.page_tables, tables["blob"])
            tc = long_mode_context(loaded.entry, rsp=regs.pop("rsp", 0), cr3=tables["cr3"],
                                   gdt_base=tables["gdt_base"])
        else:
            raise GuestError(f"unknown start mode {loaded.mode!r}")
        if loaded.gdt is not None:
            tc.gdt.base, tc.gdt.limit = loaded.gdt
        if loaded.selectors is not None:
            tc.cs.selector = loaded.selectors[0]
            for name in ("ds", "es", "fs", "gs", "ss"):
                getattr(tc, name).selector = loaded.selectors[1]
        for name, value in regs.items():
            setattr(tc, name, value)
        self.cpu.setThreadContext(tc)
        self.cpu.thread_status = ThreadStatus.Suspended

    # ------------------------------------------------------------------ running
    def run(self, *, max_seconds: Optional[float] = None, max_ticks: Optional[int] = None,
            timeout: Optional[float] = None) -> RunResult:
        """Simulate until the guest exits, the limit or the host timeout is reached.

        Args:
            max_seconds: simulated seconds (converted to ticks; ``math.inf`` or
                None: no limit).
            max_ticks: simulated ticks (takes precedence).
            timeout: host (wall-clock) seconds (``math.inf`` or None: none), kept to
                within a fraction of a second whatever the guest does (a host timer
                kicks the vCPU).

        A :meth:`request_stop` (the CLI calls it on SIGINT, SIGTERM, SIGHUP) ends
        the run at the next safe point with that cause.

        Raises:
            ValueError: a negative, infinite or NaN limit.
            VcpuRunError: the vCPU stopped in a way nothing handles (the
                exception carries the exit and a register dump). A triple
                fault is reported as a RunResult with cause "triple fault".
            TypeError, ValueError: a limit of the wrong type, negative or NaN
                (the message names it).
            ClosedError: the system is closed.
        """
        self._check_open("run")
        max_ticks, timeout = run_limits(max_seconds, max_ticks, timeout)
        started = time.monotonic()
        start_tick = self.eventq.cur_tick
        if not self.root.instantiated:
            self.root.instantiate()
            self.cpu.activateContext()
            self._aps_wait_for_sipi()
        self._host_deadline = None if timeout is None else started + timeout
        housekeeping = (self._host_deadline is not None or self.progress_hook is not None
                        or self.expect_stop_requests)
        if housekeeping and not self._timeout_event.scheduled():
            self._check_period = MIN_CHECK_PERIOD
            self._last_check = started
            self.eventq.schedule(self._timeout_event, self.eventq.cur_tick + MIN_CHECK_PERIOD)
        # The host deadline is kept by a host timer too: simulated time can stall on
        # the host (the mock translating cold code), so the event above may come late.
        alarm = None if timeout is None else threading.Timer(timeout, self._deadline_passed)
        if alarm is not None:
            alarm.daemon = True
            alarm.start()
        try:
            ev = self._simulate(max_ticks)
            while (ev.cause == CAUSE_SUSPEND
                   or ev.cause == CAUSE_RESET and not self.no_reboot and self._load_args):
                if ev.cause == CAUSE_SUSPEND:
                    self._suspend()
                elif self._load_args:
                    self._platform_reset(self._load_args)
                left = None if max_ticks is None else max(
                    0, max_ticks - (self.eventq.cur_tick - start_tick))
                ev = self._simulate(left)
        except GuestTripleFault as err:
            log.debug("triple fault:\n%s", err.regs_dump)
            return RunResult(CAUSE_TRIPLE_FAULT, 0, self.eventq.cur_tick, STATUS_TRIPLE_FAULT,
                             time.monotonic() - started)
        finally:
            if alarm is not None:
                alarm.cancel()
                alarm.join()
                if self.eventq.pending_exit == (CAUSE_TIMEOUT, STATUS_TIMEOUT):
                    self.eventq.pending_exit = None  # fired as the run ended otherwise
            if self._timeout_event.scheduled():
                self.eventq.deschedule(self._timeout_event)
        return self._result(ev, time.monotonic() - started)

    #: Keep the housekeeping event running in every run() so that an entry into the
    #: guest lasts at most about a simulated millisecond and a :meth:`request_stop`
    #: from a signal handler is seen at once (the CLI sets it).
    expect_stop_requests = False

    def request_stop(self, cause: str = CAUSE_INTERRUPTED, code: int = 0) -> None:
        """End the run in progress (or the next one) at the next safe point.

        :meth:`run` then returns ``RunResult(cause, code, ...)``; with
        :data:`CAUSE_INTERRUPTED` the code is a signal number and the status 128
        + it. Safe from a signal handler and from another thread: it records the
        request (:meth:`EventQueue.request_exit`) and kicks the vCPU so that a
        long entry into the guest ends (on KVM from the main thread no kick is
        needed: the signal itself ended KVM_RUN).
        """
        self.eventq.request_exit(cause, code)
        self._kick(on_main_thread=threading.current_thread() is threading.main_thread())

    def _deadline_passed(self) -> None:
        """The host timer of run(timeout=...) (another thread)."""
        self.eventq.request_exit(CAUSE_TIMEOUT, STATUS_TIMEOUT)
        self._kick(on_main_thread=False)

    #: Called about every simulated millisecond during run() (progress displays).
    progress_hook: Optional[Callable[[], None]] = None

    def _result(self, ev: SimLoopExitEvent, host_seconds: float) -> RunResult:
        cause, code = ev.cause, ev.code
        if cause == CAUSE_DEBUG_EXIT:
            status = code
        elif cause in (CAUSE_POWER_OFF, CAUSE_RESET):
            status = STATUS_OK
        elif cause in (CAUSE_LIMIT, CAUSE_TIMEOUT):
            status = STATUS_TIMEOUT
        elif cause == CAUSE_INTERRUPTED:
            status = 128 + code if code > 0 else STATUS_SIGINT
        elif cause == QUEUE_EMPTY_CAUSE:
            # Nothing is scheduled: the CPU halted (or was never started) and no
            # device can wake it.
            cause, status = CAUSE_HALTED, 0
        else:
            status = code
        return RunResult(cause, code, ev.tick, status, host_seconds)

    def _check_timeout(self) -> None:
        if self.progress_hook is not None:
            self.progress_hook()
        now = time.monotonic()
        deadline = self._host_deadline
        if deadline is not None and now >= deadline:
            exit_sim_loop(CAUSE_TIMEOUT, STATUS_TIMEOUT, queue=self.eventq)
            return
        if self.eventq.empty() and (self._parallel is None or not self._parallel.running):
            # Only this check was keeping the loop going (a halted CPU nothing can
            # wake, e.g. restored from a checkpoint taken after it halted): end as
            # the run would have without housekeeping.
            exit_sim_loop(CAUSE_HALTED, 0, queue=self.eventq)
            return
        # Simulated time runs at very different host speeds (KVM: about real time;
        # the mock: thousands of times slower), so the period follows the host
        # clock: about HOST_CHECK_INTERVAL apart, within [MIN, TIMEOUT]_CHECK_PERIOD,
        # growing at most 4x per check.
        period, elapsed = self._check_period, now - self._last_check
        if elapsed > 0:
            period = min(4 * period, int(period * HOST_CHECK_INTERVAL / elapsed))
        period = max(MIN_CHECK_PERIOD, min(TIMEOUT_CHECK_PERIOD, period))
        self._check_period, self._last_check = period, now
        self.eventq.schedule(self._timeout_event, self.eventq.cur_tick + period)

    # ------------------------------------------------------------------ devices
    def _on_debug_exit(self, status: int, cause: str) -> None:
        self.exit_status = status
        exit_sim_loop(cause, status, queue=self.eventq)

    def _on_interrupt(self, level: bool) -> None:
        # The 8259's INTR rose: wake the CPU if that reaches it (LINT0 may mask it).
        if level:
            cpu = getattr(self, "cpu", None)
            if cpu is not None and (cpu.interrupts is None or cpu.interrupts.has_pending()):
                cpu.wakeup()

    # m5ops handler ---------------------------------------------------------
    def m5_exit(self, code: int, delay: int) -> object:
        exit_sim_loop(CAUSE_M5_EXIT, code, when=self.eventq.cur_tick + max(0, delay) * 1000,
                      queue=self.eventq)
        return 0

    def m5_dump_stats(self, delay: int, period: int) -> object:
        if self.stats_file is None:
            log.info("m5 dump stats at tick %d (no stats file)", self.eventq.cur_tick)
        else:
            self.stats.dump(self.stats_file)
        return 0

    def m5_reset_stats(self, delay: int, period: int) -> object:
        self.stats.reset()
        return 0

    def m5_checkpoint(self, delay: int, period: int) -> object:
        exit_sim_loop(CAUSE_CHECKPOINT, 0, queue=self.eventq)
        return 0

    def m5_work_begin(self, work_id: int, thread_id: int) -> object:
        log.info("m5 work begin %d (thread %d) at tick %d", work_id, thread_id,
                 self.eventq.cur_tick)
        return 0

    def m5_work_end(self, work_id: int, thread_id: int) -> object:
        log.info("m5 work end %d (thread %d) at tick %d", work_id, thread_id,
                 self.eventq.cur_tick)
        return 0

    # ------------------------------------------------------------------ switching
    def switch_cpu(self, backend: Any) -> X86KvmCPU:
        """Drain and continue on new CPUs and a new VM on ``backend`` ("kvm", "mock" or a
        Backend), which take the old ones' places (gem5's switchCpus; see
        :func:`kvmcpu.cpu.kvm.switch.switch_cpu_group`): every CPU of the system
        moves. Returns the new BSP (``self.cpu``; all of them in ``self.cpus``)."""
        self._check_open("switch_cpu")
        olds, old_vm = list(self.cpus), self.vm
        news = switch_cpu_group(olds, backend)
        cpus: List[X86KvmCPU] = []
        for new in news:
            assert isinstance(new, X86KvmCPU)  # noqa: S101 - same class as the old one
            cpus.append(new)
        self.cpus, self.cpu, self.vm = cpus, cpus[0], cpus[0].vm
        self._link_cpus()
        choice = self._parallel_choice
        on_kvm = self.vm.backend.name == "kvm"
        self._parallel = None
        if on_kvm and len(cpus) > 1 and (PARALLEL_DEFAULT if choice is None else choice):
            self._parallel = ParallelCpus(cpus, self.eventq, self.sim_quantum,
                                          threading.RLock())
        stale = {old.close for old in olds} | {old_vm.close}
        self._closers = ([c.close for c in reversed(cpus)] + [self.vm.close]
                         + [c for c in self._closers if c not in stale])
        return cpus[0]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint(self, directory: Union[str, os.PathLike[str]], *,
                   overwrite: bool = False, compression: str = DEFAULT_COMPRESSION) -> Path:
        """Drain and write a checkpoint directory (restore with :meth:`restore`).

        Guest RAM is stored sparse (zero pages are left out) and compressed with
        ``compression``: ``zlib`` (default), ``none`` or ``zstd`` (needs the
        optional ``zstandard`` package).

        Raises:
            ValueError: an unknown compression.
            CheckpointError: writing failed (naming ``directory``), or ``zstd``
                without its package.
            ClosedError: the System is closed.
        """
        self._check_open("checkpoint")
        return self.root.checkpoint(directory, overwrite=overwrite, compression=compression)

    def serialize(self, cp: CheckpointOut) -> None:
        p = self.params
        cp.param_out("memory", p.memory)
        cp.param_out("smp", p.smp)
        cp.param_out("irqchip", p.irqchip)
        cp.param_out("clock_period", p.clock_period)
        cp.param_out("quantum", p.quantum)
        cp.param_out("unclaimed", p.unclaimed)
        cp.param_out("hpet", p.hpet)
        cp.param_out("devices", ";".join(format_device(d) for d in self.device_specs))
        cp.param_out("regions", [r[0] for r in self.physmem.regions])
        for i, region in enumerate(self.physmem.regions):
            cp.add_memory_image(f"system.physmem.region{i}", region.host.view,
                                extents=region.host.data_extents)
        for name, dev in self.devices.named():
            if hasattr(dev, "serialize"):
                with cp.subsection(name):
                    dev.serialize(cp)

    def unserialize(self, cp: CheckpointIn) -> None:
        section = cp.current
        p = self.params
        for key, mine in (("memory", p.memory), ("smp", p.smp), ("clock_period", p.clock_period)):
            theirs = section.get_int(key)
            if theirs != mine:
                raise CheckpointError(f"[system] {key}={theirs} but this system has {mine}")
        for key in ("irqchip", "quantum", "unclaimed", "hpet", "devices"):
            if section.has(key):
                section.raw(key)  # recorded for System.restore, which builds the system
        regions = section.get_int_list("regions")
        if regions != [r[0] for r in self.physmem.regions]:
            raise CheckpointError(f"[system] regions {regions} do not match this system's RAM")
        for i, region in enumerate(self.physmem.regions):
            cp.read_into(f"system.physmem.region{i}", region.host.view,
                         extents=region.host.data_extents)
            region.host.notify_written(0, len(region.host))  # code caches drop what it replaced
        for name, dev in self.devices.named():
            if name in _LATER_DEVICES and not cp.has_section(f"{cp.current_path}.{name}"):
                continue  # a checkpoint from before the device: it stays at its reset state
            if hasattr(dev, "unserialize"):
                with cp.subsection(name):
                    dev.unserialize(cp)

    @classmethod
    def restore(cls, directory: Union[str, os.PathLike[str]], backend: Any = "auto",
                **kwargs: Any) -> System:
        """Build a System from the configuration stored in a checkpoint and restore it.

        The backend may differ from the one that wrote the checkpoint.

        Raises:
            CheckpointError: the checkpoint is missing, damaged or does not fit.
        """
        cp = CheckpointIn.load(directory)
        sec = cp.section("system")
        config: Dict[str, Any] = {
            "memory": sec.get_int("memory"), "smp": sec.get_int("smp"),
            "irqchip": sec.get_str("irqchip"), "clock_period": sec.get_int("clock_period"),
            "quantum": sec.get_int("quantum"), "unclaimed": sec.get_str("unclaimed"),
        }
        if sec.has("hpet"):
            config["hpet"] = sec.get_bool("hpet")
        if sec.has("devices"):
            config["devices"] = [d for d in sec.get_str("devices").split(";") if d]
        clash = sorted(set(config) & set(kwargs))
        if clash:
            raise TypeError(f"restore: {', '.join(clash)} come(s) from the checkpoint")
        try:
            system = cls(backend=backend, **config, **kwargs)
        except ConfigError as err:
            raise CheckpointError(f"checkpoint {directory}: cannot build the system it "
                                  f"describes: {err}") from err
        try:
            cpu = system.cpu
            try:
                system.root.instantiate(cp)  # validated once, above
                # Hand the CPU state to the vCPU now (if startup has not), so that
                # state the backend refuses is the checkpoint's fault, not a run error.
                for cpu in system.cpus:
                    cpu.syncKvmState()
            except KvmIoctlError as err:
                raise system._refused_cpu_state(cp, err, cpu) from err
        except BaseException:
            system.close()
            raise
        for cpu in system.cpus:
            if cpu.thread_status is ThreadStatus.Active:
                cpu.activateContext()
        return system

    def _refused_cpu_state(self, cp: CheckpointIn, err: KvmIoctlError,
                           cpu: Optional[X86KvmCPU] = None) -> CheckpointError:
        """The CheckpointError for CPU state the backend refused to take."""
        cpu = cpu if cpu is not None else self.cpu
        field = ""
        if err.call == "KVM_SET_SREGS":
            why = sregs_refusal(fixup_sregs(cpu.tc.to_sregs()))
            field = f" ({why})" if why else " (cr0, cr3, cr4, efer or a segment register)"
        return CheckpointError(
            f"checkpoint {cp.directory}: the CPU state in [{cpu.path()}.xc.0] is refused by "
            f"the {self.backend.name} backend: {err.call}{field}: {err.strerror}"
        )

    # ------------------------------------------------------------------ teardown
    _closed = True

    def close(self) -> None:
        """Release the CPU, the VM, the backend (if opened here) and guest RAM. Idempotent.

        Afterwards every operation (run, load, checkpoint, switch_cpu, ...)
        raises :class:`~kvmcpu.errors.ClosedError`; what was already produced
        stays readable (``serial.output``, ``stats``, ``loaded``)."""
        closers, self._closers = getattr(self, "_closers", []), []
        for fn in closers:
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - keep closing the rest
                log.warning("close: %s", err)
        self._closed = True

    def __enter__(self) -> System:
        self._check_open("__enter__")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
