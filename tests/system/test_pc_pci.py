"""guests/pcibus.bin: PCI bus 0 (i440FX, PIIX3, PIIX4 PM) and pci-testdev as
firmware leaves them, through the real ``kvmcpu run --device pci-testdev`` on
both backends and on QEMU's ``pc`` machine (-nodefaults: no VGA or NIC), which
print the same; ``--device`` errors; and a checkpoint taken with a pci-testdev
test selected, counted and its IO decode off, restored on the other backend."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kvmcpu.devices.testdevs import PciTestDev
from kvmcpu.errors import ConfigError
from kvmcpu.system import System

ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE = str(ROOT / "guests" / "pcibus.bin")
QEMU = shutil.which("qemu-system-x86_64")
OUTPUT = b"""\
pci 00:00.0 8086:1237 class 060000 hdr 00 subsys 1af4:1100
pci 00:01.0 8086:7000 class 060100 hdr 80 subsys 1af4:1100
pci 00:01.3 8086:7113 class 068000 hdr 00 subsys 1af4:1100
piix3 pirq b0b0a0a
piix3 elcr c00
piix4 pm base 601 misc 1
pci 00:02.0 1b36:0005 class 00ff00 hdr 00 subsys 1af4:1100
testdev bar0 mem 1000 bar1 io 100
testdev bars assigned, decoding
testdev test 0 mmio-no-eventfd offset 800 data fa
testdev test 1 mmio-wildcard-eventfd offset 801 data ce
testdev test 2 mmio-datamatch-eventfd offset 802 data fa
testdev test 3 portio-no-eventfd offset 83 data fa
testdev test 4 portio-wildcard-eventfd offset 84 data ce
testdev test 5 portio-datamatch-eventfd offset 85 data fa
testdev mmio doorbell count 3
testdev portio doorbell count 2
testdev io decode off ff on 01
pci: done
"""
#: Without pci-testdev: the three functions only.
BARE = b"".join(line + b"\n" for line in OUTPUT.splitlines()[:6]) + b"pci: done\n"


def kvmcpu_run(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "kvmcpu", "run", *args], capture_output=True,
                          timeout=150, cwd=ROOT, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("testdev", [True, False], ids=["pci-testdev", "bare"])
def test_pci_enumeration(backend_name: str, testdev: bool) -> None:
    extra = ["--device", "pci-testdev"] if testdev else []
    done = kvmcpu_run("--backend", backend_name, "--timeout", "100", *extra, IMAGE)
    assert (done.stdout, done.returncode) == (OUTPUT if testdev else BARE, 1), done.stderr


@pytest.mark.kvm
@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86_64 is not installed "
                    "(apt-get install qemu-system-x86)")
@pytest.mark.parametrize("testdev", [True, False], ids=["pci-testdev", "bare"])
def test_qemu_gives_the_same(testdev: bool) -> None:
    assert QEMU is not None
    extra = ["-device", "pci-testdev"] if testdev else []
    done = subprocess.run([QEMU, "-accel", "kvm", "-machine", "pc", "-nodefaults", *extra,
                           "-m", "128", "-kernel", IMAGE, "-serial", "stdio", "-display",
                           "none", "-monitor", "none",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"],
                          capture_output=True, timeout=120, stdin=subprocess.DEVNULL)
    assert (done.stdout, done.returncode) == (OUTPUT if testdev else BARE, 1), done.stderr


@pytest.mark.parametrize("device,message", [
    ("virtio-net", "unknown device 'virtio-net' (known: isa-debug-exit, pc-testdev, "
                   "pci-testdev)"),
    ("pci-testdev,membar=4096", "device pci-testdev: unknown key 'membar' (known: addr)"),
    ("isa-debug-exit,iobase=zz", "device isa-debug-exit: iobase='zz' is not a number"),
    ("isa-debug-exit,iosize=0", "is not an IO port range"),
])
def test_device_errors_are_status_2(device: str, message: str) -> None:
    done = kvmcpu_run("--backend", "mock", "--device", device, IMAGE)
    assert done.returncode == 2
    assert f"kvmcpu run: --device {device}: ".encode() in done.stderr
    assert message.encode() in done.stderr
    with pytest.raises(ConfigError, match="device"):
        System(backend="mock", devices=[device])


def test_isa_debug_exit_moves_where_iobase_says() -> None:
    # QEMU's default port 0x501: the guests' write to 0xf4 no longer ends the run.
    done = kvmcpu_run("--backend", "mock", "-v", "--device", "isa-debug-exit", IMAGE)
    assert done.returncode == 0 and b"guest halted" in done.stderr
    done = kvmcpu_run("--backend", "mock", "--device", "isa-debug-exit,iobase=0xf4,iosize=4",
                      IMAGE)
    assert done.returncode == 1


@pytest.mark.kvm
@pytest.mark.parametrize("writer,reader", [("mock", "kvm"), ("kvm", "mock")])
def test_checkpoint_keeps_config_space_and_testdev_state(writer: str, reader: str,
                                                         tmp_path: Path) -> None:
    with System(backend=writer, devices=["pci-testdev"]) as system:
        io = system.io_bus
        io.write(0xCF8, 4, 0x80001014)  # 02.0 BAR1
        iobase = io.read(0xCFC, 4) & 0xFFFC
        io.write(iobase, 1, 0)  # portio test 0 (test 3)
        for _ in range(5):
            io.write(iobase + 0x83, 1, 0xFA)
        io.write(0xCF8, 4, 0x80001004)
        io.write(0xCFC, 2, 0x0002)  # IO decode off, memory on
        io.write(0xCF8, 4, 0x80000860)
        io.write(0xCFC, 1, 0x05)  # PIRQA -> IRQ 5
        cpt = system.checkpoint(tmp_path / "cpt")
    with System.restore(cpt, backend=reader) as restored:
        assert restored.device_specs == [("pci-testdev", {})]
        io = restored.io_bus
        assert io.device_at(iobase) is None  # still not decoding
        io.write(0xCF8, 4, 0x80000860)
        assert io.read(0xCFC, 4) == 0x0B0B0A05
        io.write(0xCF8, 4, 0x80001004)
        io.write(0xCFC, 2, 0x0003)
        assert io.read(iobase + 12, 1) == 5  # the count kept
        fn = restored.devices.pci_bus.functions[(2, 0)] if restored.devices.pci_bus else None
        assert isinstance(fn, PciTestDev) and fn.current == 3
