"""KVM_CAP_SET_GUEST_DEBUG2 (the KVM API doc: the KVM_GUESTDBG_* control bits
KVM_SET_GUEST_DEBUG accepts) on both backends, and the call taking them --
what kvmcpu.cpu.kvm.debug_probe asks before its probe guests. (Whether a bit
outside them is refused is left alone: this host's kernel takes one.)"""

from __future__ import annotations

import pytest

from kvmcpu import uapi
from kvmcpu.backends.base import Backend
from kvmcpu.uapi import Cap

NEEDED = (uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP
          | uapi.KVM_GUESTDBG_USE_SW_BP | uapi.KVM_GUESTDBG_USE_HW_BP)


def test_guest_debug2_lists_the_control_bits_set_guest_debug_takes(backend: Backend) -> None:
    assert backend.check_extension(Cap.SET_GUEST_DEBUG) == 1
    flags = backend.check_extension(Cap.SET_GUEST_DEBUG2)
    if flags == 0:
        pytest.skip("a kernel older than KVM_CAP_SET_GUEST_DEBUG2 (Linux 5.10)")
    assert flags & NEEDED == NEEDED
    unknown = 1 << 23
    assert not flags & unknown
    with backend.create_vm() as vm:
        vm.add_ram(0, 0x10000)
        with vm.create_vcpu(0) as vcpu:
            vcpu.set_guest_debug(NEEDED, [0x1000, 0, 0, 0, 0, 0, 0, 0x701])
            vcpu.set_guest_debug(0)
