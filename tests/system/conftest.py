"""Fixtures of the System tests (the golden values live in system_helpers.py)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

from kvmcpu.system import System


@pytest.fixture
def make_system() -> Iterator[Callable[..., System]]:
    """``make_system(**kwargs)`` builds a System that is closed after the test."""
    made: List[System] = []

    def make(*args: Any, **kwargs: Any) -> System:
        system = System(*args, **kwargs)
        made.append(system)
        return system

    yield make
    for s in made:
        s.close()
