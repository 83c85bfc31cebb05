"""guests/pctimers.bin: the RTC's periodic (through the 8259), alarm and
update-ended (through the IOAPIC) interrupts on both backends and on QEMU's
``pc`` machine, which print the same; and a checkpoint taken while the guest
waits for the RTC alarm, restored on the other backend."""

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
OUTPUT = RTC_LINES


def test_pctimers_guest(backend_name: str) -> None:
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--backend", backend_name,
                           "--timeout", "100", IMAGE], capture_output=True, timeout=150,
                          cwd=ROOT, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (OUTPUT, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
def test_qemu_gives_the_same() -> None:
    assert QEMU is not None
    done = subprocess.run([QEMU, "-accel", "kvm", "-machine", "pc", "-m", "128", "-kernel",
                           IMAGE, "-serial", "stdio", "-display", "none", "-monitor", "none",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (OUTPUT, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.parametrize("writer,reader", [("kvm", "mock"), ("mock", "kvm")])
def test_checkpoint_while_waiting_for_the_alarm(writer: str, reader: str,
                                                tmp_path: Path) -> None:
    with System(backend=writer) as system:
        system.load(IMAGE)
        # The periodic part takes ~0.15 s, the alarm comes 1-2 s later.
        first = system.run(max_ticks=TICKS_PER_SECOND // 2, timeout=100)
        assert first.cause == CAUSE_LIMIT
        before = bytes(system.serial.output)
        assert before.startswith(b"rtc: periodic interrupts") and b"alarm" not in before
        cpt = system.checkpoint(tmp_path / "cpt")
    with System.restore(cpt, backend=reader) as restored:
        result = restored.run(timeout=100)
        assert result.cause == CAUSE_DEBUG_EXIT and result.status == 1
        assert before + bytes(restored.serial.output) == OUTPUT
