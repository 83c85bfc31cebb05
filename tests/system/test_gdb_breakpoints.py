"""A real gdb with six breakpoints on debugme (more than the four debug
registers): ``break`` (Z0: INT3 patches where the backend delivers them) and
``hbreak`` (Z1: a debug register); the same transcript on the mock and on KVM,
and ``x`` at a breakpoint shows the original bytes."""

from __future__ import annotations

from typing import Dict

import pytest
from gdb_helpers import gdb_session, needs_gdb

#: loop_top's mov, the call, the add after it, inc, cmp, jb; compute by hbreak
BREAKS = ["*0x10000c", "*0x10000f", "*0x100014", "*0x10001b", "*0x10001d", "*0x100020"]
SESSION = [f"break {b}" for b in BREAKS] + ["hbreak compute"] + ["continue"] * 8 + [
    "x/4bx 0x10000c", "info registers rip rbx", "delete", "continue"]

_transcripts: Dict[str, str] = {}


def _session(backend: str) -> str:
    return gdb_session(_transcripts, backend, SESSION)


@needs_gdb
@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_six_breakpoints_and_a_hardware_one(backend: str) -> None:
    lines = _session(backend).splitlines()
    stops = [ln for ln in lines if ln.startswith("Breakpoint ") and ", 0x" in ln]
    assert [s.split(",")[0] for s in stops] == [
        "Breakpoint 1", "Breakpoint 2", "Breakpoint 7", "Breakpoint 3", "Breakpoint 4",
        "Breakpoint 5", "Breakpoint 6", "Breakpoint 1"]
    assert "Hardware assisted breakpoint 7 at 0x100032" in lines
    assert "0x10000c <loop_top>:\t0x48\t0x89\t0xdf\t0xe8" in lines  # mov rdi, rbx; call
    assert any(ln.split()[:2] == ["rbx", "0x1"] for ln in lines)  # round 1 at loop_top
    assert "[Inferior 1 (Remote target) exited with code 051]" in lines
    assert lines[-1] == "status 41"


@needs_gdb
@pytest.mark.kvm
def test_the_breakpoint_session_is_the_same_on_both_backends() -> None:
    assert _session("mock") == _session("kvm")
