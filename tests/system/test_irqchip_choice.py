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


def test_on_without_an_in_kernel_irqchip_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="irqchip='on' but the backend has no in-kernel"):
        System(memory="1M", backend="mock", irqchip="on")


def _flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def test_docstring_help_and_readme_say_what_auto_picks() -> None:
    doc = _flat(System.__doc__ or "")
    assert '"auto" (the default) and "off" use the userspace 8259/8254' in doc
    done = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "--help"],
                          capture_output=True, text=True, timeout=60)
    assert "auto and off use the userspace 8259/8254" in _flat(done.stdout)
    readme = _flat(README.read_text())
    assert "`--irqchip auto` (the default) is the same as `off`: the System's userspace " \
           "8259/8254 model" in readme
    assert "KVM's in-kernel irqchip when the backend has one" not in doc
