"""Vendor profiles: whose silicon the mock imitates where the manuals say "undefined".

The SDM and the APM leave some flags and results undefined (the flags after MUL,
DIV, multi-bit shifts and rotates, BSF/BSR; the 16-bit SHLD/SHRD result for
counts above 16). Intel and AMD CPUs answer differently, deterministically. On
real KVM, 64-bit user code runs on the host CPU and KVM's instruction emulator
computes flags with host instructions, so a guest sees the host's vendor whatever
CPUID says. The mock therefore imitates the host's vendor by default.

A profile is chosen when a backend is created and fixed for its lifetime: each
engine binds the profile's helper namespace (``H`` in generated code) and its
translator asks the profile for inline code, so nothing tests the vendor per
instruction at run time.

Choosing a profile: ``MockBackend(vendor="intel" | "amd")``, or
``get_backend("mock", vendor=...)``, or the environment variable
``KVMCPU_MOCK_VENDOR``; otherwise the host's vendor (``/proc/cpuinfo``). On a
host that is neither (another architecture, or a vendor such as Hygon or Zhaoxin
that this module does not know), the default is ``amd``, the profile the mock
had before profiles existed.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple

from ...errors import BackendUnavailableError
from . import helpers, undefined

#: Profile names.
VENDORS: Tuple[str, ...] = ("intel", "amd")
#: Environment variable that overrides the host's vendor.
ENV_VAR = "KVMCPU_MOCK_VENDOR"
#: The default where the host is not an Intel or AMD x86 CPU.
FALLBACK = "amd"

_CPUID_VENDOR = {"GenuineIntel": "intel", "AuthenticAMD": "amd"}


@dataclass(frozen=True)
class VendorProfile:
    """What the mock imitates for one vendor.

    ``signature`` is CPUID leaf 1 EAX (family/model/stepping) and is also used
    for leaf 0x80000001 EAX; ``vendor_id`` the 12-byte string of leaf 0.
    """

    name: str
    vendor_id: bytes
    signature: int
    #: where the choice came from: "explicit", "environment", "host" or "fallback"
    source: str = "explicit"

    @property
    def helpers(self) -> SimpleNamespace:
        """The helper namespace generated code calls as ``H``."""
        return _namespace(self.name)


#: Representative parts: the undefined behaviour was measured on an Intel Xeon
#: (family 6) and an AMD EPYC (Zen 3, family 0x19).
_PROFILES = {
    "intel": ("GenuineIntel", 0x00050657),  # family 6, model 0x55 (Xeon Scalable), stepping 7
    "amd": ("AuthenticAMD", 0x00A00F11),  # family 0x19, model 0x01 (Zen 3), stepping 1
}


def host_vendor() -> Optional[str]:
    """The host CPU's profile name ("intel"/"amd"), or None where it is neither."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return None
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return _CPUID_VENDOR.get(line.split(":", 1)[1].strip())
    except OSError:
        return None
    return None


def get_profile(vendor: Optional[str] = None) -> VendorProfile:
    """The profile for ``vendor``; None means the environment variable, else the host.

    Raises:
        ValueError: ``vendor`` names no profile.
        TypeError: ``vendor`` is not a string.
        BackendUnavailableError: ``KVMCPU_MOCK_VENDOR`` names no profile (the
            environment, not the caller, is wrong: the mock cannot be opened as set up).
    """
    if vendor is not None and not isinstance(vendor, str):
        raise TypeError(f"vendor must be a string or None, not {type(vendor).__name__}")
    source = "explicit"
    if vendor is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            vendor, source = env, "environment"
        else:
            found = host_vendor()
            vendor, source = (found, "host") if found else (FALLBACK, "fallback")
    name = vendor.strip().lower()
    if name not in _PROFILES:
        if source == "environment":
            raise BackendUnavailableError(
                "mock", f"{ENV_VAR}={vendor!r} names no vendor profile; choose one of "
                        f"{', '.join(VENDORS)}")
        raise ValueError(f"unknown mock vendor profile {vendor!r}; choose one of "
                         f"{', '.join(VENDORS)}")
    vid, sig = _PROFILES[name]
    return VendorProfile(name, vid.encode("ascii"), sig, source)


_NAMESPACES: Dict[str, SimpleNamespace] = {}


def _namespace(name: str) -> SimpleNamespace:
    ns = _NAMESPACES.get(name)
    if ns is None:
        table: Dict[str, Any] = {n: getattr(helpers, n) for n in helpers.__all__}
        table.update(undefined.TABLES[name])
        ns = _NAMESPACES[name] = SimpleNamespace(**table)
    return ns
