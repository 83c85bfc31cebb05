"""Checkpoint mid-run / restore / continue, and CPU switching between backends, through
System: the result must equal an uninterrupted run.

The guest (hand-assembled below, real mode at 0x1000) loops 40 times: it reads
fw_cfg (an OUT, then an IN the host completes), updates a sum it logs in RAM
at 0x3000, prints one letter on COM1 (no polling) and ends with
isa-debug-exit. Both backends run it to the same output, memory and registers.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from kvmcpu.sim.eventq import exit_sim_loop
from kvmcpu.system import System

#: nasm -f bin, org 0x1000:
#:     xor ax, ax / mov ds, ax / xor si, si / mov di, 0x3000 / xor bx, bx
#: .loop:
#:     mov dx, 0x510 / xor ax, ax / out dx, ax      ; fw_cfg: select the signature
#:     mov dx, 0x511 / in al, dx / xor ah, ah       ; 'Q'
#:     add si, ax / add si, bx / mov [di], si / add di, 2
#:     mov ax, si / and al, 0x0f / add al, 'a'
#:     mov dx, 0x3f8 / out dx, al                   ; a letter
#:     inc bx / cmp bx, 40 / jne .loop
#:     mov al, 10 / out dx, al
#:     mov ax, si / mov dx, 0xf4 / out dx, al       ; isa-debug-exit
#:     cli / hlt / jmp $
CODE = bytes.fromhex(
    "31c08ed831f6bf003031dbba100531c0efba1105ec30e401c601de893583c70289f0240f0461baf8"
    "03ee4383fb2875dbb00aee89f0baf400eefaf4ebfe")
OUTPUT = b"bdgkpfmenhcoljiijlochnemfpkgdbaabdgkpfme\n"
CODE_STATUS = ((40 * 0x51 + 780) & 0xFF) << 1 | 1  # (sum & 0xff) << 1 | 1
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip", "rflags")

Result = Dict[str, Any]


@pytest.fixture
def systems() -> Iterator[List[System]]:
    made: List[System] = []
    yield made
    for s in made:
        s.close()


def make(systems: List[System], backend: str, stop_after: int = 0) -> System:
    """A System running the guest; with ``stop_after`` > 0, run() returns (cause
    "pause") each time ``stop_after`` more letters were printed."""
    printed = [0]

    def sink(data: bytes) -> None:
        printed[0] += len(data)
        if stop_after and printed[0] % stop_after == 0:
            exit_sim_loop("pause", 0, queue=s.eventq)

    s = System(memory="2M", backend=backend, unclaimed="ignore", serial=sink)
    systems.append(s)
    s.load(CODE, fmt="flat", load_addr=0x1000, mode="real", entry=0x1000)
    return s


def finish(s: System, output: bytes = b"") -> Result:
    r = s.run(max_seconds=1, timeout=30)
    tc = s.cpu.getContext()
    return {"cause": r.cause, "code": r.code, "output": output + s.serial.output,
            "log": s.physmem.read(0x3000, 80), "gprs": {g: getattr(tc, g) for g in GPRS},
            "tc": tc.copy(), "tick": r.tick}


def reference(systems: List[System], backend: str) -> Result:
    return finish(make(systems, backend))


def test_the_guest_does_the_same_on_both_backends(systems: List[System],
                                                  backend_name: str) -> None:
    ref = reference(systems, backend_name)
    assert (ref["cause"], ref["code"], ref["output"]) == ("isa-debug-exit", CODE_STATUS, OUTPUT)
    assert ref["gprs"]["rip"] == 0x1000 + len(CODE) - 4  # just past the OUT to 0xf4
    stats = systems[-1].cpu.stats
    assert stats.numIO.value == 3 * 40 + 2


def checkpoint_mid_run(systems: List[System], backend: str,
                       tmp_path: Path) -> Tuple[Path, bytes]:
    s = make(systems, backend, stop_after=15)
    r = s.run(max_seconds=1, timeout=30)
    assert r.cause == "pause"
    out = s.serial.output
    assert 0 < len(out) < len(OUTPUT), "the checkpoint must fall in the middle of the run"
    cpt = tmp_path / f"cpt-{backend}"
    s.checkpoint(cpt)
    s.close()
    return cpt, out


def test_checkpoint_restore_continue_equals_an_uninterrupted_run_on_the_mock(
        systems: List[System], tmp_path: Path) -> None:
    ref = reference(systems, "mock")
    cpt, first = checkpoint_mid_run(systems, "mock", tmp_path)
    restored = System.restore(cpt, backend="mock")
    systems.append(restored)
    got = finish(restored, first)
    # Exactly: output, memory, every register and piece of state in the TC.
    assert got["tc"].diff(ref["tc"]) == []
    for key in ("cause", "code", "output", "log", "gprs"):
        assert got[key] == ref[key], key


@pytest.mark.kvm
@pytest.mark.parametrize("writer,reader", [("kvm", "kvm"), ("kvm", "mock"), ("mock", "kvm")])
def test_checkpoint_on_one_backend_restore_on_another(systems: List[System], tmp_path: Path,
                                                      writer: str, reader: str) -> None:
    ref = reference(systems, writer)
    cpt, first = checkpoint_mid_run(systems, writer, tmp_path)
    restored = System.restore(cpt, backend=reader)
    systems.append(restored)
    assert restored.backend.name == reader
    got = finish(restored, first)
    for key in ("cause", "code", "output", "log", "gprs"):
        assert got[key] == ref[key], key


# --------------------------------------------------------------------------- switching
def switched_run(systems: List[System], first: str, second: str) -> Tuple[Result, List[str]]:
    """Run on ``first`` for 12 letters, on ``second`` for 12, then on ``first`` to the end."""
    s = make(systems, first, stop_after=12)
    assert s.run(max_seconds=1, timeout=30).cause == "pause"
    backends = [s.backend.name]
    old_cpu = s.cpu
    new_cpu = s.switch_cpu(second)
    assert new_cpu is s.cpu and new_cpu is not old_cpu
    assert old_cpu.vcpu is None and old_cpu.switched_out  # closed
    assert s.find("cpu0") is new_cpu and s.find("kvm_vm") is new_cpu.vm
    backends.append(s.backend.name)
    assert s.run(max_seconds=1, timeout=30).cause == "pause"
    assert len(s.serial.output) == 24
    s.switch_cpu(first)
    backends.append(s.backend.name)
    while True:
        result = finish(s)
        if result["cause"] != "pause":
            return result, backends


def test_switching_mock_cpus_keeps_the_run_exact(systems: List[System]) -> None:
    ref = reference(systems, "mock")
    got, backends = switched_run(systems, "mock", "mock")
    assert backends == ["mock", "mock", "mock"]
    assert got["tc"].diff(ref["tc"]) == []
    for key in ("cause", "code", "output", "log", "gprs"):
        assert got[key] == ref[key], key
    # The stats kept their names and their counts across the switches.
    stats = systems[-1].cpu.stats
    assert stats.numIO.value == 3 * 40 + 2
    text = systems[-1].stats.format_text()
    assert "system.cpu0.numIO" in text and "system.cpu0.numVMExits" in text


@pytest.mark.kvm
def test_switch_from_kvm_to_the_mock_and_back(systems: List[System]) -> None:
    ref = reference(systems, "kvm")
    got, backends = switched_run(systems, "kvm", "mock")
    assert backends == ["kvm", "mock", "kvm"]
    for key in ("cause", "code", "output", "log", "gprs"):
        assert got[key] == ref[key], key


def test_checkpoint_after_a_switch_restores(systems: List[System], tmp_path: Path) -> None:
    ref = reference(systems, "mock")
    s = make(systems, "mock", stop_after=10)
    s.run(max_seconds=1)
    s.switch_cpu("mock")
    s.run(max_seconds=1)
    first = s.serial.output
    assert len(first) == 20
    s.checkpoint(tmp_path / "cpt")
    restored = System.restore(tmp_path / "cpt", backend="mock")
    systems.append(restored)
    got = finish(restored, first)
    assert got["output"] == ref["output"] and got["gprs"] == ref["gprs"]
