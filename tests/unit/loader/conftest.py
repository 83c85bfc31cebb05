"""Shared fixtures for the loader tests: guest RAM and the committed guest images."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import pytest

import kvmcpu.guests
from kvmcpu.mem import PhysicalMemory


@pytest.fixture
def mem() -> Iterator[PhysicalMemory]:
    with PhysicalMemory("128M") as m:
        yield m


@pytest.fixture
def hello_bin() -> Path:
    return kvmcpu.guests.path("hello")


@pytest.fixture
def hello64_bin() -> Path:
    return kvmcpu.guests.path("hello64")
