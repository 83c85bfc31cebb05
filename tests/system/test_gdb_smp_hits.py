"""Two CPUs at one breakpoint in the same slice, with a real gdb on ``--smp 2``
(kvmcpu/guests/smpdebug.bin with ``hold`` set: both CPUs wait for each other in
``meet``, pass ``meet_all``, spin until gdb clears ``hold`` and leave through
``meet_done``, about at once). As QEMU's gdbstub (its vCPU thread that also took
KVM_EXIT_DEBUG stays stopped at the breakpoint and hits it again when resumed),
gdb is told one stop, and the other CPU's hit is reported at the next
``continue``, at the breakpoint (the instruction not run): each CPU is reported
exactly once at each breakpoint, none is lost, and the guest then ends as usual.
On KVM with a host thread per vCPU both CPUs often hit within one slice; which
one is reported first depends on the host's timing, so the order is not
compared."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from gdb_helpers import ROOT, gdb_session, needs_gdb

from kvmcpu.gdb.target import CAUSE_BREAK, CAUSE_STEP

SMPDEBUG = ROOT / "kvmcpu" / "guests" / "smpdebug.bin"
ARGS = {"mock": ("mock",), "kvm-parallel": ("kvm", "--parallel", "on"),
        "kvm-serial": ("kvm", "--parallel", "off")}
SESSION = [
    "set var *(int *)&hold = 1", "break meet_all", "continue", "continue", "delete",
    "set var *(int *)&hold = 0", "break meet_done", "continue", "continue", "delete",
    "print *(int *)&arrived", "continue",
]
_transcripts: Dict[str, str] = {}


def _session(config: str) -> str:
    backend, *extra = ARGS[config]
    return gdb_session(_transcripts, backend, SESSION, SMPDEBUG, "--smp", "2", *extra,
                       key=config)


def _hits(out: str, symbol: str) -> List[str]:
    return [line.split()[1] for line in out.splitlines()
            if line.startswith("Thread ") and f" in {symbol} ()" in line and " hit " in line]


@needs_gdb
@pytest.mark.parametrize("config", ["mock", pytest.param("kvm-parallel", marks=pytest.mark.kvm),
                                    pytest.param("kvm-serial", marks=pytest.mark.kvm)])
def test_both_cpus_are_reported_at_each_breakpoint(config: str) -> None:
    out = _session(config)
    assert sorted(_hits(out, "meet_all")) == ["1", "2"], out
    assert sorted(_hits(out, "meet_done")) == ["1", "2"], out
    assert "$1 = 2" in out  # both CPUs went through meet once
    lines = out.splitlines()
    assert "[Inferior 1 (Remote target) exited with code 051]" in lines, out
    assert lines[-1] == "status 41"


def _target_at_meet_done() -> Any:
    """A SystemTarget of smpdebug on the mock (``--smp 2``) stopped by thread 1's
    breakpoint at meet_done, with thread 2 at meet_done too."""
    from kvmcpu.gdb.target import SystemTarget
    from kvmcpu.system import System

    s = System(memory="64M", backend="mock", smp=2)
    s.load(SMPDEBUG)
    t = SystemTarget(s)
    t.write_memory(s.symbol("hold"), (1).to_bytes(4, "little"))
    t.insert_breakpoint(s.symbol("meet_spin"))
    t.resume(False)
    while t.run_slice() is None:
        pass
    t.remove_breakpoint(s.symbol("meet_spin"))
    done = s.symbol("meet_done")
    for tid in (1, 2):
        t.select(tid)
        t.write_register(16, done.to_bytes(8, "little"))  # p10: rip
    t.insert_breakpoint(done)
    t.resume(False)
    while (r := t.run_slice()) is None:
        pass
    assert r.cause == CAUSE_BREAK and t.stop_thread == 1
    return t


@pytest.mark.parametrize("case", ["resumed", "held", "moved"])
def test_a_hit_in_the_same_slice_is_reported_at_the_next_resume(case: str) -> None:
    """Thread 2's breakpoint callback in the slice thread 1's stop ended (on KVM
    with a host thread per vCPU both fire within one quantum; on the mock the
    second CPU runs only in a later slice, so its callback is called here the way
    its PC event calls it): the next resume that runs thread 2, still at the
    breakpoint, stops at once for it, running nothing; a resume that holds thread 2
    keeps the hit pending; a thread gdb moved meanwhile loses it."""
    t = _target_at_meet_done()
    s = t.system
    try:
        done = s.symbol("meet_done")
        t._stopper(1, CAUSE_BREAK)(t.cpus[1].getContext())  # thread 2's PC event
        assert t.stop_thread == 1  # the stop reply still names thread 1
        tick = s.eventq.cur_tick
        if case == "held":
            t.resume_threads({1: "s"})  # gdb's step over thread 1's breakpoint
            assert t.run_slice().cause == CAUSE_STEP and t.stop_thread == 1
            assert t.cpus[1].getContext().linear_rip() == done
        if case == "moved":
            t.select(2)
            t.write_register(16, s.symbol("meet_spin").to_bytes(8, "little"))
        t.resume(False)
        result = t.run_slice()
        if case == "moved":
            assert t._pending_hits == {}  # dropped: gdb moved thread 2
            assert result is None or result.cause != CAUSE_BREAK or \
                t.cpus[1].getContext().linear_rip() != done
            return
        assert result is not None and result.cause == CAUSE_BREAK and t.stop_thread == 2
        assert t.cpus[1].getContext().linear_rip() == done  # its instruction not run
        if case == "resumed":
            assert s.eventq.cur_tick == tick  # nothing ran
        assert t._pending_hits == {}
    finally:
        s.close()
