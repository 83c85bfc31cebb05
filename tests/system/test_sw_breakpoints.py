"""Software breakpoints (INT3 patched into guest memory) on debugme: PC events
at more addresses than the four debug registers on KVM, ``software=True`` on
both backends; the patches hidden from the System's memory API (the guest
itself sees 0xCC), out of checkpoints and CPU switches, and kept when the
memory under them is written. Where the backend does not deliver INT3 exits
in the guest's mode (the probe, kvmcpu.cpu.kvm.debug_probe) it refuses, naming
what the probe saw. Addresses as in test_pc_events.py."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import pytest

import kvmcpu
from kvmcpu.backends import get_backend
from kvmcpu.cpu.kvm import debug_probe
from kvmcpu.errors import DebugUnsupportedError
from kvmcpu.gdb.target import SystemTarget
from kvmcpu.sim.eventq import exit_sim_loop
from kvmcpu.system import System

AFTER_CALL, FINISH, COMPUTE, STATUS = 0x100014, 0x100022, 0x100032, 41
LOOP_PCS = [0x10000C, 0x10000F, 0x100014, 0x10001B, 0x10001D, 0x100020,
            0x100032, 0x100035, 0x100039, 0x10003C]
ORDER = (LOOP_PCS[:2] + LOOP_PCS[6:] + LOOP_PCS[2:6]) * 8
both = pytest.mark.parametrize("backend_name", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])


def _delivered(backend: str) -> bool:
    with get_backend(backend) as b:
        return debug_probe.probe(b, debug_probe.SOFTWARE, "long cpl0")[0]


def _system(make_system: Callable[..., System], backend: str) -> System:
    if not _delivered(backend):
        pytest.skip(f"{backend} does not deliver INT3 exits to a 64-bit CPL0 guest here")
    s = make_system("16M", backend=backend)
    s.load(kvmcpu.guests.path("debugme"))
    return s


@pytest.mark.kvm
def test_kvm_watches_ten_addresses_with_four_registers_and_six_int3(
        make_system: Callable[..., System]) -> None:
    s = _system(make_system, "kvm")
    hits: List[int] = []
    for pc in LOOP_PCS:
        s.schedule_pc_event(pc, lambda tc: hits.append(tc.rip))
    assert s.run(timeout=120).status == STATUS
    assert hits == ORDER


@both
def test_software_events_are_exact_and_hidden_from_the_memory_api(
        backend_name: str, make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    original = bytes(s.physmem.read(COMPUTE, 4))
    hits: List[int] = []
    for pc in LOOP_PCS[:6]:
        s.schedule_pc_event(pc, lambda tc: hits.append(tc.rip), software=True)
    seen: List[bytes] = []

    def look(tc: object) -> None:
        if seen:
            return
        seen.append(bytes(s.physmem.read(LOOP_PCS[0], 1)))  # the System's view
        seen.append(s.vm.vm.read_guest(LOOP_PCS[0], 1))  # what the guest reads
        exit_sim_loop("looked", 0, queue=s.eventq)

    s.schedule_pc_event(COMPUTE, look, software=True)
    assert s.run(timeout=120).cause == "looked"
    assert seen == [b"\x48", b"\xcc"]
    target = SystemTarget(s)  # the GDB stub's reads: the original bytes too
    assert target.read_memory(COMPUTE, 4) == original == bytes.fromhex("4889f848")
    assert s.run(timeout=120).status == STATUS
    assert hits == [pc for pc in ORDER if pc in LOOP_PCS[:6]]


@both
def test_checkpoints_hold_no_int3(backend_name: str, tmp_path: Path,
                                  make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    hits: List[int] = []

    def third(tc: object) -> None:
        hits.append(1)
        if len(hits) == 3:
            exit_sim_loop("third", 0, queue=s.eventq)

    s.schedule_pc_event(COMPUTE, third, software=True)
    s.schedule_pc_event(FINISH, lambda tc: hits.append(2), software=True)
    assert s.run(timeout=120).cause == "third"
    assert s.vm.vm.read_guest(FINISH, 1) == b"\xcc"
    s.checkpoint(tmp_path / "cpt")
    assert s.vm.vm.read_guest(FINISH, 1) == b"\x48"  # out while drained
    restored = System.restore(tmp_path / "cpt", backend=backend_name)
    try:
        assert restored.vm.vm.read_guest(COMPUTE, 1) == b"\x48"
        assert restored.vm.vm.read_guest(FINISH, 1) == b"\x48"
        assert restored.run(timeout=120).status == STATUS  # no stray INT3 to trip on
    finally:
        restored.close()
    assert s.run(timeout=120).status == STATUS
    assert hits == [1] * 8 + [2]


@both
def test_writes_under_a_patch(backend_name: str, make_system: Callable[..., System]) -> None:
    s = _system(make_system, backend_name)
    hits: List[str] = []

    def at_compute(tc: object) -> None:
        hits.append("compute")
        if hits.count("compute") == 1:
            # something writes RAM behind the System's back (as the guest would): the
            # INT3 at finish is gone; the next exit patches it in again
            s.vm.vm.write_guest(FINISH, b"\x48")
            # a write through the System's API at a patch: the original changes (REX.W
            # 0x48 -> REX.WR 0x4c: add [counter], r8, and r8 is 0), the INT3 stays
            s.physmem.write(AFTER_CALL, b"\x4c")
            exit_sim_loop("written", 0, queue=s.eventq)

    s.schedule_pc_event(COMPUTE, at_compute, software=True)
    s.schedule_pc_event(AFTER_CALL, lambda tc: hits.append("add"), software=True)
    s.schedule_pc_event(FINISH, lambda tc: hits.append("finish"), software=True)
    assert s.run(timeout=120).cause == "written"
    assert s.vm.vm.read_guest(AFTER_CALL, 2) == b"\xcc\x01"
    assert s.physmem.read(AFTER_CALL, 2) == b"\x4c\x01"
    assert s.vm.vm.read_guest(FINISH, 1) == b"\x48"
    assert s.run(timeout=120).status == 1  # counter stayed 0: (0 << 1) | 1
    assert s.vm.vm.read_guest(FINISH, 1) == b"\xcc"
    assert hits == ["compute", "add"] * 8 + ["finish"]


@pytest.mark.parametrize("first, second", [
    ("mock", "mock"), pytest.param("kvm", "mock", marks=pytest.mark.kvm),
    pytest.param("mock", "kvm", marks=pytest.mark.kvm)])
def test_software_events_move_on_a_cpu_switch(first: str, second: str,
                                              make_system: Callable[..., System]) -> None:
    s = _system(make_system, first)
    if not _delivered(second):
        pytest.skip(f"{second} does not deliver INT3 exits here")
    hits: List[str] = []

    def record(tc: object) -> None:
        hits.append(s.backend.name)
        if len(hits) == 3:
            exit_sim_loop("switch", 0, queue=s.eventq)

    s.schedule_pc_event(COMPUTE, record, software=True)
    assert s.run(timeout=120).cause == "switch"
    old_vm = s.vm.vm
    s.switch_cpu(second)
    del old_vm
    assert s.run(timeout=120).status == STATUS
    assert hits == [first] * 3 + [second] * 5


@pytest.mark.kvm
def test_kvm_refuses_where_int3_is_not_delivered(make_system: Callable[..., System]) -> None:
    with get_backend("kvm") as b:
        works, seen = debug_probe.probe(b, debug_probe.SOFTWARE, "long cpl0")
    s = make_system("16M", backend="kvm")
    s.load(kvmcpu.guests.path("debugme"))
    for pc in LOOP_PCS[:4]:
        s.schedule_pc_event(pc, lambda tc: None)
    if works:
        s.schedule_pc_event(LOOP_PCS[4], lambda tc: None)  # the fifth: an INT3
        assert len(s.cpu.pc_events()) == 5
        return
    with pytest.raises(DebugUnsupportedError, match=r"5th hardware address.*4 hardware "
                                                    r"breakpoints \(DR0-DR3\).*probe"):
        s.schedule_pc_event(LOOP_PCS[4], lambda tc: None)
    assert s.run(timeout=120).status == STATUS


INT3_GUEST = Path(__file__).resolve().parents[2] / "guests" / "int3.bin"
#: guests/int3.asm: three INT3 at 0x10014c-0x10014e, then after_bps
GUEST_INT3S, AFTER_BPS = [0x10014C, 0x10014D, 0x10014E], 0x10014F


@both
@pytest.mark.parametrize("where", ["after", "on an int3"])
def test_the_guests_own_int3_still_reaches_the_guest(
        backend_name: str, where: str, make_system: Callable[..., System]) -> None:
    # USE_SW_BP makes every #BP an exit: those at no patch of ours go back to the
    # guest (its handler counts them: 3 -> status 7); ours fire as usual, also at an
    # address that holds the guest's own INT3
    if not _delivered(backend_name):
        pytest.skip(f"{backend_name} does not deliver INT3 exits to a 64-bit CPL0 guest here")
    s = make_system("16M", backend=backend_name)
    s.load(str(INT3_GUEST))
    hits: List[int] = []
    addr = AFTER_BPS if where == "after" else GUEST_INT3S[1]
    s.schedule_pc_event(addr, lambda tc: hits.append(tc.linear_rip()), software=True)
    assert s.run(timeout=120).status == 7
    assert hits == [addr]
