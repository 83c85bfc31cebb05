"""INIT and STARTUP IPIs (X86KvmCPU.post_init / post_sipi), on the mock and on KVM."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from cpu_rig import CpuRig, Recorder

from kvmcpu.cpu.kvm import ThreadStatus
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut, write_checkpoint
from kvmcpu.sim.eventq import exit_sim_loop
from kvmcpu.uapi import KVM_MP_STATE_INIT_RECEIVED, KVM_MP_STATE_RUNNABLE

LOOP_PORT = 0x80
SIPI_PORT = 0x90
VECTOR = 0x02  # the SIPI starts the thread at 0x2000
#: Real mode at 0x2000: mov dx, 0x90; mov al, 'S'; out dx, al; hlt
AP_CODE = bytes.fromhex("ba9000b053eef4")


class IniterAt(Recorder):
    """Records writes and sends the CPU an INIT on write ``at``."""

    def __init__(self, rig: CpuRig, at: int) -> None:
        super().__init__(rig.queue)
        self.rig, self.at = rig, at

    def write(self, offset: int, size: int, value: int) -> None:
        super().write(offset, size, value)
        if len(self.log) == self.at:
            self.rig.cpu.post_init()


def init_rig(make_rig: Any, backend: str) -> CpuRig:
    """out_loop writing 'L' to LOOP_PORT; the third write INITs the CPU."""
    rig: CpuRig = make_rig(backend, "out_loop")
    rig.cpu.tc.rdx, rig.cpu.tc.rax = LOOP_PORT, ord("L")
    rig.ram[VECTOR << 12:(VECTOR << 12) + len(AP_CODE)] = AP_CODE
    rig.io.add(LOOP_PORT, 1, IniterAt(rig, 3))
    rig.io.add(SIPI_PORT, 1, Recorder(rig.queue))
    return rig.start()


def test_init_resets_to_the_sdm_init_state_and_waits_for_a_sipi(
        make_rig: Any, backend_name: str) -> None:
    rig = init_rig(make_rig, backend_name)
    cpu = rig.cpu
    # 1 s of simulated time: on KVM simulated time is host time, and three OUT exits can
    # take more than a millisecond on a loaded host; once suspended the CPU costs nothing.
    rig.simulate(10**12)
    loop = rig.io.device_at(LOOP_PORT)
    assert len(loop.log) == 3  # nothing ran after the INIT
    assert cpu.wait_for_sipi and cpu.thread_status is ThreadStatus.Suspended
    cpu.wakeup()  # an interrupt line does not start a thread waiting for a SIPI
    rig.simulate(10**12)
    assert len(loop.log) == 3 and cpu.wait_for_sipi
    tc = cpu.getContext()
    assert (tc.cs.selector, tc.cs.base, tc.cs.limit, tc.rip) == (0xF000, 0xFFFF0000, 0xFFFF,
                                                                 0xFFF0)
    signature = next(e.eax for e in tc.cpuid if e.function == 1 and e.index == 0)
    assert tc.rdx == signature and tc.rax == 0 and tc.rsp == 0 and tc.rflags == 0x2
    assert tc.cr0 & 0x8000_0001 == 0 and tc.cr0 & 0x10 and tc.efer == 0 and tc.cr4 == 0
    assert (tc.gdt.base, tc.gdt.limit, tc.idt.base, tc.idt.limit) == (0, 0xFFFF, 0, 0xFFFF)
    assert (tc.ds.selector, tc.ds.base, tc.ds.limit) == (0, 0, 0xFFFF)
    assert (tc.dr6, tc.dr7) == (0xFFFF0FF0, 0x400)
    assert tc.mp_state == KVM_MP_STATE_INIT_RECEIVED


def test_sipi_starts_the_thread_at_vector_times_4k(make_rig: Any, backend_name: str) -> None:
    rig = init_rig(make_rig, backend_name)
    cpu = rig.cpu
    rig.simulate(10**12)
    cpu.post_sipi(VECTOR)
    assert not cpu.wait_for_sipi and cpu.thread_status is ThreadStatus.Active
    tc = cpu.getContext()
    assert (tc.cs.selector, tc.cs.base, tc.rip) == (VECTOR << 8, VECTOR << 12, 0)
    assert tc.mp_state == KVM_MP_STATE_RUNNABLE
    rig.simulate(10**12)
    assert rig.io.device_at(SIPI_PORT).writes() == [(0, 1, ord("S"))]
    assert cpu.thread_status is ThreadStatus.Suspended  # the HLT after the OUT
    assert cpu.getContext().rip == len(AP_CODE)


def test_a_sipi_that_finds_no_init_is_ignored(make_rig: Any, backend_name: str) -> None:
    rig = init_rig(make_rig, backend_name)
    cpu = rig.cpu
    rig.io.device_at(LOOP_PORT).at = 0  # no INIT
    rig.io.device_at(LOOP_PORT).write = lambda o, s, v: exit_sim_loop("w", queue=rig.queue)
    rig.simulate(10**12)
    before = cpu.getContext().copy()
    cpu.post_sipi(VECTOR)
    after = cpu.getContext()
    assert (after.cs.selector, after.rip) == (before.cs.selector, before.rip)
    with pytest.raises(ValueError, match="0-255"):
        cpu.post_sipi(0x100)


def test_waiting_for_a_sipi_survives_a_checkpoint(make_rig: Any, backend_name: str,
                                                  tmp_path: Path) -> None:
    rig = init_rig(make_rig, backend_name)
    rig.simulate(10**12)
    # gem5's rule: serialize a drained system. The limit can fall while the CPU is
    # still servicing an exit (on KVM it depends on host timing).
    rig.root.drain_manager.drain()
    cp = CheckpointOut()
    with cp.scope("cpu"):
        rig.cpu.serialize(cp)
    write_checkpoint(tmp_path / "cpt", cp)
    other = make_rig(backend_name, None)
    other.ram[VECTOR << 12:(VECTOR << 12) + len(AP_CODE)] = AP_CODE
    other.io.add(SIPI_PORT, 1, Recorder(other.queue))
    cin = CheckpointIn.load(tmp_path / "cpt")
    with cin.scope("cpu"):
        other.cpu.unserialize(cin)
    other.root.instantiate()
    assert other.cpu.wait_for_sipi and other.cpu.thread_status is ThreadStatus.Suspended
    other.cpu.post_sipi(VECTOR)
    other.simulate(10**12)
    assert other.io.device_at(SIPI_PORT).writes() == [(0, 1, ord("S"))]
