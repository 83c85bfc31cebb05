"""The hybrid CPU on KVM: what KVM's emulator refuses at CPL0 runs on the mock.

guests/fallback.asm runs popcnt, cmpxchg16b, cmpxchg8b, rdtscp and a popcnt
from MMIO (the device raises an interrupt on that read) at CPL0. On KVM with the
fallback on it must print what the mock prints and what the host CPU computes
natively at CPL3; with it off, a host whose emulator refuses popcnt ends the run
in status 126 as before. Whether this host's KVM refuses the instruction is
probed (the popcnt row of host_deviations.json), never assumed.
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
from diffkit import native_available, run_backend, run_native, run_native32

from kvmcpu.system import STATUS_TRIPLE_FAULT, System

ROOT = Path(__file__).resolve().parents[2]
GUEST = ROOT / "guests" / "fallback.bin"
MMIO_ADDR = 0x20000000
MMIO_VALUE = 0x00FF00FF00FF00FF
IRQ = 5
POPCNT_RAX_RBX = bytes.fromhex("f3480fb8c3")


class IrqOnRead:
    """Answers MMIO_VALUE and raises IRQ 5 on a read; a write lowers the line."""

    name = "irq-on-read"

    def __init__(self, pic: Any) -> None:
        self.pic = pic
        self.reads = 0

    def read(self, offset: int, size: int) -> int:
        self.reads += 1
        self.pic.set_irq(IRQ, True)
        return MMIO_VALUE & ((1 << (8 * size)) - 1)

    def write(self, offset: int, size: int, value: int) -> None:
        self.pic.set_irq(IRQ, False)


@pytest.fixture(scope="module")
def kvm_refuses_popcnt(kvm_backend: Any) -> bool:
    """Whether KVM ends `popcnt rax, rbx` at CPL0 in an emulation internal error here."""
    *_, exits = run_backend(kvm_backend, POPCNT_RAX_RBX, {"rbx": 7}, 0, bytes(16), cpl=0)
    return exits[-1][0] == "internal_error" and exits[-1][1]["suberror"] == 1


def _run_guest(backend: str, **kw: Any) -> Tuple[bytes, Dict[str, int], IrqOnRead, str]:
    with System(backend=backend, **kw) as system:
        dev = IrqOnRead(system.devices.pic)
        system.mmio_bus.add(MMIO_ADDR, 0x1000, dev)
        system.load(str(GUEST))
        result = system.run(timeout=120)
        stats = system.cpu.stats
        counts = {"emulated": int(stats.numEmulatedInstructions.value),
                  "mmio": int(stats.numMMIO.value),
                  "bursts": int(stats.numEmulationBursts.value)}
        return system.serial.output, counts, dev, result.cause


def _native(body: bytes, regs: Dict[str, int], buf: bytes = bytes(16)
            ) -> Tuple[Dict[str, int], int, bytes]:
    return run_native(body, regs, 0, buf)


def _expected_line() -> bytes:
    """The guest's line computed on the host CPU (natively, CPL3) from the same inputs."""
    zf = 0x40
    r0 = _native(POPCNT_RAX_RBX, {"rbx": 0x0123456789ABCDEF})[0]["rax"]
    # popcnt ecx, [r15] (32-bit: zero-extends)
    r1 = _native(bytes.fromhex("f3410fb80f"), {"rcx": 2**64 - 1},
                 struct.pack("<I", 0xF00F0001) + bytes(12))[0]["rcx"]
    mem16 = struct.pack("<QQ", 0x1111, 0x2222)
    # lock cmpxchg16b [r15] that succeeds, then one that fails
    ok = _native(bytes.fromhex("f0490fc70f"),
                 {"rax": 0x1111, "rdx": 0x2222, "rbx": 0x3333, "rcx": 0x4444}, mem16)
    lo, hi = struct.unpack("<QQ", ok[2])
    bad = _native(bytes.fromhex("490fc70f"), {"rax": 0, "rdx": 0}, ok[2])
    # cmpxchg8b [r15]
    c8 = _native(bytes.fromhex("410fc70f"), {"rax": 0x77778888, "rdx": 0x55556666,
                                              "rbx": 0xBBBBCCCC, "rcx": 0x9999AAAA},
                 struct.pack("<Q", 0x5555666677778888) + bytes(8))
    mmio = _native(POPCNT_RAX_RBX, {"rbx": MMIO_VALUE})[0]["rax"]
    values = [r0, r1, int(bool(ok[1] & zf)), lo, hi, int(bool(bad[1] & zf)),
              bad[0]["rax"], bad[0]["rdx"], int(bool(c8[1] & zf)),
              struct.unpack("<Q", c8[2][:8])[0], 1 << 32, mmio, 1]
    return b"fallback:" + b"".join(b" %016x" % v for v in values) + b"\n"


