"""The System API with tiny inline guests (flat images) on both backends: how runs end,
stats dumps, the unclaimed-access policy, RAM above the PCI hole, m5ops, lifecycle."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from kvmcpu.backends.base import open_objects
from kvmcpu.errors import ConfigError, VcpuRunError
from kvmcpu.mem.bus import UnclaimedAccessError
from kvmcpu.system import (
    CAUSE_HALTED,
    CAUSE_LIMIT,
    CAUSE_M5_EXIT,
    CAUSE_TIMEOUT,
    CAUSE_TRIPLE_FAULT,
    STATUS_TIMEOUT,
    STATUS_TRIPLE_FAULT,
    RunResult,
    System,
)

MakeSystem = Callable[..., System]

# Real mode at 0x7c00 (a flat image's default):
CLI_HLT = bytes.fromhex("fa f4")                        # cli; hlt
SPIN = bytes.fromhex("eb fe")                           # jmp $
OUT_THEN_HLT = bytes.fromhex("b0 2a e6 80 e6 80 fa f4")  # mov al,42; out 0x80,al (x2); cli; hlt
IN_UNCLAIMED = bytes.fromhex("e4 99 f4")                # in al, 0x99; hlt
#: lidt [0x600] (a zero IDT limit: RAM is zeroed), set CR0.PE, ud2: #UD -> #GP -> #DF -> shutdown.
TRIPLE_FAULT = bytes.fromhex("0f011e0006 0f20c0 0c01 0f22c0 0f0b")
#: jmp far 0xf000:0xfff0, outside 64 KiB of RAM: KVM cannot fetch it (internal error).
JUMP_TO_NOWHERE = bytes.fromhex("ea f0 ff 00 f0")
# 32-bit protected mode: m5_dump_stats(0, 0), then m5_fail(0, 7) (code 7).
M5_DUMP_THEN_FAIL = bytes.fromhex(
    "bf00000000 be00000000 a10041ffff"  # mov edi,0; mov esi,0; mov eax,[0xffff0000+(0x41<<8)]
    "bf00000000 be07000000 a10022ffff"  # mov edi,0; mov esi,7; mov eax,[0xffff0000+(0x22<<8)]
    "fa f4"
)


def test_cli_hlt_ends_with_nothing_left_to_run(make_system: MakeSystem,
                                               backend_name: str) -> None:
    system = make_system(memory="1M", backend=backend_name)
    system.load(CLI_HLT, fmt="flat")
    result = system.run(timeout=20)
    assert (result.cause, result.code, result.status) == (CAUSE_HALTED, 0, 0)
    assert system.cpu.stats.numHalt.value == 1


def test_stats_dump_is_gem5_format_and_json(make_system: MakeSystem, backend_name: str,
                                            tmp_path: Path) -> None:
    system = make_system(memory="1M", backend=backend_name)
    system.load(OUT_THEN_HLT, fmt="flat")
    system.run(timeout=20)
    exits = int(system.cpu.stats.numVMExits.value)
    assert exits >= 3 and int(system.cpu.stats.numIO.value) == 2
    txt, js = tmp_path / "stats.txt", tmp_path / "stats.json"
    system.stats.dump(str(txt))
    system.stats.dump_json(str(js))
    lines = txt.read_text().splitlines()
    begin = lines.index("---------- Begin Simulation Statistics ----------")
    end = lines.index("---------- End Simulation Statistics   ----------")
    assert begin < end
    rows = {ln.split()[0]: ln for ln in lines[begin + 1:end] if ln.strip()}
    row = rows["system.cpu0.numVMExits"]
    assert row.split()[1] == str(exits)
    assert "# " in row and "(Count)" in row
    assert "simTicks" in rows and "system.cpu0.numIO" in rows
    doc = json.loads(js.read_text())
    assert doc["stats"]["system.cpu0.numVMExits"]["value"] == exits
    assert doc["tick"] == system.eventq.cur_tick


def test_unclaimed_port_raise_policy(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="1M", backend=backend_name, unclaimed="raise")
    system.load(IN_UNCLAIMED, fmt="flat")
    with pytest.raises(UnclaimedAccessError, match="0x99"):
        system.run(timeout=20)


def test_unclaimed_port_ignore_policy_reads_ones(make_system: MakeSystem,
                                              backend_name: str) -> None:
    system = make_system(memory="1M", backend=backend_name, unclaimed="ignore")
    system.load(IN_UNCLAIMED, fmt="flat")
    result = system.run(timeout=20)
    assert result.cause == CAUSE_HALTED
    assert system.cpu.vcpu is not None
    assert system.cpu.vcpu.get_regs().rax & 0xFF == 0xFF  # an open bus reads all ones


def test_max_seconds_limit(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="1M", backend=backend_name)
    system.load(SPIN, fmt="flat")
    result = system.run(max_seconds=1e-4, timeout=20)
    assert (result.cause, result.status) == (CAUSE_LIMIT, STATUS_TIMEOUT)
    assert result.tick == 100_000_000
    # max_ticks takes precedence and counts from now.
    again = system.run(max_ticks=5_000_000, max_seconds=1.0, timeout=20)
    assert (again.cause, again.tick) == (CAUSE_LIMIT, 105_000_000)


def test_host_timeout(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="1M", backend=backend_name)
    system.load(SPIN, fmt="flat")
    result = system.run(timeout=0.3)
    assert (result.cause, result.status) == (CAUSE_TIMEOUT, STATUS_TIMEOUT)
    # The check follows the host clock on both backends (the mock included).
    assert 0.3 <= result.host_seconds < 1.5


def test_triple_fault(make_system: MakeSystem, backend_name: str) -> None:
    system = make_system(memory="1M", backend=backend_name)
    system.load(TRIPLE_FAULT, fmt="flat")
    result = system.run(timeout=20)
    assert (result.cause, result.status) == (CAUSE_TRIPLE_FAULT, STATUS_TRIPLE_FAULT)


def test_internal_error_raises_vcpu_run_error(make_system: MakeSystem,
                                              backend_name: str) -> None:
    system = make_system(memory="64K", backend=backend_name)
    system.load(JUMP_TO_NOWHERE, fmt="flat")
    with pytest.raises(VcpuRunError, match="internal error") as err:
        system.run(timeout=20)
    assert err.value.exit is not None


def test_m5_dump_stats_and_fail_code(make_system: MakeSystem, backend_name: str,
                                     tmp_path: Path) -> None:
    stats = tmp_path / "stats.txt"
    system = make_system(memory="1M", backend=backend_name, stats_file=str(stats))
    system.load(M5_DUMP_THEN_FAIL, fmt="flat", mode="protected")
    result = system.run(timeout=20)
    assert (result.cause, result.code, result.status) == (CAUSE_M5_EXIT, 7, 7)
    assert stats.read_text().count("Begin Simulation Statistics") == 1
    assert int(system.cpu.stats.numMMIO.value) == 2


def test_m5_dump_stats_without_a_file_writes_nothing(make_system: MakeSystem,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    system = make_system(memory="1M", backend="mock")
    system.load(M5_DUMP_THEN_FAIL, fmt="flat", mode="protected")
    assert system.run(timeout=20).code == 7
    assert list(tmp_path.iterdir()) == []


def test_memory_above_the_pci_hole_is_two_regions(make_system: MakeSystem) -> None:
    system = make_system(memory="4G", backend="mock")  # MAP_NORESERVE: cheap
    regions = [(r.gpa, len(r.host)) for r in system.physmem.regions]
    assert regions == [(0, 3 << 30), (4 << 30, 1 << 30)]
    system.load(CLI_HLT, fmt="flat")
    assert system.run(timeout=20).cause == CAUSE_HALTED
    vm = system.vm.vm  # the slots are registered when the VM starts up
    assert vm.slot_for(0, 3 << 30) is not None
    assert vm.slot_for(4 << 30, 1 << 30) is not None
    assert vm.slot_for(3 << 30) is None  # the hole stays MMIO


def test_config_errors_before_anything_is_opened() -> None:
    before = len(open_objects)
    with pytest.raises(ConfigError, match="at most 8 CPUs"):
        System(memory="1M", backend="mock", smp=9)
    with pytest.raises(ConfigError, match="irqchip"):
        System(memory="1M", backend="mock", irqchip="on")
    with pytest.raises(ConfigError):
        System(memory="1000", backend="mock")
    with pytest.raises(ConfigError):
        System(memory="1M", backend="mock", unclaimed="explode")
    assert len(open_objects) == before


def test_close_is_idempotent_and_context_manager() -> None:
    with System(memory="1M", backend="mock") as system:
        system.load(CLI_HLT, fmt="flat")
        assert isinstance(system.run(timeout=20), RunResult)
    system.close()
    assert system.vm.vm is None or system.vm.vm.closed


def test_run_result_sim_seconds() -> None:
    r = RunResult("x", 0, 2_500_000_000, 0, 0.1)
    assert r.sim_seconds == pytest.approx(0.0025)


def test_readme_example(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                        backend_name: str) -> None:
    """The README's System example (less RAM, to keep the checkpoint small)."""
    from kvmcpu import RunResult as PublicRunResult
    from kvmcpu import System as PublicSystem

    assert (PublicSystem, PublicRunResult) == (System, RunResult)
    import kvmcpu.guests

    monkeypatch.chdir(tmp_path)
    system = PublicSystem(memory="32M", backend=backend_name)  # README: 128M
    try:
        system.load(kvmcpu.guests.path("hello"))
        result = system.run(max_seconds=10)
        assert result.cause == "isa-debug-exit" and result.status == 1
        assert system.serial.output.startswith(b"Hello from kvmcpu!\n")
        system.stats.dump("stats.txt")
        system.checkpoint("cpt.1")
    finally:
        system.close()
    other = "mock" if backend_name == "kvm" else backend_name
    restored = PublicSystem.restore("cpt.1", backend=other)
    restored.close()
    assert (tmp_path / "stats.txt").is_file()
