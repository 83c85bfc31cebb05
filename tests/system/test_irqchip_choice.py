"""What ``irqchip="auto"`` picks, and that the docstring, --help and README say the same."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

from kvmcpu.errors import ConfigError
from kvmcpu.system import System

README = Path(__file__).resolve().parent.parent.parent / "README.md"
MakeSystem = Callable[..., System]


def test_auto_is_the_userspace_pic_and_pit_on_every_backend(make_system: MakeSystem,
                                                            backend_name: str) -> None:
    system = make_system(memory="1M", backend=backend_name)
    assert system.params.irqchip == "auto"
    assert not system.vm.has_irqchip and not system.vm.params.irqchip
    assert system.devices.pit is not None  # the userspace 8254 runs in simulated time
    # ... and the user-space APIC: its page at 0xfee00000, the IOAPIC at 0xfec00000,
    # and the CPU asks the APIC (with the 8259 behind LINT0) what to deliver.
    assert system.mmio_bus.device_at(0xFEE00030) is system.devices.lapic
    assert system.mmio_bus.read(0xFEE00030, 4) & 0xFF == 0x14  # the version register
    assert system.mmio_bus.device_at(0xFEC00000) is system.devices.ioapic
    assert system.cpu.lapic is system.devices.lapic
    assert system.devices.lapic.cpu is system.cpu


@pytest.mark.parametrize("mode", ["user", "off"])
def test_user_is_auto(mode: str) -> None:
    with System(memory="1M", backend="mock", irqchip=mode) as system:
        assert system.devices.lapic is not None and not system.vm.params.irqchip


def test_kernel_without_an_in_kernel_irqchip_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="irqchip='kernel' but the backend has no in-kernel"):
        System(memory="1M", backend="mock", irqchip="kernel")


def test_on_without_an_in_kernel_irqchip_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="irqchip='on' but the backend has no in-kernel"):
        System(memory="1M", backend="mock", irqchip="on")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_docstring_help_and_readme_say_what_auto_picks() -> None:
    doc = _flat(System.__doc__ or "")
    assert '"auto" (the default) and "user" use the user-space local APIC, IOAPIC, ' \
        '8259 and 8254' in doc
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--help"],
                          capture_output=True, text=True, timeout=60)
    # (argparse may break "user-space" after its hyphen)
    assert "auto and user use the user-space local APIC, IOAPIC, 8259 and 8254" \
        in _flat(done.stdout).replace("- ", "-")
    readme = _flat(README.read_text())
    assert "`--irqchip auto` (the default) is the same as `user`: the System's user-space " \
           "interrupt architecture" in readme
    assert "KVM's in-kernel irqchip when the backend has one" not in doc
