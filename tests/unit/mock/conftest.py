"""Fixtures of the mock backend's unit tests: a ready VM with RAM and one vCPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Iterator

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mockrig import Machine  # noqa: E402


@pytest.fixture
def m() -> Iterator[Machine]:
    mach = Machine()
    try:
        yield mach
    finally:
        mach.close()
