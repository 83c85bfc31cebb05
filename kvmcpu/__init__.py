"""kvmcpu: x86 guests on /dev/kvm from pure Python, modelled like gem5's KVM CPU."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["RunResult", "System", "__version__"]

if TYPE_CHECKING:
    from .system import RunResult, System


def __getattr__(name: str) -> Any:
    # ``from kvmcpu import System`` without making ``import kvmcpu`` (and so
    # ``kvmcpu info``) pay for the whole simulator.
    if name in ("System", "RunResult"):
        from . import system

        return getattr(system, name)
    raise AttributeError(f"module 'kvmcpu' has no attribute {name!r}")
