"""Backends: where vCPUs come from.

``get_backend("kvm")`` opens /dev/kvm; ``get_backend("mock")`` gives the
pure-Python software vCPU; ``get_backend("auto")`` (the default) picks KVM
when it is usable and otherwise the mock, and records why in
``backend.reason`` (also logged at INFO on the ``kvmcpu.backends`` logger).

Setting ``KVMCPU_DISABLE_KVM=1`` makes KVM unavailable to ``auto`` and to
``get_backend("kvm")``, which is how the test suite proves it runs without KVM.
"""

from __future__ import annotations

import importlib
import os
from typing import Any, Callable, Dict, List, Tuple

from ..errors import BackendUnavailableError
from .base import Backend, CoalescedMmio, MemorySlot, Vcpu, Vm, log
from .exits import (
    DebugExit,
    ExceptionExit,
    Exit,
    FailEntryExit,
    HltExit,
    HypercallExit,
    InternalErrorExit,
    IntrExit,
    IoExit,
    IrqWindowOpenExit,
    MmioExit,
    ShutdownExit,
    SystemEventExit,
    UnknownExit,
)

#: name -> "module:Class", imported on first use.
_REGISTRY: Dict[str, str] = {
    "kvm": "kvmcpu.backends.kvm:KvmBackend",
    "mock": "kvmcpu.backends.mock:MockBackend",
}

#: Order in which ``auto`` tries the registered backends.
AUTO_ORDER: Tuple[str, ...] = ("kvm", "mock")


def register_backend(name: str, target: str) -> None:
    """Register a backend class by ``"module:Class"`` path, imported lazily."""
    if not name or name == "auto":
        raise ValueError(f"invalid backend name {name!r}")
    if ":" not in target:
        raise ValueError(f"target must be 'module:Class', got {target!r}")
    _REGISTRY[name] = target


def backend_names() -> List[str]:
    """Registered backend names (plus 'auto')."""
    return ["auto", *_REGISTRY]


def kvm_disabled() -> bool:
    """True when KVMCPU_DISABLE_KVM asks for KVM to be ignored."""
    return os.environ.get("KVMCPU_DISABLE_KVM", "") not in ("", "0")


def _load(name: str) -> Callable[..., Backend]:
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown backend {name!r}; choose one of {', '.join(backend_names())}"
        ) from None
    module_name, _, cls_name = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise BackendUnavailableError(name, f"cannot import {module_name}: {err}") from err
    cls: Callable[..., Backend] | None = getattr(module, cls_name, None)
    if cls is None:
        raise BackendUnavailableError(name, f"{module_name} has no {cls_name}")
    return cls


def get_backend(name: str = "auto", **options: Any) -> Backend:
    """Open a backend by name: ``"auto"``, ``"kvm"`` or ``"mock"``.

    ``options`` go to the named backend's constructor (the mock takes
    ``vendor="intel" | "amd"``); ``auto`` takes none, since which backend it opens
    depends on the host.

    Never returns None: raises BackendUnavailableError with the reason (no
    /dev/kvm, permission denied, API version, disabled by KVMCPU_DISABLE_KVM),
    ValueError for an unknown name, TypeError for options the backend does not take.
    """
    if name != "auto":
        backend = _load(name)(**options)
        if not backend.reason:
            backend.reason = f"requested by name ({name!r})"
        return backend
    if options:
        raise TypeError(f"get_backend('auto') takes no backend options (got "
                        f"{', '.join(sorted(options))}); name the backend to pass them")
    reasons: List[str] = []
    for candidate in AUTO_ORDER:
        try:
            backend = _load(candidate)()
        except BackendUnavailableError as err:
            reasons.append(f"{candidate}: {err.reason}")
            continue
        if reasons:
            backend.reason = f"auto: {'; '.join(reasons)}"
        else:
            backend.reason = f"auto: {candidate} is usable"
        log.info("backend auto chose %s (%s)", candidate, backend.reason)
        return backend
    raise BackendUnavailableError("auto", "; ".join(reasons))


__all__ = [
    "get_backend", "register_backend", "backend_names", "kvm_disabled", "AUTO_ORDER",
    "Backend", "Vm", "Vcpu", "MemorySlot", "CoalescedMmio",
    "Exit", "IoExit", "MmioExit", "HltExit", "IrqWindowOpenExit", "IntrExit", "ShutdownExit",
    "FailEntryExit", "InternalErrorExit", "HypercallExit", "SystemEventExit", "DebugExit",
    "ExceptionExit", "UnknownExit",
]
