"""The GDB stub with several CPUs (every CPU a gdb thread) on the bundled ELF
guest smpdebug (``--smp 2``: the BSP starts the AP by INIT-SIPI-SIPI; symbols
for both paths): a real gdb's ``info threads``, ``thread 2``, a breakpoint the
AP hits, ``stepi`` on it and ``continue`` give the same transcript on the mock
and on KVM with ``--parallel on`` (a host thread per vCPU) and ``off``; the
raw packets name the right thread; the target holds a thread that has no action
(QEMU's vCont semantics) and reports each CPU's state."""

from __future__ import annotations

from typing import Dict, Iterator, List

import pytest
from gdb_helpers import ROOT, data_breakpoints, gdb_session, needs_gdb, stub

from kvmcpu.gdb.packet import encode
from kvmcpu.gdb.target import CAUSE_BREAK, CAUSE_STEP, SystemTarget
from kvmcpu.system import System

SMPDEBUG = ROOT / "kvmcpu" / "guests" / "smpdebug.bin"
CONFIGS = ["mock", pytest.param("kvm-parallel", marks=pytest.mark.kvm),
           pytest.param("kvm-serial", marks=pytest.mark.kvm)]
ARGS = {"mock": ("mock",), "kvm-parallel": ("kvm", "--parallel", "on"),
        "kvm-serial": ("kvm", "--parallel", "off"),
        "kvm-irqchip": ("kvm", "--irqchip", "kernel")}

SESSION = [
    "info threads", "thread 2", "info registers rip",
    "break ap_entry", "continue", "info registers rip",
    "stepi", "info registers rip", "print $_thread",
    # at ap_finish the BSP has long been halted in bsp_wait (at ap_entry it may
    # still be sending the second SIPI on KVM, where time follows the host's)
    "break ap_finish", "delete 1", "continue", "info threads",
    "thread 1", "break bsp_done", "delete 2", "continue",
    "print (long)counter", "continue",
]
_transcripts: Dict[str, str] = {}


def _session(config: str) -> str:
    backend, *extra = ARGS[config]
    return gdb_session(_transcripts, backend, SESSION, SMPDEBUG, "--smp", "2", *extra,
                       key=config)


def _sym(name: str) -> int:
    with System(backend="mock") as s:
        s.load(SMPDEBUG)
        return s.symbol(name)


@needs_gdb
@pytest.mark.parametrize("config", CONFIGS + [
    pytest.param("kvm-irqchip", marks=pytest.mark.kvm)])  # states from KVM's mp_state
def test_gdb_session_with_two_cpus(config: str) -> None:
    out = _session(config)
    lines = out.splitlines()
    # before the first instruction: the BSP at _start, the AP waiting for its SIPI
    # at the reset vector (CS base 0xffff0000, IP 0xfff0: gdb shows the IP)
    assert any(line.split()[:6] == ["*", "1", "Thread", "1", "(CPU#0", "[running])"]
               and "in _start ()" in line for line in lines), out
    assert any(line.split()[:5] == ["2", "Thread", "2", "(CPU#1", "[wait-for-SIPI])"]
               and "0x000000000000fff0" in line for line in lines), out
    assert "[Switching to thread 2 (Thread 2)]" in out
    entry = _sym("ap_entry")
    # the AP hits the breakpoint: gdb names thread 2
    assert f"Thread 2 hit Breakpoint 1, {entry:#018x} in ap_entry ()" in out, out
    assert f"rip            {entry:#x}" in out
    # at ap_finish: the BSP waits halted, the AP runs
    assert f"Thread 2 hit Breakpoint 2, {_sym('ap_finish'):#018x} in ap_finish ()" in out
    assert any("(CPU#0 [halted])" in line and "in bsp_wait ()" in line for line in lines), out
    assert any(line.startswith("* 2") and "(CPU#1 [running])" in line and "ap_finish" in line
               for line in lines), out
    # stepi on thread 2: one instruction (mov ax, 0x10 is 4 bytes), still thread 2
    assert f"rip            {entry + 4:#x}" in out and "$1 = 2" in out
    # the BSP's breakpoint, after the AP's NMI woke it: thread 1, counter 148, exit 41
    assert f"Thread 1 hit Breakpoint 3, {_sym('bsp_done'):#018x} in bsp_done ()" in out
    assert "$2 = 148" in out
    assert "exited with code 051" in out and lines[-1] == "status 41"


