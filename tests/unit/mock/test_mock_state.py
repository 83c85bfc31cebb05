"""State ioctls: SREGS validation, FPU/XSAVE/XCRS, debug registers, MP state, events,
MSRs, CPUID, TSC frequency, closed objects."""

from __future__ import annotations

import ctypes
import errno

import pytest

from kvmcpu import uapi
from kvmcpu.errors import ClosedError, KvmIoctlError


def _einval(fn) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KvmIoctlError) as ei:
        fn()
    assert ei.value.errno == errno.EINVAL


def test_set_sregs_validation_keeps_old_state(m) -> None:  # type: ignore[no-untyped-def]
    v = m.vcpu
    v.set_long_mode(0x1000)
    good = v.get_sregs()
    for change in ({"cr0": 0x80000000}, {"cr4": 1 << 30}, {"efer": 0x400, "cr0": 0x11},
                   {"efer": 0x100, "cr4": 0}):
        s = v.get_sregs()
        for k, val in change.items():
            setattr(s, k, val)
        _einval(lambda s=s: v.set_sregs(s))
        assert bytes(v.get_sregs()) == bytes(good)


def test_fpu_xsave_xcrs_roundtrip(m) -> None:  # type: ignore[no-untyped-def]
    v = m.vcpu
    f = v.get_fpu()
    assert f.fcw == 0x37F and f.mxcsr == 0x1F80
    f.fcw = 0x27F
    f.xmm[3][0] = 0xAB
    v.set_fpu(f)
    x = v.get_xsave()
    raw = bytes(x)
    assert raw[0:2] == b"\x7f\x02" and raw[160 + 48] == 0xAB
    assert int.from_bytes(raw[512:520], "little") & 3 == 3  # XSTATE_BV: x87 + SSE
    v.set_xsave(x)
    assert v.get_fpu().xmm[3][0] == 0xAB
    xc = v.get_xcrs()
    assert xc.nr_xcrs == 1 and xc.xcrs[0].value == 1
    xc.xcrs[0].value = 0x3
    _einval(lambda: v.set_xcrs(xc))  # as KVM: no CPUID yet, so only x87 is supported
    v.set_cpuid2(m.backend.get_supported_cpuid())
    v.set_xcrs(xc)
    assert v.get_xcrs().xcrs[0].value == 3
    xc.xcrs[0].value = 2  # x87 bit clear
    _einval(lambda: v.set_xcrs(xc))


def test_debugregs_mp_state_events(m) -> None:  # type: ignore[no-untyped-def]
    v = m.vcpu
    d = v.get_debugregs()
    assert d.dr6 == 0xFFFF0FF0 and d.dr7 == 0x400
    d.db[1] = 0x1234
    d.dr7 = 0x401
    v.set_debugregs(d)
    assert v.get_debugregs().db[1] == 0x1234
    d.flags = 1
    _einval(lambda: v.set_debugregs(d))
    assert v.get_mp_state() == uapi.KVM_MP_STATE_RUNNABLE
    v.set_mp_state(uapi.KVM_MP_STATE_HALTED)
    _einval(lambda: v.set_mp_state(uapi.KVM_MP_STATE_INIT_RECEIVED))
    ev = v.get_vcpu_events()
    ev.nmi.pending = 1
    ev.interrupt.injected = 1
    ev.interrupt.nr = 0x31
    ev.flags = uapi.KVM_VCPUEVENT_VALID_NMI_PENDING
    v.set_vcpu_events(ev)
    got = v.get_vcpu_events()
    assert (got.nmi.pending, got.interrupt.injected, got.interrupt.nr) == (1, 1, 0x31)
    assert v.get_sregs().interrupt_bitmap[0] == 1 << 0x31
    ev.flags = 1 << 20
    _einval(lambda: v.set_vcpu_events(ev))


def test_msrs_cpuid_tsc(m) -> None:  # type: ignore[no-untyped-def]
    v, b = m.vcpu, m.backend
    idx = b.get_msr_index_list()
    assert 0xC0000080 in idx and 0x10 in idx and b.get_msr_feature_index_list() == []
    assert v.set_msrs({0xC0000100: 0x7000, 0x174: 8}) == 2
    got = v.get_msrs([0xC0000100, 0x174])
    assert got == {0xC0000100: 0x7000, 0x174: 8}
    assert v.get_sregs().fs.base == 0x7000
    v.set_msrs({0x10: 1_000_000})
    assert abs(v.get_msrs([0x10])[0x10] - 1_000_000) < 10
    cpuid = b.get_supported_cpuid()
    vendor = b"".join(x.to_bytes(4, "little") for x in (cpuid[0].ebx, cpuid[0].edx,
                                                        cpuid[0].ecx))
    assert vendor == {"amd": b"AuthenticAMD", "intel": b"GenuineIntel"}[b.profile.name]
    leaf1 = next(e for e in cpuid if e.function == 1)
    assert not leaf1.edx & (1 << 25) and not leaf1.ecx & 1  # no SSE, no SSE3 advertised
    v.set_cpuid2(cpuid)
    assert [ctypes.string_at(ctypes.addressof(e), 40) for e in v.get_cpuid2()] == \
        [ctypes.string_at(ctypes.addressof(e), 40) for e in cpuid]
    assert v.get_tsc_khz() == 1_000_000
    v.set_tsc_khz(1_000_000)
    _einval(lambda: v.set_tsc_khz(2_000_000))


def test_closed_objects(m) -> None:  # type: ignore[no-untyped-def]
    v = m.vcpu
    v.close()
    v.close()  # idempotent
    with pytest.raises(ClosedError):
        v.run()
    with pytest.raises(ClosedError):
        v.get_regs()
    v.kick()  # a no-op on a closed vCPU
