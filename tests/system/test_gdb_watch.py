"""A real gdb's ``watch``, ``awatch`` and ``rwatch`` on debugme's ``counter``
through ``kvmcpu run --gdb``: Z2/Z4/Z3 as data breakpoints, stops after the
instruction with the address in the stop reply; the same transcript on the mock
and on KVM (where the host delivers data breakpoints; elsewhere skipped with the
probe's finding, and Z3/Z4 answered E01 -- test_gdb_stub checks that)."""

from __future__ import annotations

from typing import Dict

import pytest
from gdb_helpers import data_breakpoints, gdb_session, needs_gdb

SESSION = [
    "watch *(long *)&counter",
    "continue",
    "delete",
    "awatch *(long *)&counter",
    "continue",
    "continue",
    "delete",
    "rwatch *(long *)&counter",
    "continue",
    "info registers rip rax",
    "delete",
    "continue",
]

_transcripts: Dict[str, str] = {}


def _session(backend: str) -> str:
    if not data_breakpoints(backend):
        pytest.skip(f"{backend} does not deliver data breakpoints on this host "
                    "(kvmcpu.cpu.kvm.debug_probe)")
    return gdb_session(_transcripts, backend, SESSION)


@needs_gdb
@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_watch_rwatch_awatch(backend: str) -> None:
    lines = _session(backend).splitlines()
    # watch: after the add of round 0 (counter 0 -> compute(0) = 1), at 0x10001b
    assert lines[lines.index("Old value = 0"):][:3] == [
        "Old value = 0", "New value = 1", "0x000000000010001b in loop_top ()"]
    # awatch: the next two accesses are the adds of rounds 1 and 2 (read and write)
    assert "Hardware access (read/write) watchpoint 2: *(long *)&counter" in lines
    assert lines[lines.index("Old value = 1"):][:3] == [
        "Old value = 1", "New value = 3", "0x000000000010001b in loop_top ()"]
    assert lines[lines.index("Old value = 3"):][:3] == [
        "Old value = 3", "New value = 8", "0x000000000010001b in loop_top ()"]
    # rwatch: the adds change the value (writes); the first pure read is finish's
    # mov rax, [counter], reported after it with the final sum
    assert "Hardware read watchpoint 3: *(long *)&counter" in lines
    assert lines[lines.index("Value = 148"):][:2] == ["Value = 148",
                                                      "0x0000000000100029 in finish ()"]
    assert any(ln.split()[:2] == ["rax", "0x94"] for ln in lines)
    assert "[Inferior 1 (Remote target) exited with code 051]" in lines
    assert lines[-1] == "status 41"


@needs_gdb
@pytest.mark.kvm
def test_the_watch_session_is_the_same_on_both_backends() -> None:
    assert _session("mock") == _session("kvm")