@needs_gdb
@pytest.mark.kvm
def test_the_same_transcript_on_the_mock_and_on_kvm() -> None:
    mock = _session("mock")
    assert _session("kvm-parallel") == mock
    assert _session("kvm-serial") == mock
    assert _session("kvm-irqchip") == mock


@pytest.mark.parametrize("config", CONFIGS)
def test_raw_packets_name_the_thread(config: str) -> None:
    backend, *extra = ARGS[config]
    entry = _sym("ap_entry")
    for s in stub(backend, SMPDEBUG, "--smp", "2", "-S", *extra):
        g = s.client()
        assert g.ask("qfThreadInfo") == "m1,2" and g.ask("qsThreadInfo") == "l"
        extra_info = [bytes.fromhex(g.ask(f"qThreadExtraInfo,{n}")) for n in (1, 2)]
        assert extra_info == [b"CPU#0 [running]", b"CPU#1 [wait-for-SIPI]"]
        assert g.ask("T2") == "OK" and g.ask("T3") == "E16"
        # p10 is rip: Hg picks the thread whose registers are read
        assert g.ask("Hg2") == "OK" and g.ask("p10") == (0xFFF0).to_bytes(8, "little").hex()
        assert g.ask("Hg1") == "OK" and g.ask("p10") == _sym("_start").to_bytes(8, "little").hex()
        # memory through the selected thread's translation: the AP's code at ap_entry
        code = g.ask(f"m{entry:x},4")
        assert g.ask("Hg2") == "OK" and g.ask(f"m{entry:x},4") == code == "66b81000"
        assert g.ask(f"Z0,{entry:x},1") == "OK"
        assert g.ask("vCont;c") == "T05swbreak:;thread:02;"
        assert g.ask("qC") == "QC2"  # the thread that stopped is the current one
        assert g.ask("p10") == entry.to_bytes(8, "little").hex()
        assert g.ask(f"z0,{entry:x},1") == "OK"
        assert g.ask("vCont;s:2;c") == "T05thread:02;"
        assert g.ask("p10") == (entry + 4).to_bytes(8, "little").hex()
        finish = _sym("ap_finish")
        assert g.ask(f"Z0,{finish:x},1") == "OK"
        assert g.ask("vCont;c") == "T05swbreak:;thread:02;"
        assert bytes.fromhex(g.ask("qThreadExtraInfo,1")) == b"CPU#0 [halted]"
        assert g.ask(f"z0,{finish:x},1") == "OK"
        assert g.ask("c") == "W29"  # exit status 41 = 0x29


def _system(config: str) -> System:
    backend, *extra = ARGS[config]
    parallel = None if backend == "mock" else extra[1] == "on"
    s = System(backend=backend, smp=2, parallel=parallel)
    s.load(SMPDEBUG)
    return s


@pytest.fixture
def target(request: pytest.FixtureRequest) -> Iterator[SystemTarget]:
    s = _system(request.param)
    try:
        yield SystemTarget(s)
    finally:
        s.close()


def _run(t: SystemTarget, slices: int = 2000) -> str:
    for _ in range(slices):
        r = t.run_slice()
        if r is not None:
            return r.cause
    return "still running"


@pytest.mark.parametrize("target", CONFIGS, indirect=True)
def test_a_thread_without_an_action_stays_stopped(target: SystemTarget) -> None:
    t = target
    loop = t.system.symbol("ap_loop")
    t.insert_breakpoint(loop)
    t.resume(False)
    assert _run(t) == CAUSE_BREAK and t.stop_thread == 2
    t.remove_breakpoint(loop)
    t.g_thread = 2
    assert t.stop_pc() == loop
    # Only the BSP (halted, waiting for the AP's NMI) may run: the AP is held, so
    # nothing runs and the guest does not end either; the AP has not moved.
    t.resume_threads({1: "c"})
    # 2 x 50 slices of 100 us: on a loaded nested host the BSP's last ICR writes and
    # reads (MMIO exits into KVM's emulator) can take longer than 5 slices to halt.
    assert [_run(t, 50) for _ in range(2)] == ["still running"] * 2
    assert t.stop_pc() == loop and t.thread_state(2) == "running"
    assert t.thread_state(1) == "halted"
    # a step of the AP alone
    t.resume_threads({2: "s"})
    assert _run(t) == CAUSE_STEP and t.stop_thread == 2
    assert t.stop_pc() == loop + 3  # mov rdi, rbx
    # everyone runs: the BSP reaches bsp_done once the AP's NMI woke it
    t.insert_breakpoint(t.system.symbol("bsp_done"))
    t.resume(False)
    assert _run(t) == CAUSE_BREAK and t.stop_thread == 1
    t.g_thread = 1
    assert t.stop_pc() == t.system.symbol("bsp_done")
    assert int.from_bytes(t.read_memory(t.system.symbol("counter"), 8), "little") == 148


