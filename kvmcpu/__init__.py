"""kvmcpu: x86 guests on /dev/kvm from pure Python, modelled like gem5's KVM CPU.

Two entry points, one per level:

``kvmcpu.backends.get_backend(name="auto")``
    The KVM ABI itself: a :class:`~kvmcpu.backends.base.Backend` ("kvm" over
    /dev/kvm, or "mock", a software vCPU with the same semantics) that creates
    VMs, memory slots and vCPUs whose ``run()`` returns decoded exits::

        from kvmcpu.backends import get_backend
        with get_backend("auto") as kvm, kvm.create_vm() as vm:
            ram = vm.add_ram(0, 2 << 20)
            ...

``kvmcpu.System(memory="128M", backend="auto")``
    The simulated PC, gem5 style: RAM, IO/MMIO buses, PC devices and a KVM CPU
    driven by an event queue; ``load()`` a kernel, ``run()`` it (a
    :class:`RunResult`), read ``serial.output`` and ``stats``, ``checkpoint()``
    and :meth:`System.restore`::

        import kvmcpu
        with kvmcpu.System(memory="128M") as system:
            system.load(kvmcpu.guests.path("hello"))
            print(system.run(max_seconds=10).cause, system.serial.output)

Also: ``kvmcpu.guests`` (the bundled bootable guests), ``kvmcpu.errors`` (the
exception tree), ``kvmcpu.uapi`` (the ``<linux/kvm.h>`` structures) and the
``kvmcpu`` command (``python -m kvmcpu``). ``System``, ``RunResult`` and
``guests`` are imported on first use, so ``import kvmcpu`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List

__version__ = "0.1.0"

__all__ = ["RunResult", "System", "__version__", "guests"]

if TYPE_CHECKING:
    from . import guests
    from .system import RunResult, System

_LAZY = ("System", "RunResult", "guests")


def __getattr__(name: str) -> Any:
    # ``from kvmcpu import System`` without making ``import kvmcpu`` (and so
    # ``kvmcpu info``) pay for the whole simulator.
    if name in ("System", "RunResult"):
        from . import system

        return getattr(system, name)
    if name == "guests":
        import importlib

        return importlib.import_module(".guests", __name__)
    raise AttributeError(f"module 'kvmcpu' has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_LAZY))
