"""Every test starts and ends with an empty default event queue at tick 0."""

from __future__ import annotations

from typing import Iterator

import pytest

from kvmcpu.sim import eventq


@pytest.fixture(autouse=True)
def _fresh_main_queue() -> Iterator[None]:
    eventq.reset()
    yield
    eventq.reset()
