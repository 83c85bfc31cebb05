"""What a backend's ``KVM_SET_GUEST_DEBUG`` delivers, found by running it once.

KVM's API documentation says what to ask first: ``KVM_CAP_SET_GUEST_DEBUG``
(the ioctl exists) and ``KVM_CAP_SET_GUEST_DEBUG2`` (the ``KVM_GUESTDBG_*``
control bits the kernel accepts: ``USE_SW_BP``, ``USE_HW_BP``, ...). Accepting
a bit is not delivering it: with ``USE_SW_BP`` an INT3 must leave the guest as
``KVM_EXIT_DEBUG`` with exception 3 (#BP), and with ``USE_HW_BP`` a data
breakpoint in DR7 must leave it as ``KVM_EXIT_DEBUG`` with DR6.Bn after the
instruction; a nested or paravirtual host may accept both and deliver neither
(the #BP then goes to the guest's own IDT, the write goes unnoticed).

:func:`probe` runs a one-page guest in the thread's operating mode (real,
protected, 64-bit at CPL0 or CPL3: hosts may run them differently, e.g. in
KVM's instruction emulator or natively) on a scratch VM of the same backend
and reports what came out. The answer is cached per backend kind, feature and
mode. A software breakpoint also counts as delivered when KVM's emulator stops
*at* the INT3 with ``KVM_EXIT_INTERNAL_ERROR`` (emulation failure, RIP still
at it): the guest has not executed it, which is all a breakpoint needs
(:meth:`~kvmcpu.cpu.kvm.debug.KvmDebug.handleKvmExitDebug` takes such exits at a
patched address as the breakpoint's).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, Tuple

from ... import uapi
from ...backends.exits import DebugExit, InternalErrorExit

if TYPE_CHECKING:
    from ...backends.base import Backend
    from ..thread import ThreadContext

SOFTWARE = "software breakpoints (INT3 with KVM_GUESTDBG_USE_SW_BP)"
DATA = "data breakpoints (DR7 R/W=01 with KVM_GUESTDBG_USE_HW_BP)"

_CODE, _DATA_ADDR, _RAM = 0x2000, 0x3000, 0x10000
_cache: Dict[Tuple[str, str, str], Tuple[bool, str]] = {}


def mode_of(tc: ThreadContext) -> str:
    """The mode class a probe runs in: ``real``, ``protected``, ``long cpl0``, ``long cpl3``."""
    from ..thread import CpuMode

    mode = tc.mode()
    if mode is CpuMode.REAL:
        return "real"
    if mode is CpuMode.LONG:
        return "long cpl3" if tc.cpl() == 3 else "long cpl0"
    return "protected"


def probe(backend: Backend, feature: str, mode: str) -> Tuple[bool, str]:
    """(delivered, what the probe guest's exit was) for ``feature`` (:data:`SOFTWARE`
    or :data:`DATA`) in ``mode`` (see :func:`mode_of`)."""
    key = (backend.name, feature, mode)
    if key not in _cache:
        _cache[key] = _run(backend, feature, mode)
    return _cache[key]


def _run(backend: Backend, feature: str, mode: str) -> Tuple[bool, str]:
    if not backend.check_extension(uapi.Cap.SET_GUEST_DEBUG):
        return False, "KVM_CAP_SET_GUEST_DEBUG is 0"
    flag = uapi.KVM_GUESTDBG_USE_SW_BP if feature == SOFTWARE else uapi.KVM_GUESTDBG_USE_HW_BP
    flags = backend.check_extension(uapi.Cap.SET_GUEST_DEBUG2)
    if flags and not flags & flag:  # 0: a kernel older than the capability (x86 has both)
        return False, f"KVM_CAP_SET_GUEST_DEBUG2 ({flags:#x}) lacks {flag:#x}"
    moffs = {"real": 2, "protected": 4}.get(mode, 8)
    if feature == SOFTWARE:
        code = b"\xcc"  # int3
    else:
        code = b"\xa2" + _DATA_ADDR.to_bytes(moffs, "little")  # mov [moffs], al
    code += b"\xe6\x80\xf4"  # out 0x80, al; hlt
    with backend.create_vm() as vm:
        ram = vm.add_ram(0, _RAM)
        ram[0:_RAM] = b"\xf4" * _RAM  # anything that goes astray halts or faults
        ram[_CODE:_CODE + len(code)] = code
        vcpu = vm.create_vcpu(0)
        if mode == "real":
            vcpu.set_real_mode(cs=0, ip=_CODE, sp=0x8000)
        elif mode == "protected":
            vcpu.set_protected_mode(eip=_CODE, esp=0x8000)
        else:
            vcpu.set_long_mode(rip=_CODE, rsp=0x8000, cpl=3 if mode == "long cpl3" else 0)
            regs = vcpu.get_regs()
            regs.rflags |= 3 << 12  # IOPL 3: the OUT works at CPL3 too
            vcpu.set_regs(regs)
        control = uapi.KVM_GUESTDBG_ENABLE | flag
        if feature == SOFTWARE:
            vcpu.set_guest_debug(control)
        else:
            dr7 = 0x700 | 2 | (1 << 16)  # G0, R/W0 = 01 (writes), LEN0 = 00 (1 byte)
            vcpu.set_guest_debug(control, [_DATA_ADDR, 0, 0, 0, 0, 0, 0, dr7])
        ex = vcpu.run()
        seen = f"{type(ex).__name__} {ex.fields()}"
        if feature == SOFTWARE:
            if isinstance(ex, DebugExit) and ex.exception == 3 and ex.pc == _CODE:
                return True, "KVM_EXIT_DEBUG (#BP) at the INT3"
            if (isinstance(ex, InternalErrorExit)
                    and ex.suberror == uapi.KVM_INTERNAL_ERROR_EMULATION
                    and vcpu.get_regs().rip == _CODE):
                return True, "KVM_EXIT_INTERNAL_ERROR (emulation) at the INT3"
            return False, f"the INT3 gave {seen}"
        if isinstance(ex, DebugExit) and ex.exception == 1 and ex.dr6 & 1 \
                and ex.pc == _CODE + 1 + moffs:
            return True, "KVM_EXIT_DEBUG (#DB, DR6.B0) after the write"
        return False, f"the watched write gave {seen}"
