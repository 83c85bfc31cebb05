"""Fixtures of the CPU-model tests: rigs on the mock (and on KVM where marked)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

from .harness import CpuRig


@pytest.fixture
def make_rig() -> Iterator[Callable[..., CpuRig]]:
    """``make_rig(backend, image, **cpu_params)``: rigs closed after the test."""
    rigs: List[CpuRig] = []

    def make(backend: str = "mock", image: Any = "spin", **kw: Any) -> CpuRig:
        rig = CpuRig(backend, image, **kw)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
