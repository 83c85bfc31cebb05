"""Every bundled guest retires the same instructions and exits alike on every engine change.

golden_runs.json was recorded from the engine before the tiers (interpreter tier,
compiled blocks) existed; each vendor profile is checked against its own record.
"""

from __future__ import annotations

import json

import pytest
from golden_runs import GOLDEN, record


@pytest.mark.parametrize("vendor", ["intel", "amd"])
def test_bundled_guests_match_golden_record(vendor: str) -> None:
    expected = json.loads(GOLDEN.read_text())[vendor]
    got = json.loads(json.dumps(record(vendor)))
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert got[name] == expected[name], name
