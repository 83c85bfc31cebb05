"""A real gdb (Debian's package; skipped where it is missing) drives
``kvmcpu run --gdb 127.0.0.1:0 -S`` on the bundled ELF guest debugme: break at a
symbol, continue, registers, memory, set var, stepi, a watchpoint, threads,
detach. The same session gives the same transcript on the mock and on KVM."""

from __future__ import annotations

from typing import Dict

import pytest
from gdb_helpers import gdb_session, needs_gdb

SESSION = [
    "info registers rip",
    "break compute",
    "continue",
    "info registers",
    "x/16bx $rip",
    "x/gx &counter",
    "stepi",
    "stepi",
    "stepi",
    "info registers rip rax",
    "set var *(long *)&counter = 1000",
    "x/gx &counter",
    "delete",
    "watch *(long *)&counter",  # Z2: the stub single-steps and compares
    "continue",
    "delete",
    "info threads",
    "p $mxcsr",
    "detach",
]

_transcripts: Dict[str, str] = {}


def _session(backend: str) -> str:
    return gdb_session(_transcripts, backend, SESSION)


@needs_gdb
@pytest.mark.parametrize("backend", ["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def test_gdb_session(backend: str) -> None:
    out = _session(backend)
    lines = out.splitlines()
    assert "0x0000000000100000 in _start ()" in lines  # -S: stopped before the first one
    assert "Breakpoint 1, 0x0000000000100032 in compute ()" in lines
    regs = {ln.split()[0]: ln.split()[1] for ln in lines if ln[:1].isalpha() and
            len(ln.split()) >= 2 and ln.split()[1].startswith("0x")}
    assert (regs["rip"], regs["rax"]) == ("0x10003c", "0x1")  # three stepi: mov, imul, inc
    assert regs["rsp"] == "0x101048" and regs["cs"] == "0x8" and regs["ss"] == "0x10"
    assert "0x100032 <compute>:\t0x48\t0x89\t0xf8\t0x48\t0x0f\t0xaf\t0xc7\t0x48" in lines
    assert "0x100040 <counter>:\t0x0000000000000000" in lines
    assert "0x100040 <counter>:\t0x00000000000003e8" in lines
    assert "Hardware watchpoint 2: *(long *)&counter" in lines
    assert "Old value = 1000" in lines and "New value = 1001" in lines
    # stopped after the add that changed it
    assert "0x000000000010001b in loop_top ()" in lines
    assert any(ln.startswith("* 1    Thread 1 (CPU#0 [running])") for ln in lines)
    assert "$1 = 8064" in lines  # MXCSR 0x1f80
    assert "[Inferior 1 (Remote target) detached]" in lines
    # Detached at counter = 1001 after compute(0): the guest runs on to 1001 + 147.
    assert lines[-1] == f"status {((1148 & 0x7F) << 1) | 1}"


@needs_gdb
@pytest.mark.kvm
def test_the_same_session_gives_the_same_transcript_on_both_backends() -> None:
    assert _session("mock") == _session("kvm")