@pytest.fixture(scope="module")
def mock_run() -> Iterator[Tuple[bytes, Dict[str, int], IrqOnRead, str]]:
    yield _run_guest("mock")


@pytest.mark.kvm
def test_fallback_guest_prints_what_the_mock_and_the_host_cpu_compute(
        kvm_refuses_popcnt: bool, mock_run: Tuple[bytes, Dict[str, int], IrqOnRead, str]
) -> None:
    reason: Optional[str] = native_available()
    if reason is not None:
        pytest.skip(reason)
    expected = _expected_line()
    # One refused instruction at a time (no bursts): KVM runs the rest.
    out, counts, dev, cause = _run_guest("kvm", cpu_params={"emulationFallbackBurst": 0})
    assert cause == "isa-debug-exit", (cause, out)
    assert counts["bursts"] == 0
    assert out == expected
    assert mock_run[0] == expected
    assert dev.reads == 1 and mock_run[2].reads == 1
    if kvm_refuses_popcnt:
        # popcnt x3, cmpxchg16b x2 and rdtscp here; at least the three popcnts anywhere
        # the register form is refused.
        assert counts["emulated"] >= 3
        # The MMIO read happened inside the fallback: KVM exited for MMIO only for the
        # interrupt handler's write; the mock made both accesses as exits.
        assert counts["mmio"] == 1 and mock_run[1]["mmio"] == 2
    assert mock_run[1]["emulated"] == 0  # the mock never falls back on itself


@pytest.mark.kvm
def test_cpl0_code_in_bursts_on_the_mock_prints_the_same(
        kvm_backend: Any, mock_run: Tuple[bytes, Dict[str, int], IrqOnRead, str]) -> None:
    """--emulation-fallback burst where KVM emulates CPL0 code (hybrid.emulates_cpl0): the
    guest's CPL0 code runs in bursts on the mock; the MMIO read and its interrupt go through the
    burst (the device sees one read, the handler's write lowers the line)."""
    reason: Optional[str] = native_available()
    if reason is not None:
        pytest.skip(reason)
    from kvmcpu.cpu.kvm.hybrid import BURST_INSTRUCTIONS, emulates_cpl0

    out, counts, dev, cause = _run_guest(
        "kvm", cpu_params={"emulationFallbackBurst": BURST_INSTRUCTIONS})
    assert cause == "isa-debug-exit", (cause, out)
    assert out == _expected_line() == mock_run[0]
    assert dev.reads == 1
    if emulates_cpl0(kvm_backend):
        assert counts["bursts"] >= 1
        assert counts["emulated"] > 13  # the whole guest, not only the refused ones
        assert counts["mmio"] == mock_run[1]["mmio"] == 2  # both made inside bursts
    else:
        assert counts["bursts"] == 0


@pytest.mark.kvm
def test_fallback_off_ends_in_126_with_the_register_dump(
        kvm_refuses_popcnt: bool, tmp_path: Path) -> None:
    if not kvm_refuses_popcnt:
        pytest.skip("this host's KVM runs popcnt at CPL0: nothing to fall back from")

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "kvmcpu", "run", str(GUEST), "--backend", "kvm",
             "--serial", "none", "--timeout", "60", *extra],
            capture_output=True, text=True, timeout=120, cwd=tmp_path)

    off = run("--emulation-fallback", "off", "-v")
    assert off.returncode == 126, off.stderr
    assert "KVM internal error (suberror 1" in off.stderr
    assert "f3 48 0f b8 c3" in off.stderr  # the refused popcnt's bytes
    assert "rip" in off.stderr.lower()  # the register dump (-v)
    on = run()
    # With the fallback the guest gets past every refused instruction; no device
    # answers at MMIO_ADDR here, so no interrupt comes and it halts for good.
    assert on.returncode == 0, on.stderr
    assert "internal error" not in on.stderr


@pytest.mark.kvm
def test_fault_inside_the_fallback_is_delivered_and_a_triple_fault_reported(
        kvm_refuses_popcnt: bool) -> None:
    """popcnt from an unmapped address with no IDT: #PF -> #DF -> triple fault, found by
    the mock during the fallback and reported as KVM's SHUTDOWN is (status 125)."""
    code = bytes.fromhex("f3480fb8042500000040")  # popcnt rax, [0x40000000] (past 1 GiB)
    for backend in ("kvm", "mock"):
        with System(backend=backend) as system:
            system.load(code + b"\xf4", fmt="flat", load_addr=0x100000, mode="long")
            result = system.run(timeout=60)
            assert (result.cause, result.status) == ("triple fault", STATUS_TRIPLE_FAULT)


