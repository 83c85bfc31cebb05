"""Differential tests: the mock against silicon (native execution) and real KVM."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "unit" / "mock"))


@pytest.fixture(autouse=True, params=["tiered", "compiled"])
def mock_tier(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every differential test runs twice: blocks compiled after PROMOTE_AFTER runs (the
    default: these short programs run in the interpreter tier) and compiled at once
    (the IR tier, ir_emit)."""
    if request.param == "compiled":
        from kvmcpu.backends.mock import tier0

        monkeypatch.setattr(tier0, "PROMOTE_AFTER", 1)
    return str(request.param)
