"""guests/pctimers.bin: the RTC's periodic (through the 8259), alarm and
update-ended (through the IOAPIC) interrupts and the HPET's (legacy route
periodic and one-shot, 32-bit level-triggered periodic on GSI 2) on both
backends and on QEMU's ``pc`` machine, which print the same; and checkpoints
taken while the guest waits for the RTC alarm and while the HPET's periodic
timer runs, restored on the other backend."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmcpu.sim.eventq import TICKS_PER_SECOND
from kvmcpu.system import CAUSE_DEBUG_EXIT, CAUSE_LIMIT, System

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = str(ROOT / "guests" / "pctimers.bin")
QEMU = shutil.which("qemu-system-x86_64")
RTC_LINES = (b"rtc: periodic interrupts (pic) 9\n"
             b"rtc: periodic rate 64 Hz ok\n"
             b"rtc: alarm (ioapic) c & a0 = a0\n"
             b"rtc: alarm at the second set\n"
             b"rtc: update-ended 1 s apart (ioapic)\n"
             b"rtc: done\n")
HPET_LINES = (b"hpet: caps 8086a201 period 989680\n"
              b"hpet: periodic (legacy irq 0) 11\n"
              b"hpet: periodic rate 100 Hz ok\n"
              b"hpet: one-shot (legacy irq 8) 1\n"
              b"hpet: periodic 32-bit level (gsi 2) 5\n"
              b"hpet: done\n")
OUTPUT = RTC_LINES + HPET_LINES


def test_pctimers_guest(backend_name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", backend_name,
                           "--timeout", "100", IMAGE], capture_output=True, timeout=150,
                          cwd=ROOT, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (OUTPUT, 1), done.stderr


@pytest.mark.kvm
def test_pctimers_guest_split_irqchip() -> None:
    """KVM's local APICs with the user-space IOAPIC and 8259: the HPET's level-triggered
    GSI 2 counts 5 only if each EOI comes back (KVM_EXIT_IOAPIC_EOI) to clear the
    remote IRR, which needs the IOAPIC's routes in KVM (KVM_SET_GSI_ROUTING)."""
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", "kvm",
                           "--irqchip", "split", "--timeout", "100", IMAGE],
                          capture_output=True, timeout=150, cwd=ROOT, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (OUTPUT, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
def test_qemu_gives_the_same() -> None:
    assert QEMU is not None
    # kernel-irqchip=off: the KVM GSI routing QEMU sets up for its in-kernel
    # irqchip sends GSI 2 (the HPET's only non-legacy route on pc) nowhere.
    done = subprocess.run([QEMU, "-accel", "kvm", "-machine", "pc,kernel-irqchip=off", "-m",
                           "128", "-kernel",
                           IMAGE, "-serial", "stdio", "-display", "none", "-monitor", "none",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (OUTPUT, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("writer,reader", [("kvm", "mock"), ("mock", "kvm")])
@pytest.mark.parametrize("when,last_line", [
    # The RTC's periodic part takes ~0.15 s, the alarm comes 1-2 s later.
    (TICKS_PER_SECOND // 2, b"rtc: periodic rate 64 Hz ok\n"),
    # The update-ended part ends at ~4.0 s, the HPET's periodic timer runs 110 ms.
    (4 * TICKS_PER_SECOND + TICKS_PER_SECOND // 20, b"hpet: caps 8086a201 period 989680\n"),
], ids=["rtc-alarm", "hpet-periodic"])
def test_checkpoint_in_the_middle(writer: str, reader: str, when: int, last_line: bytes,
                                  tmp_path: Path) -> None:
    with System(backend=writer) as system:
        system.load(IMAGE)
        first = system.run(max_ticks=when, timeout=100)
        assert first.cause == CAUSE_LIMIT
        before = bytes(system.serial.output)
        assert before.endswith(last_line), before
        cpt = system.checkpoint(tmp_path / "cpt")
    with System.restore(cpt, backend=reader) as restored:
        result = restored.run(timeout=100)
        assert result.cause == CAUSE_DEBUG_EXIT and result.status == 1
        assert before + bytes(restored.serial.output) == OUTPUT