def test_the_stat_has_a_gem5_style_description(tmp_path: Path) -> None:
    with System(backend="mock") as system:
        system.stats.dump(str(tmp_path / "stats.txt"))
    line = next(x for x in (tmp_path / "stats.txt").read_text().splitlines()
                if "system.cpu0.numEmulatedInstructions" in x)
    assert line.split()[1] == "0"
    assert "# number of instructions executed by the mock after KVM's emulator failed" in line


@pytest.mark.kvm
def test_real_mode_daa_through_the_fallback_matches_silicon() -> None:
    """DAA in real mode (KVM's emulator refuses it here: bcd-internal-error) on KVM, on
    the mock and natively in compatibility mode; the guest sends AL to COM1."""
    body = bytes.fromhex("b015" "0427" "27")  # mov al, 0x15; add al, 0x27; daa
    code = body + bytes.fromhex("baf803" "ee" "30c0" "e6f4" "f4")  # out to COM1, exit, hlt
    outputs = {}
    for backend in ("kvm", "mock"):
        with System(backend=backend) as system:
            system.load(code, fmt="flat")
            result = system.run(timeout=60)
            assert (result.cause, result.status) == ("isa-debug-exit", 1)
            outputs[backend] = system.serial.output
    assert outputs["kvm"] == outputs["mock"]
    if native_available() is None:
        regs, _ = run_native32(body, {}, 0)
        assert outputs["kvm"] == bytes([regs["eax"] & 0xFF])


@pytest.mark.kvm
def test_kvm_clock_set_up_in_a_burst_is_filled_by_kvm(kvm_backend: Any) -> None:
    """WRMSR MSR_KVM_SYSTEM_TIME_NEW (0x4b564d01, Documentation/virt/kvm/x86/msr.rst)
    at CPL0 in a burst: the mock does not know the MSR, KVM does; KVM fills the
    pvclock_vcpu_time_info at the next entry, so the guest's read of tsc_to_system_mul
    right after the WRMSR must see KVM's value, not the zeros a burst that carried on
    would read (a kernel divides by it: #DE). The guest prints '1' for non-zero."""
    from kvmcpu.cpu.kvm.hybrid import BURST_INSTRUCTIONS

    code = bytes.fromhex(
        "b9014d564b"      # mov ecx, 0x4b564d01
        "b801700000"      # mov eax, 0x7001 (the structure at 0x7000, enabled)
        "31d2" "0f30"     # xor edx, edx; wrmsr
        "8b042518700000"  # mov eax, [0x7018]: tsc_to_system_mul
        "85c0" "0f95c0" "0430"  # test eax, eax; setnz al; add al, '0'
        "66baf803" "ee"   # mov dx, 0x3f8; out dx, al
        "30c0" "e6f4" "f4")  # isa-debug-exit, hlt
    for params in ({}, {"emulationFallbackBurst": BURST_INSTRUCTIONS}):
        with System(backend="kvm", cpu_params=params) as system:
            system.load(code, fmt="flat", load_addr=0x100000, mode="long")
            result = system.run(timeout=60)
            assert (result.cause, system.serial.output) == ("isa-debug-exit", b"1"), params


