"""kvmcpu: x86 guests on /dev/kvm from pure Python, modelled like gem5's KVM CPU."""

from __future__ import annotations

__version__ = "0.1.0"
