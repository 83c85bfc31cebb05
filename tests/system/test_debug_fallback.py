"""Guest debugging across the emulation fallback (kvmcpu/cpu/kvm/fallback.py): where
KVM's emulator refuses ``popcnt`` at CPL0 (this host), the mock that runs it is
given the KVM vCPU's KVM_SET_GUEST_DEBUG, so a single step over it ends after it
and a breakpoint inside the fallback's window fires -- as on the mock backend.

guests/fallback.bin (Multiboot, loaded at 1 MiB): ``popcnt rax, rbx`` at
0x10018d (5 bytes), then ``mov [rdi], rax`` at 0x100192 and ``mov rcx, -1`` at
0x100195."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List

import pytest

from kvmcpu.cpu.thread import ThreadContext
from kvmcpu.sim.eventq import exit_sim_loop
from kvmcpu.system import System

GUEST = Path(__file__).resolve().parents[2] / "guests" / "fallback.bin"
POPCNT, NEXT, AFTER = 0x10018D, 0x100192, 0x100195
both = pytest.mark.parametrize("backend_name", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])


@both
def test_a_step_over_an_instruction_the_fallback_runs_ends_after_it(
        backend_name: str, make_system: Callable[..., System]) -> None:
    s = make_system("64M", backend=backend_name)
    s.load(str(GUEST))
    landed: List[int] = []

    def step_end(tc: ThreadContext) -> None:
        landed.append(tc.linear_rip())
        exit_sim_loop("stepped", 0, queue=s.eventq)

    ev = s.schedule_pc_event(POPCNT, lambda tc: s.cpu.request_step(step_end))
    assert s.run(timeout=120).cause == "stepped"
    ev.remove()
    assert landed == [NEXT]
    assert s.cpu.getContext().rax == bin(0x0123456789ABCDEF).count("1")


@both
def test_a_breakpoint_inside_the_fallback_window_fires(
        backend_name: str, make_system: Callable[..., System]) -> None:
    s = make_system("64M", backend=backend_name, cpu_params={"emulationFallbackInsts": 8})
    s.load(str(GUEST))
    hits: List[int] = []

    def at(tc: ThreadContext) -> None:
        hits.append(tc.linear_rip())
        exit_sim_loop("there", 0, queue=s.eventq)

    s.schedule_pc_event(AFTER, at)
    assert s.run(timeout=120).cause == "there"
    assert hits == [AFTER]
    assert s.cpu.getContext().rcx != 0xFFFFFFFFFFFFFFFF  # before the mov rcx, -1
