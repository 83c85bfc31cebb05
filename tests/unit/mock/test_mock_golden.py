"""Every bundled guest retires the same instructions and exits alike on every engine change.

golden_runs.json was recorded from the engine before the tiers (interpreter tier,
compiled blocks) existed; each vendor profile is checked against its own record.
Guests added after it (they have no "before") are not part of it: the record's own
guests must all still be there and behave exactly as recorded.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from golden_runs import GOLDEN, record


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_bundled_guests_match_golden_record(vendor: str) -> None:
    expected = json.loads(GOLDEN.read_text())[vendor]
    got = json.loads(json.dumps(record(vendor, only=expected)))
    assert sorted(got) == sorted(expected), "a recorded guest disappeared"
    for name in expected:
        assert got[name] == expected[name], name


@pytest.mark.parametrize("vendor", ["intel", "amd"])
@pytest.mark.parametrize("promote_after", [1, 10**9], ids=["compiled-at-once", "tier0-only"])
def test_each_tier_alone_matches_golden_record(promote_after: int, vendor: str,
                                               monkeypatch: Any) -> None:
    """Both tiers alone: every block compiled (from the IR, ir_emit) before its first run,
    or never compiled; on both vendor profiles."""
    from kvmcpu.backends.mock import tier0

    monkeypatch.setattr(tier0, "PROMOTE_AFTER", promote_after)
    expected = json.loads(GOLDEN.read_text())[vendor]
    got = json.loads(json.dumps(record(vendor, only=expected)))
    for name in expected:
        assert got[name] == expected[name], name