@pytest.mark.parametrize("target", CONFIGS, indirect=True)
def test_breakpoints_are_armed_on_every_cpu(target: SystemTarget) -> None:
    t = target
    compute = t.system.symbol("compute")  # called by the AP only
    t.insert_breakpoint(compute, hardware=True)
    hits: List[int] = []
    t.resume(False)
    for _ in range(3):
        assert _run(t) == CAUSE_BREAK
        hits.append(t.stop_thread or 0)
        t.resume(False)
    assert hits == [2, 2, 2]
    t.g_thread = 2
    assert t.read_register(5) == (2).to_bytes(8, "little")  # rdi = i, the third call


@pytest.mark.parametrize("config", CONFIGS)
def test_ctrl_c_stops_every_cpu(config: str) -> None:
    """guests/smp_spin.bin: every CPU in a long compute loop. Ctrl-C stops them
    all: the stop reply names the current thread, and neither thread's registers
    move while the stub answers; continuing runs them again."""
    import time

    backend, *extra = ARGS[config]
    image = ROOT / "guests" / "smp_spin.bin"
    for s in stub(backend, image, "--smp", "2", "--format", "multiboot", *extra):
        g = s.client()  # connecting stops the running guest
        assert g.ask("?") == "T05thread:01;"
        seen = []
        for _ in range(2):
            g.send_raw(encode("vCont;c"))
            time.sleep(0.5)
            g.send_raw(b"\x03")
            assert g.reply() == "T02thread:01;"
            regs = [g.ask(f"Hg{n}") + g.ask("g") for n in (1, 2)]
            time.sleep(0.3)
            assert [g.ask(f"Hg{n}") + g.ask("g") for n in (1, 2)] == regs  # stopped
            seen.append(regs)
        assert seen[0] != seen[1]  # and it ran in between
        g.send_raw(encode("k"))
        assert s.wait()[0] == 0


@pytest.mark.parametrize("config", CONFIGS)
def test_a_watchpoint_the_ap_triggers_names_the_ap(config: str) -> None:
    """Z2 on ``counter``, which only the AP writes: the stop names thread 2, after
    its ``add [counter], rax`` (the data breakpoints of every CPU)."""
    backend, *extra = ARGS[config]
    counter, loop = _sym("counter"), _sym("ap_loop")
    for s in stub(backend, SMPDEBUG, "--smp", "2", "-S", *extra):
        g = s.client()
        assert g.ask(f"Z2,{counter:x},8") == "OK"
        if not data_breakpoints(backend):
            # The fallback: every CPU single-steps and compares the bytes after each
            # step; the AP's steps do not always survive its INIT-SIPI (it is
            # started meanwhile), so another CPU's step may see the change first:
            # the stop is the watchpoint's, the thread not always the writer's.
            reply = g.ask("vCont;c")
            assert reply.startswith(f"T05watch:{counter:x};thread:"), reply
            assert g.ask(f"m{counter:x},8") != "00" * 8
            g.send_raw(encode("k"))
            assert s.wait()[0] == 0
            return
        assert g.ask("vCont;c") == f"T05watch:{counter:x};thread:02;"
        # mov rdi, rbx (3); call compute (5); add [counter], rax (7)
        assert g.ask("p10") == (loop + 15).to_bytes(8, "little").hex()
        assert g.ask(f"m{counter:x},8") == (1).to_bytes(8, "little").hex()  # 0*0 + 1
        assert g.ask(f"z2,{counter:x},8") == "OK"
        assert g.ask("c") == "W29"
