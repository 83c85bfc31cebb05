"""Differential tests: the mock against silicon (native execution) and real KVM."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "unit" / "mock"))