@pytest.mark.kvm
def test_code_kvm_patches_between_bursts_runs_patched_and_io_once(kvm_backend: Any) -> None:
    """Burst mode: F ("mov al, 'A'; ret") runs on the mock, then a WRMSR KVM takes hands
    the guest to KVM, which patches F's immediate to 'B' and reads MMIO (an exit KVM
    completes only at its next KVM_RUN), then the guest prints '-' and calls F again on
    the mock. The mock must see KVM's write (KVM's dirty log) and must not make the read
    again: "A-B" and one read, as on KVM without bursts."""
    from kvmcpu.cpu.kvm.hybrid import BURST_INSTRUCTIONS, emulates_cpl0

    f_off = 0x1000

    def call(at: int) -> bytes:  # call F from offset ``at``
        return b"\xe8" + struct.pack("<i", f_off - (at + 5))

    code = bytes.fromhex("bc00000900")  # mov esp, 0x90000
    code += call(len(code)) + bytes.fromhex(
        "66baf803" "ee"                            # mov dx, 0x3f8; out dx, al
        "b9014d564b" "b801700000" "31d2" "0f30")   # wrmsr MSR_KVM_SYSTEM_TIME_NEW
    store = len(code)  # mov byte [rip+disp32], 'B': c6 05 disp32 imm8, 7 bytes
    code += b"\xc6\x05" + struct.pack("<i", f_off + 1 - (store + 7)) + b"B"
    code += bytes.fromhex("8b042500000020"    # mov eax, [MMIO_ADDR]: an MMIO exit
                          "66baf803" "b02d" "ee")  # mov dx, 0x3f8; mov al, '-'; out dx, al
    code += call(len(code)) + bytes.fromhex("ee" "30c0" "e6f4" "f4")  # out; exit; hlt
    code = code.ljust(f_off, b"\x90") + bytes.fromhex("b041" "c3")  # F: mov al, 'A'; ret
    outputs = {}
    for name, params in (("kvm", {}), ("burst", {"emulationFallbackBurst": BURST_INSTRUCTIONS})):
        with System(backend="kvm", cpu_params=params) as system:
            dev = IrqOnRead(system.devices.pic)
            system.mmio_bus.add(MMIO_ADDR, 0x1000, dev)
            system.load(code, fmt="flat", load_addr=0x100000, mode="long")
            result = system.run(timeout=60)
            assert result.cause == "isa-debug-exit", (name, system.serial.output)
            assert dev.reads == 1, name  # KVM's read completed, not made again
            outputs[name] = system.serial.output
            if name == "burst" and emulates_cpl0(kvm_backend):
                assert system.cpu.stats.numEmulationBursts.value >= 2
    assert outputs == {"kvm": b"A-B", "burst": b"A-B"}


@pytest.mark.kvm
def test_cli_emulation_fallback_burst(kvm_backend: Any, tmp_path: Path) -> None:
    """`kvmcpu run --emulation-fallback burst` through the real entry point: the guest
    gets past every refused instruction (then halts for good: no device at MMIO_ADDR),
    and where KVM emulates CPL0 code the stats count the bursts."""
    from kvmcpu.cpu.kvm.hybrid import emulates_cpl0

    stats = tmp_path / "stats.txt"
    proc = subprocess.run(
        [sys.executable, "-m", "kvmcpu", "run", str(GUEST), "--backend", "kvm",
         "--serial", "none", "--timeout", "60", "--emulation-fallback", "burst",
         "--stats-file", str(stats)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(x for x in stats.read_text().splitlines() if ".numEmulationBursts " in x)
    assert (int(line.split()[1]) > 0) == emulates_cpl0(kvm_backend), line


#: CPL0: EFER.SCE, STAR, LSTAR = entry, SFMASK = 0, SYSRET to CPL3; CPL3: 40,000
#: instructions (past a burst's chunk: KVM would run the rest), SYSCALL; the LSTAR target
#: reads CR0 (#GP unless at CPL0; no IDT: a triple fault) and exits.
SYSCALL_GUEST = """
bits 64
    mov ecx, 0xC0000080
    rdmsr
    or eax, 1
    wrmsr
    mov ecx, 0xC0000081
    xor eax, eax
    mov edx, 0x00100008
    wrmsr
    mov ecx, 0xC0000082
    lea rax, [rel entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084
    xor eax, eax
    xor edx, edx
    wrmsr
    lea rcx, [rel user]
    mov r11d, 2
    o64 sysret
user:
    mov ecx, 20000
spin:
    dec ecx
    jnz spin
    syscall
entry:
    mov rax, cr0
    mov al, 0x10
    out 0xf4, al
    hlt
"""


@pytest.mark.kvm
@pytest.mark.parametrize("backend,burst", [("mock", False), ("kvm", True)])
def test_syscall_from_cpl3_reaches_cpl0(backend: str, burst: bool) -> None:
    """SYSCALL at CPL3 loads CS/SS from STAR at CPL0 (SDM vol. 2B, SYSCALL). Nested
    kvm_pvm leaves CS at CPL3 for a guest that is not PVM-aware
    (hybrid.syscall_keeps_cpl3): in burst mode the CPU then runs user code on the mock
    too, and the guest's CPL0 entry runs (on KVM alone it would triple-fault there)."""
    from mockasm import asm

    from kvmcpu.cpu.kvm.hybrid import BURST_INSTRUCTIONS

    params = {"emulationFallbackBurst": BURST_INSTRUCTIONS} if burst else {}
    with System(backend=backend, cpu_params=params) as system:
        system.load(asm(SYSCALL_GUEST), fmt="flat", load_addr=0x100000, mode="long")
        result = system.run(timeout=60)
        assert (result.cause, result.status) == ("isa-debug-exit", 0x21)
