"""The mock against real KVM: guest programs and random programs give the same exits
and the same final architectural state on both backends."""

from __future__ import annotations

import random
import re
from typing import Any, Dict, List, Tuple

import deviations
import pytest
from diffkit import REG_NAMES, compare, host_mock, run_backend
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from x86enc import random_program

from kvmcpu import uapi
from kvmcpu.backends.base import Backend, Vcpu

pytestmark = pytest.mark.kvm

@pytest.fixture(scope="module")
def backends(kvm_backend: Backend) -> Any:
    m = host_mock()
    yield kvm_backend, m
    m.close()


@pytest.fixture(scope="module")
def cpl0_excluded(backends: Any) -> List["re.Pattern[str]"]:
    """The instruction patterns of the probed deviations present on this host at CPL0."""
    return deviations.present_patterns(*backends, cpl=0)


def _inputs(rng: random.Random) -> Tuple[Dict[str, int], int, bytes]:
    regs = {n: rng.getrandbits(rng.choice([8, 32, 64])) for n in REG_NAMES}
    return regs, rng.getrandbits(12) & 0x8D5, bytes(rng.getrandbits(8) for _ in range(256))


def _both(backends: Any, body: bytes, cpl: int, rng: random.Random) -> None:
    k, m = backends
    regs, flags, buf = _inputs(rng)
    a = run_backend(k, body, regs, flags, buf, cpl=cpl)
    b = run_backend(m, body, regs, flags, buf, cpl=cpl)
    assert a[3] == b[3], body.hex()
    diffs = compare(a[:3], b[:3])
    assert not diffs, f"cpl{cpl} {body.hex()}: {diffs}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_programs_cpl3(backends: Any, seed: int) -> None:
    rng = random.Random(seed)
    _both(backends, b"".join(random_program(rng, 8)), 3, rng)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_programs_cpl0(backends: Any, cpl0_excluded: Any, seed: int) -> None:
    rng = random.Random(seed)
    _both(backends, deviations.program(rng, 8, cpl0_excluded), 0, rng)


@pytest.mark.slow
@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 30))
def test_random_programs_long(backends: Any, cpl0_excluded: Any, seed: int,
                              length: int) -> None:
    """KVMCPU_LONG=1: many more programs, CPL3 and CPL0 (minus the present deviations)."""
    rng = random.Random(seed)
    if seed & 1:
        _both(backends, b"".join(random_program(rng, length)), 3, rng)
    else:
        _both(backends, deviations.program(rng, length, cpl0_excluded), 0, rng)


PROBED = [r for r in deviations.load() if "probe" in r]


@pytest.mark.parametrize("row", PROBED, ids=[r["id"] for r in PROBED])
def test_probed_deviation_is_the_hosts(backends: Any, row: Dict[str, Any]) -> None:
    """Where a probed deviation shows, it is KVM's emulator that deviates: the same probe
    run natively (CPL3 on KVM) gives exactly what the mock gives."""
    k, m = backends
    if not deviations.present(k, m, row):
        pytest.skip(f"{row['id']}: not present on this host (its KVM agrees with the mock)")
    p = row["probe"]
    code = bytes.fromhex(p["code"])
    native = run_backend(k, code, p.get("regs", {}), p.get("flags", 0), bytes(16), cpl=3)
    mock = run_backend(m, code, p.get("regs", {}), p.get("flags", 0), bytes(16), cpl=3)
    assert native[3] == mock[3]
    assert not compare(native[:3], mock[:3])


def test_deviation_page_is_generated() -> None:
    """HOST_DEVIATIONS.md is the rendering of host_deviations.json."""
    assert deviations.PAGE.read_text() == deviations.render(deviations.load()), \
        "run: python tests/differential/deviations.py --write"


# -- guest programs -----------------------------------------------------------------------
def _sregs_fields(s: uapi.kvm_sregs) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"):
        seg = getattr(s, name)
        for f in ("base", "limit", "selector", "type", "present", "dpl", "db", "s", "l", "g"):
            out[f"{name}.{f}"] = getattr(seg, f)
    for name in ("cr0", "cr3", "cr4", "efer"):
        out[name] = getattr(s, name)
    out["gdt"] = (s.gdt.base, s.gdt.limit)
    out["idt"] = (s.idt.base, s.idt.limit)
    return out


