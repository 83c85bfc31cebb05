"""What the System refuses: any operation once closed, arguments of the wrong type
(TypeError naming the parameter), impossible limits, images that are not kernels."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict

import pytest

from kvmcpu.errors import ClosedError
from kvmcpu.system import System

MakeSystem = Callable[..., System]
CLI_HLT = bytes.fromhex("fa f4")  # cli; hlt (real mode at 0x7c00)


def test_every_operation_on_a_closed_system_is_closed_error(make_system: MakeSystem,
                                                            backend_name: str,
                                                            tmp_path: Path) -> None:
    system = make_system(memory="1M", backend=backend_name)
    system.load(CLI_HLT, fmt="flat")
    assert system.run(timeout=20).status == 0
    tick = system.eventq.cur_tick
    system.close()
    system.close()  # idempotent
    assert system.closed
    operations: Dict[str, Callable[[], Any]] = {
        "run": lambda: system.run(max_seconds=1),
        "load": lambda: system.load(CLI_HLT, fmt="flat"),
        "checkpoint": lambda: system.checkpoint(tmp_path / "cpt"),
        "switch_cpu": lambda: system.switch_cpu("mock"),
        "set_start_state": lambda: system.set_start_state(system.loaded),  # type: ignore[arg-type]
        "__enter__": lambda: system.__enter__(),
    }
    for name, call in operations.items():
        with pytest.raises(ClosedError, match=f"System.{name}: the system is closed"):
            call()
    with pytest.raises(ClosedError):
        system.physmem.read(0x7C00, 2)
    assert system.eventq.cur_tick == tick
    assert not (tmp_path / "cpt").exists()
    # What the run produced stays readable.
    assert system.serial.output == b""
    system.stats.dump(str(tmp_path / "stats.txt"))
    assert "simTicks" in (tmp_path / "stats.txt").read_text()


@pytest.mark.parametrize("kwargs,name", [
    ({"max_seconds": "x"}, "max_seconds"),
    ({"max_seconds": b"1"}, "max_seconds"),
    ({"max_ticks": "x"}, "max_ticks"),
    ({"max_ticks": 1.5}, "max_ticks"),
    ({"max_ticks": True}, "max_ticks"),
    ({"timeout": "x"}, "timeout"),
    ({"timeout": [1]}, "timeout"),
])
def test_run_limits_of_the_wrong_type_are_type_errors(make_system: MakeSystem,
                                                      kwargs: Dict[str, Any], name: str) -> None:
    system = make_system(memory="1M", backend="mock")
    system.load(CLI_HLT, fmt="flat")
    with pytest.raises(TypeError, match=f"^{name} must be"):
        system.run(**kwargs)
    assert system.eventq.cur_tick == 0


@pytest.mark.parametrize("kwargs,name", [
    ({"max_seconds": -1}, "max_seconds"),
    ({"max_seconds": math.nan}, "max_seconds"),
    ({"max_ticks": -1}, "max_ticks"),
    ({"timeout": -0.5}, "timeout"),
])
def test_negative_limits_name_the_parameter(make_system: MakeSystem, kwargs: Dict[str, Any],
                                            name: str) -> None:
    system = make_system(memory="1M", backend="mock")
    system.load(CLI_HLT, fmt="flat")
    with pytest.raises(ValueError, match=f"^{name} must be non-negative|^{name} must be a non"):
        system.run(**kwargs)


def test_infinite_limits_mean_no_limit(make_system: MakeSystem) -> None:
    system = make_system(memory="1M", backend="mock")
    system.load(CLI_HLT, fmt="flat")
    result = system.run(max_seconds=math.inf, timeout=math.inf)
    assert (result.cause, result.status) == ("guest halted with nothing left to run", 0)


@pytest.mark.parametrize("kwargs,name", [
    ({"memory": 1.5}, "memory"),
    ({"memory": None}, "memory"),
    ({"smp": "1"}, "smp"),
    ({"irqchip": 1}, "irqchip"),
    ({"unclaimed": None}, "unclaimed"),
    ({"quantum": "1ms"}, "quantum"),
    ({"clock_period": 1.0}, "clock_period"),
    ({"serial_input": "text"}, "serial_input"),
    ({"cpu_params": 5}, "cpu_params"),
    ({"stats_file": 5}, "stats_file"),
])
def test_system_arguments_of_the_wrong_type_are_type_errors(kwargs: Dict[str, Any],
                                                            name: str) -> None:
    with pytest.raises(TypeError, match=f"^{name} must be"):
        System(backend="mock", **kwargs)


@pytest.mark.parametrize("image", [5, None, ["hello"]])
def test_load_of_a_non_image_is_a_type_error(make_system: MakeSystem, image: Any) -> None:
    system = make_system(memory="1M", backend="mock")
    with pytest.raises(TypeError, match="^image must be a path or the image's bytes"):
        system.load(image)
