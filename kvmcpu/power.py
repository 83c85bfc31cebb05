"""The System's platform power and reset paths: ACPI S5 and S3, the reset request.

:class:`PowerControl` is a mixin of :class:`kvmcpu.system.System` (it uses the
System's CPU, devices, RAM and event queue). The devices call back into it:
``AcpiPm.on_sleep(state)`` for PM1_CNT.SLP_EN, ``on_reset`` for 0xcf9's
RST_CPU and the 8042's pulse, the RTC's ``on_alarm`` while suspended. Each ends
the current ``simulate()``; ``System.run`` returns the final causes and hands
the others to :meth:`PowerControl._suspend` / :meth:`PowerControl._platform_reset`
before it simulates on (docs/architecture.md, "Power management, resets and
timers").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from .cpu.kvm.base import ThreadStatus
from .cpu.kvm.x86 import real_mode_context
from .devices.acpi_pm import RTC_STS
from .devices.cmos import REG_B_AIE
from .devices.pc_layout import ACPI_FACS_ADDR
from .sim.eventq import exit_sim_loop

if TYPE_CHECKING:
    from .cpu.kvm import X86KvmCPU
    from .devices import PcDevices
    from .loader import LoadedImage
    from .mem.physmem import PhysicalMemory
    from .sim.eventq import EventFunctionWrapper, EventQueue
    from .sim.simobject import Root

__all__ = ["CAUSE_POWER_OFF", "CAUSE_RESET", "PowerControl"]

#: The guest entered ACPI S5 (PM1_CNT.SLP_EN with SLP_TYP S5): status 0, as QEMU.
CAUSE_POWER_OFF = "power off"
#: A platform reset (0xcf9 RST_CPU, the 8042's reset pulse; a triple fault is
#: reported as its own cause) under ``no_reboot``: status 0, as QEMU's -no-reboot.
#: Without ``no_reboot`` the System resets and the run goes on.
CAUSE_RESET = "reset"
#: The internal cause of a PM1_CNT write entering S3 (run() suspends and goes on).
CAUSE_SUSPEND = "suspend to RAM"
#: Devices a platform reset (or the reset of an S3 wake-up) leaves alone: the UART
#: keeps what was printed, fw_cfg and m5ops have no reset state, isa-debug-exit none.
KEPT_AT_RESET = ("uart", "fw_cfg", "m5ops", "debug_exit")


class PowerControl:
    """S5, S3 and the platform reset of a System (a mixin; see the module docstring)."""

    if TYPE_CHECKING:
        root: Root
        cpu: X86KvmCPU
        cpus: List[X86KvmCPU]
        devices: PcDevices
        physmem: PhysicalMemory
        eventq: EventQueue
        resets: int
        _load_args: Optional[Dict[str, Any]]
        _wake_event: EventFunctionWrapper
        load: Callable[..., LoadedImage]
        _aps_wait_for_sipi: Callable[[], None]

    def _on_sleep(self, state: int) -> None:
        """PM1_CNT.SLP_EN: S5 ends the run ("power off", status 0); S3 suspends."""
        if state == 5:
            exit_sim_loop(CAUSE_POWER_OFF, 0, queue=self.eventq)
        elif state == 3:
            exit_sim_loop(CAUSE_SUSPEND, 0, queue=self.eventq)

    #: True while the machine is in S3 (suspended to RAM, waiting for a wake-up).
    suspended = False

    def _suspend(self) -> None:
        """Enter S3: the CPU stops (drained, its thread suspended); the devices go
        on in simulated time. An RTC alarm with AIE and PM1_EN.RTC_EN wakes it."""
        self.root.drain_all()
        # Halted, not Suspended: an interrupt does not wake a CPU in S3 (only
        # the wake-up event restarts it).
        for cpu in self.cpus:
            cpu.thread_status = ThreadStatus.Halted
        self.suspended = True

    def _on_rtc_alarm(self) -> None:
        pm, cmos = self.devices.acpi_pm, self.devices.cmos
        if (self.suspended and pm is not None and pm.pm1_en & RTC_STS
                and cmos.nvram[0x0B] & REG_B_AIE and not self._wake_event.scheduled()):
            self.eventq.schedule(self._wake_event, self.eventq.cur_tick)

    def _wake_from_s3(self) -> None:
        """The S3 wake-up as QEMU and SeaBIOS do it: the machine resets, then the
        firmware jumps in real mode to the FACS's firmware waking vector
        (pc_layout.ACPI_FACS_ADDR + 12, CS = vector >> 4, IP = vector & 0xf); with
        no vector it boots again. PM1_STS then has WAK_STS and RTC_STS."""
        self.suspended = False
        self._reset_devices()
        vector = int.from_bytes(self.physmem.read(ACPI_FACS_ADDR + 12, 4), "little")
        if vector == 0 and self._load_args:
            args = dict(self._load_args)
            self.load(args.pop("image"), **args)
        else:
            self.cpu.setThreadContext(real_mode_context(vector >> 4, vector & 0xF))
        pm = self.devices.acpi_pm
        if pm is not None:
            pm.wake(rtc=True)
        self.cpu.activateContext()
        self._aps_wait_for_sipi()

    def _on_reset(self) -> None:
        """A platform reset request: end this simulate() at once; :meth:`run` then
        resets the machine and goes on, or returns it under ``no_reboot``."""
        exit_sim_loop(CAUSE_RESET, 0, queue=self.eventq)

    def _platform_reset(self, load_args: Dict[str, Any]) -> None:
        """Reset the machine as QEMU's ``pc`` does on a reset request with ``-kernel``:
        the devices to their power-on state (the UART keeps what was printed, the
        RTC its time and NVRAM, RAM its contents), the image loaded again and the
        CPU started where the loader starts it, as SeaBIOS's -kernel boot would."""
        self.root.drain_all()
        self.resets += 1
        self.suspended = False
        self._reset_devices()
        args = dict(load_args)
        image = args.pop("image")
        self.load(image, **args)
        self.cpu.thread_status = ThreadStatus.Active
        self._aps_wait_for_sipi()

    def _reset_devices(self) -> None:
        for name, dev in self.devices.named():
            if name not in KEPT_AT_RESET:
                reset = getattr(dev, "reset", None)
                if reset is not None:
                    reset()