def _regs_fields(v: Vcpu) -> Dict[str, int]:
    r = v.get_regs()
    return {n: getattr(r, n) for n in REG_NAMES + ("rip", "rflags")}


def _drive(v: Vcpu, limit: int = 40) -> List[Tuple[str, Dict[str, Any]]]:
    out = []
    for _ in range(limit):
        ex = v.run()
        if ex.kind == "io" and not ex.is_write:  # type: ignore[attr-defined]
            ex.data[:] = b"\x5a" * len(ex.data)  # type: ignore[attr-defined]
        if ex.kind == "mmio" and not ex.is_write:  # type: ignore[attr-defined]
            ex.data[:] = b"\x01\x02\x03\x04\x05\x06\x07\x08"[:len(ex.data)]  # type: ignore
        out.append((ex.kind, ex.fields()))
        if ex.kind in ("hlt", "shutdown", "internal_error") or (
                ex.kind == "io" and ex.port == 0x3FF):  # type: ignore[attr-defined]
            # complete the last exit the KVM way (a half entry) before reading the state
            v.immediate_exit = True
            v.run()
            v.immediate_exit = False
            break
    return out


def _run_guest(b: Backend, name: str, mode: str) -> Tuple[Any, ...]:
    from guests import setup_long, setup_real

    with b.create_vm() as vm:
        if name == "coalesced":
            vm.register_coalesced_mmio(0x40000, 0x1000)
        if name == "ro_write":
            vm.add_ram(0x30000, 0x1000, flags=uapi.KVM_MEM_READONLY)[0x10:0x11] = b"\x42"
        if name == "dirty":
            vm.add_ram(0x10000, 0x10000, flags=uapi.KVM_MEM_LOG_DIRTY_PAGES)
        if mode == "real":
            ram, v = setup_real(vm, name)
        else:
            ram, v = setup_long(vm, name, cpl=0 if mode == "long0" else 3)
        try:
            v.immediate_exit = False
            exits = _drive(v)
            ring = [(e.phys_addr, e.data) for e in v.drain_coalesced_mmio()]
            logged = [s.slot for s in vm.slots.values() if s.flags & uapi.KVM_MEM_LOG_DIRTY_PAGES]
            dirty = vm.dirty_pages(logged[0]) if logged else []
            return exits, _regs_fields(v), _sregs_fields(v.get_sregs()), ring, dirty
        finally:
            v.close()


GUESTS = [("io_real", "real"), ("io_long", "long0"), ("io_long", "long3"),
          ("rep_outsb", "real"), ("ro_write", "real"), ("coalesced", "real"), ("dirty", "real")]


@pytest.mark.parametrize("name,mode", GUESTS)
def test_guest_programs(backends: Any, name: str, mode: str) -> None:
    k, m = backends
    a = _run_guest(k, name, mode)
    b = _run_guest(m, name, mode)
    assert a[0] == b[0], "exit sequences differ"
    if mode == "long3":  # pvm reads IOPL back as 0 after running at CPL3 (HOST_DEVIATIONS.md)
        a[1]["rflags"] &= ~0x3000
        b[1]["rflags"] &= ~0x3000
    assert a[1] == b[1], "registers differ"
    diff = {f: (a[2][f], b[2][f]) for f in a[2] if a[2][f] != b[2][f]}
    assert not diff, f"sregs differ: {diff}"
    assert a[3] == b[3] and a[4] == b[4]


def _bootable_guests() -> List[Any]:
    """Every bootable guest shipped with the package (kvmcpu.guests): new images are
    compared automatically. sieve3 (a long compute kernel) is slow here."""
    import kvmcpu.guests

    names = kvmcpu.guests.names()
    if not names:
        raise RuntimeError("kvmcpu.guests ships no bootable guest")
    return [pytest.param(n, marks=[pytest.mark.slow] if n == "sieve3" else [])
            for n in names]


