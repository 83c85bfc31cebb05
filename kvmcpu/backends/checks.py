"""The backend contract's argument checks, run once for both backends before any call.

``check_int``/``check_u64``/``check_struct`` validate single arguments; the setter
tables (:data:`VCPU_SETTER_CHECKS`, :data:`VM_SETTER_CHECKS`) are put around every
backend class's ``set_*`` methods by ``Vcpu.__init_subclass__`` and
``Vm.__init_subclass__`` in :mod:`kvmcpu.backends.base`, so a setter refuses
anything but its uapi structure (TypeError naming the method and the parameter)
and out-of-range values (ValueError) before the kernel or the mock sees them.
"""

from __future__ import annotations

import ctypes
import functools
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Sequence, Type, TypeVar

from .. import uapi

if TYPE_CHECKING:
    from .base import Closeable, Vcpu

#: One past the largest unsigned 64-bit value.
U64_LIMIT = 1 << 64


def check_int(name: str, value: object, *, bits: int = 64) -> int:
    """``value`` as an int in ``0 .. 2**bits - 1``.

    Raises:
        TypeError: not an int (bool included).
        ValueError: negative or too wide; the message names ``name``.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= value < 1 << bits:
        raise ValueError(f"{name} must be in 0..2**{bits}-1, got {value:#x}")
    return value


def check_u64(name: str, value: object) -> int:
    """``value`` as an unsigned 64-bit int (see :func:`check_int`)."""
    return check_int(name, value, bits=64)


def check_struct(method: str, param: str, value: object, struct: Type[ctypes.Structure]) -> None:
    """Refuse anything but ``struct`` (a kvm_xsave may be a larger KVM_CAP_XSAVE2 buffer).

    Raises:
        TypeError: naming the method, the parameter and the expected structure.
    """
    if isinstance(value, struct):
        return
    if (struct is uapi.kvm_xsave and isinstance(value, ctypes.Structure)
            and type(value).__name__.startswith("kvm_xsave")
            and ctypes.sizeof(value) >= ctypes.sizeof(uapi.kvm_xsave)):
        return
    raise TypeError(f"{method}: {param} must be a kvmcpu.uapi.{struct.__name__}, "
                    f"got {type(value).__name__}")


_F = TypeVar("_F", bound=Callable[..., Any])


def _checked_setter(fn: _F, param: str, struct: Type[ctypes.Structure]) -> _F:
    name = fn.__name__

    @functools.wraps(fn)
    def setter(self: Closeable, value: Any, *args: Any, **kwargs: Any) -> Any:
        self._check_open()
        check_struct(name, param, value, struct)
        return fn(self, value, *args, **kwargs)

    setter.__contract_checked__ = True  # type: ignore[attr-defined]
    return setter  # type: ignore[return-value]


def _wrap_setters(cls: type, table: Mapping[str, Callable[[Callable[..., Any]], Any]]) -> None:
    # Put the contract's argument checks around the setters a backend class defines.
    for method, wrap in table.items():
        fn = cls.__dict__.get(method)
        if fn is not None and not getattr(fn, "__contract_checked__", False):
            setattr(cls, method, wrap(fn))


def _struct_setter(param: str, struct: Type[ctypes.Structure]) -> Callable[[_F], _F]:
    return lambda fn: _checked_setter(fn, param, struct)


def _checked_msrs(fn: _F) -> _F:
    @functools.wraps(fn)
    def set_msrs(self: "Vcpu", values: Any) -> Any:
        self._check_open()
        if isinstance(values, Mapping):
            items = list(values.items())
        elif isinstance(values, (list, tuple)):
            items = list(values)
        else:
            raise TypeError(f"set_msrs: values must be a mapping or a sequence of "
                            f"(index, value) pairs, got {type(values).__name__}")
        for item in items:
            if not isinstance(item, tuple) or len(item) != 2:
                raise TypeError(f"set_msrs: each entry must be an (index, value) pair, "
                                f"got {item!r}")
            check_int("set_msrs: an MSR index", item[0], bits=32)
            check_u64(f"set_msrs: the value of MSR {item[0]:#x}", item[1])
        return fn(self, values)

    set_msrs.__contract_checked__ = True  # type: ignore[attr-defined]
    return set_msrs  # type: ignore[return-value]


def _checked_one_reg(fn: _F) -> _F:
    @functools.wraps(fn)
    def set_one_reg(self: "Vcpu", reg_id: Any, value: Any) -> Any:
        self._check_open()
        check_u64("set_one_reg: reg_id", reg_id)
        check_u64("set_one_reg: value", value)
        return fn(self, reg_id, value)

    set_one_reg.__contract_checked__ = True  # type: ignore[attr-defined]
    return set_one_reg  # type: ignore[return-value]


def _checked_cpuid2(fn: _F) -> _F:
    @functools.wraps(fn)
    def set_cpuid2(self: "Vcpu", entries: Any) -> Any:
        self._check_open()
        if isinstance(entries, (str, bytes)) or not isinstance(entries, Sequence):
            raise TypeError(f"set_cpuid2: entries must be a sequence of "
                            f"kvmcpu.uapi.kvm_cpuid_entry2, got {type(entries).__name__}")
        for entry in entries:
            check_struct("set_cpuid2", "each entry", entry, uapi.kvm_cpuid_entry2)
        return fn(self, entries)

    set_cpuid2.__contract_checked__ = True  # type: ignore[attr-defined]
    return set_cpuid2  # type: ignore[return-value]


#: The Vcpu setters every backend's class gets the contract's checks around.
VCPU_SETTER_CHECKS: Dict[str, Callable[[Callable[..., Any]], Any]] = {
    "set_regs": _struct_setter("regs", uapi.kvm_regs),
    "set_sregs": _struct_setter("sregs", uapi.kvm_sregs),
    "set_fpu": _struct_setter("fpu", uapi.kvm_fpu),
    "set_xsave": _struct_setter("xsave", uapi.kvm_xsave),
    "set_xcrs": _struct_setter("xcrs", uapi.kvm_xcrs),
    "set_vcpu_events": _struct_setter("events", uapi.kvm_vcpu_events),
    "set_debugregs": _struct_setter("dregs", uapi.kvm_debugregs),
    "set_lapic": _struct_setter("lapic", uapi.kvm_lapic_state),
    "set_msrs": _checked_msrs,
    "set_one_reg": _checked_one_reg,
    "set_cpuid2": _checked_cpuid2,
}

#: The same for the Vm setters.
VM_SETTER_CHECKS: Dict[str, Callable[[Callable[..., Any]], Any]] = {
    "set_irqchip": _struct_setter("chip", uapi.kvm_irqchip),
    "set_pit2": _struct_setter("state", uapi.kvm_pit_state2),
    "set_msr_filter": _struct_setter("msr_filter", uapi.kvm_msr_filter),
    "set_clock": _struct_setter("data", uapi.kvm_clock_data),
}
