"""``stepi`` over HLT with a real gdb on guests/hltstep.bin (three HLTs at fixed
addresses), on the mock and on KVM: as QEMU's gdbstub with KVM does (measured on
this host with ``qemu-system-x86_64 -accel kvm -s -S``, both with its in-kernel
irqchip and with ``kernel-irqchip=off``), the step ends at once at the
instruction after the HLT, takes no interrupt, and the CPU does not halt:

* ``hlt_irq`` (IF=1, nothing pending): after the step RIP is 0x100402 and the
  PIT's interrupt has not run (ticks 0);
* ``hlt_pending`` (IF=1, IRQ 0 pending): RIP 0x100429, ticks still 0 (the
  first HLT did not halt, and the guest ran on with interrupts off); the
  pending interrupt is taken after the step, before the CLI there;
* ``hlt_none`` (IF=0, every IRQ masked: nothing could wake it): RIP 0x100439,
  and the guest goes on to its exit (the tick count, 1: status 3).

The transcripts are the same on both backends."""

from __future__ import annotations

from typing import Dict

import pytest
from gdb_helpers import ROOT, gdb_session, needs_gdb

HLTSTEP = ROOT / "guests" / "hltstep.bin"
TICKS = "0x100472"
SESSION = [
    "break *0x100401", "continue", f"x/gx {TICKS}", "stepi", "p/x $pc", f"x/gx {TICKS}",
    "delete", "break *0x100428", "continue", f"x/gx {TICKS}", "stepi", "p/x $pc",
    f"x/gx {TICKS}", "delete", "break *0x100438", "continue", "stepi", "p/x $pc",
    "delete", "continue",
]
_transcripts: Dict[str, str] = {}


def _session(backend: str) -> str:
    return gdb_session(_transcripts, backend, SESSION, HLTSTEP)


@needs_gdb
@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_stepi_over_hlt_ends_after_it_at_once(backend: str) -> None:
    out = _session(backend)
    lines = out.splitlines()
    pcs = [ln for ln in lines if ln.startswith("$")]
    assert [p.split(" = ")[1] for p in pcs] == ["0x100402", "0x100429", "0x100439"], out
    ticks = [ln.split(":")[1].strip() for ln in lines if ln.startswith(TICKS)]
    # at hlt_irq, after its step, at hlt_pending, after its step: no interrupt yet
    assert ticks == ["0x0000000000000000"] * 4, out
    assert "[Inferior 1 (Remote target) exited with code 03]" in lines, out
    assert lines[-1] == "status 3"


@needs_gdb
@pytest.mark.kvm
def test_the_hlt_session_is_the_same_on_both_backends() -> None:
    assert _session("mock") == _session("kvm")


@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
@pytest.mark.parametrize("software", [False, True])
def test_resuming_from_a_pc_event_at_a_hlt_halts_there(backend: str, software: bool) -> None:
    """The step over a breakpoint at hlt_irq is kvmcpu's own: the HLT still halts
    until the PIT's interrupt (ticks 1 at hlt_pending), on KVM too, where the step's
    debug exit comes in the halt's place."""
    from kvmcpu.sim.eventq import exit_sim_loop
    from kvmcpu.system import System

    with System(memory="32M", backend=backend) as s:
        s.load(HLTSTEP)
        seen = []

        def stop(tc: object) -> None:
            seen.append((s.cpu.getContext().rip,
                         int.from_bytes(bytes(s.physmem.read(0x100472, 8)), "little")))
            exit_sim_loop("stop", 0, queue=s.eventq)

        first = s.cpu.schedule_pc_event(0x100401, stop, software=software)
        assert s.run(timeout=60).cause == "stop"
        first.remove()
        s.cpu.schedule_pc_event(0x100428, stop, software=software)
        assert s.run(timeout=60).cause == "stop"
        assert seen == [(0x100401, 0), (0x100428, 1)]
