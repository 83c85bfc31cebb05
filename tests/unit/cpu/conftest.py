"""Fixtures of the CPU-model tests (see tests/cpu_rig.py)."""

from __future__ import annotations

from cpu_rig import make_rig

__all__ = ["make_rig"]