SYSTEM_GUESTS = _bootable_guests()


@pytest.mark.parametrize("name", SYSTEM_GUESTS)
def test_system_guests(name: str) -> None:
    """Whole machines (devices, loaders, the CPU model): same serial output and exit."""
    import kvmcpu.guests
    from kvmcpu.system import System

    results = []
    for be in ("kvm", "mock"):
        with System(memory="64M", backend=be) as s:
            s.load(kvmcpu.guests.path(name))
            r = s.run(max_seconds=60, timeout=120)
            results.append((r.cause, r.code, s.serial.output))
    assert results[0] == results[1]


def _loop_guest(b: Backend, name: str, mode: str) -> List[Tuple[str, Dict[str, Any]]]:
    from guests import setup_long, setup_real

    with b.create_vm() as vm:
        if mode == "real":
            _, v = setup_real(vm, name)
        else:
            _, v = setup_long(vm, name, cpl=3, entry=0x2000)
        try:
            r = v.get_regs()
            r.rdx, r.rax = 0x80, 0x41
            v.set_regs(r)
            out = []
            if name == "out_loop":
                for _ in range(5):
                    ex = v.run()
                    out.append((ex.kind, ex.fields()))
            else:  # spin: only immediate_exit (or a kick) gets the vCPU back
                v.immediate_exit = True
                ex = v.run()
                out.append((ex.kind, ex.fields()))
                v.immediate_exit = False
                import threading

                t = threading.Timer(0.05, v.kick)
                t.start()
                ex = v.run()
                t.join()
                out.append((ex.kind, ex.fields()))
            out.append(("rip", {"rip": v.get_regs().rip}))
            return out
        finally:
            v.close()


@pytest.mark.parametrize("name,mode", [("out_loop", "real"), ("out_loop", "long3"),
                                       ("spin", "real"), ("spin", "long3")])
def test_loop_guests(backends: Any, name: str, mode: str) -> None:
    k, m = backends
    assert _loop_guest(k, name, mode) == _loop_guest(m, name, mode)


EXCEPTIONS_PROGRAM = """
    GATE 0, de
    GATE 6, udh
    GATE 13, gph
    GATE 14, pfh
    lidt [rel idtr]
    xor ecx, ecx
    div ecx                 ; #DE
    ud2                     ; #UD
    mov rax, 0x8000000000000000
    mov rax, [rax]          ; non-canonical: #GP(0)
    mov rax, 0x40000000
    mov byte [rax], 1       ; beyond the 1 GiB identity map: #PF, error 2
    mov rax, cr2
    out 0x83, eax
    hlt
de:  mov al, 0
     out 0x80, al
     mov rax, [rsp + 8]     ; CS
     out 0x84, eax
     add qword [rsp], 2
     iretq
udh: mov al, 6
     out 0x80, al
     add qword [rsp], 2
     iretq
gph: mov al, 13
     out 0x80, al
     pop rax
     out 0x81, eax
     add qword [rsp], 3
     iretq
pfh: mov al, 14
     out 0x80, al
     pop rax
     out 0x81, eax
     add qword [rsp], 3
     iretq
"""


def test_exceptions_through_the_idt_cpl0(backends: Any) -> None:
    """#DE, #UD, #GP and #PF delivered through a long-mode IDT (the host's emulator
    delivers these correctly at CPL0): same exits, frames, error codes and CR2."""
    from mockasm import asm
    from test_mock_events import LONG_IDT

    code = asm(LONG_IDT + EXCEPTIONS_PROGRAM, 64, 0x100000)
    results = []
    for b in backends:
        with b.create_vm() as vm:
            vm.add_ram(0, 4 << 20)
            vm.write_guest(0x100000, code)
            v = vm.create_vcpu(0)
            try:
                v.set_long_mode(0x100000, rsp=0x200000)
                results.append(_drive(v) + [("regs", _regs_fields(v))])
            finally:
                v.close()
    assert results[0] == results[1]
