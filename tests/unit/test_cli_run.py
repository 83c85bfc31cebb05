"""``kvmcpu run`` / ``kvmcpu demo``: exit statuses and messages of every path, in-process
through ``kvmcpu.cli.main`` and once through a real ``python -m kvmcpu`` process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Tuple

import pytest

from kvmcpu import cli
from kvmcpu.backends.base import open_objects
from kvmcpu.cli_run import guest_path, parse_duration
from kvmcpu.errors import ConfigError, GuestError

ROOT = Path(__file__).resolve().parent.parent.parent
HELLO = str(ROOT / "kvmcpu" / "guests" / "hello.bin")
HELLO64 = str(ROOT / "kvmcpu" / "guests" / "hello64.bin")
HELLO_OUT = "Hello from kvmcpu!\nfw_cfg signature: QEMU\nfw_cfg cpus: 1\n"

#: lidt [0x600] (limit 0), CR0.PE = 1, ud2: #UD -> #GP -> #DF -> triple fault (real mode start).
TRIPLE_FAULT = bytes.fromhex("0f011e0006 0f20c0 0c01 0f22c0 0f0b")
SPIN = bytes.fromhex("eb fe")  # jmp $
FPU = bytes.fromhex("d9 e8 f4")  # fld1: x87 ends in KVM_EXIT_INTERNAL_ERROR on the mock


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> Tuple[int, str, str]:
    """``kvmcpu ARGV...`` in-process: (status, stdout, stderr); argparse exits become statuses."""
    try:
        status = cli.main(list(argv))
    except SystemExit as stop:
        status = int(stop.code or 0)
    out, err = capsys.readouterr()
    assert not open_objects, f"kvmcpu {' '.join(argv)} left {open_objects!r} open"
    return status, out, err


def flat(tmp_path: Path, name: str, code: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(code)
    return str(path)


# ------------------------------------------------------------------ command-line errors: 2
USAGE_CASES: List[Tuple[str, List[str], str]] = [
    ("missing file", ["/nonexistent/guest.bin"],
     "kvmcpu run: /nonexistent/guest.bin: no such file"),
    ("no image", [], "an IMAGE is required (or --restore DIR)"),
    ("bad format", [HELLO, "--format", "coff"], "argument --format: invalid choice: 'coff'"),
    ("bad size", [HELLO, "--memory", "12Q"], "invalid memory size '12Q'"),
    ("zero size", [HELLO, "--memory", "0"], "--memory 0: must be a positive multiple of 4096"),
    ("odd size", [HELLO, "--memory", "1000"], "--memory 1000: must be a positive multiple"),
    ("unknown backend", [HELLO, "--backend", "qemu"],
     "unknown backend 'qemu' (use auto, kvm or mock)"),
    ("bad serial", [HELLO, "--serial", "tcp:1234"],
     "bad --serial 'tcp:1234' (use stdio, file:PATH"),
    ("serial file without path", [HELLO, "--serial", "file:"], "--serial file: needs a path"),
    ("serial file unwritable", [HELLO, "--serial", "file:/nonexistent/dir/out"],
     "--serial file:/nonexistent/dir/out: No such file or directory"),
    ("bad quantum", [HELLO, "--quantum", "1parsec"], "--quantum: bad duration '1parsec'"),
    ("negative quantum", [HELLO, "--quantum=-1ms"], "--quantum: bad duration '-1ms'"),
    ("smp above the mock's limit", [HELLO, "--smp", "9", "--backend", "mock"],
     "--smp 9: smp=9: the mock backend runs at most 8 CPUs (KVM_CAP_MAX_VCPUS)"),
    ("smp 0", [HELLO, "--smp", "0"], "--smp 0: must be at least 1"),
    ("smp not a number", [HELLO, "--smp", "two"], "argument --smp: invalid int value: 'two'"),
    ("negative max-seconds", [HELLO, "--max-seconds", "-1"], "--max-seconds -1.0: must be"),
    ("negative max-ticks", [HELLO, "--max-ticks", "-5"], "--max-ticks -5: must not be negative"),
    ("both limits", [HELLO, "--max-ticks", "5", "--max-seconds", "1"], "not allowed with argument"),
    ("zero timeout", [HELLO, "--timeout", "0"], "--timeout 0.0: must be a positive number"),
    ("missing checkpoint", ["--restore", "/nonexistent/cpt.1"],
     "--restore /nonexistent/cpt.1: no such checkpoint directory"),
    ("missing module", [HELLO, "--module", "/nonexistent/initrd"],
     "--module /nonexistent/initrd: no such file"),
    ("unwritable stats file", [HELLO, "--stats-file", "/nonexistent/dir/stats.txt"],
     "--stats-file /nonexistent/dir/stats.txt: No such file or directory"),
    ("image of the wrong format", [HELLO, "--format", "elf"], "not an ELF file"),
    ("irqchip the mock lacks", [HELLO, "--backend", "mock", "--irqchip", "on"],
     "irqchip='on' but the backend has no in-kernel irqchip"),
]


@pytest.mark.parametrize("argv, message", [pytest.param(a, m, id=i) for i, a, m in USAGE_CASES])
def test_usage_errors_exit_2(argv: List[str], message: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run_cli(capsys, "run", *argv)
    assert status == 2
    assert message in err
    assert out == ""
    assert "Traceback" not in err


def test_empty_image_is_status_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "run", flat(tmp_path, "empty.bin", b""), "--backend", "mock")
    assert status == 2 and "image is empty" in err


def test_image_too_big_for_ram_is_status_2(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "run", HELLO, "--backend", "mock", "--memory", "64K")
    assert status == 2 and err.startswith("kvmcpu run: ") and len(err.splitlines()) == 1


# ------------------------------------------------------------------ how guests end
def test_success_via_debug_exit(capsys: pytest.CaptureFixture[str], backend_name: str,
                                tmp_path: Path) -> None:
    stats, js = tmp_path / "stats.txt", tmp_path / "stats.json"
    stats.write_text("old contents\n")
    status, out, err = run_cli(capsys, "run", HELLO, "--backend", backend_name, "--memory", "32M",
                               "--append", "quiet", "--stats-file", str(stats),
                               "--stats-json", str(js), "--timeout", "30")
    assert status == 1  # (0 << 1) | 1, as QEMU's isa-debug-exit
    assert out == HELLO_OUT + f"cmdline: {HELLO} quiet\n"
    assert err == ""
    text = stats.read_text()
    assert "old contents" not in text  # started empty, as gem5's stats.txt
    assert text.count("---------- Begin Simulation Statistics ----------") == 1
    assert "system.cpu0.numVMExits" in text
    assert json.loads(js.read_text())["stats"]["system.cpu0.numIO"]["value"] > 50


def test_elf_format_option(capsys: pytest.CaptureFixture[str]) -> None:
    status, out, _ = run_cli(capsys, "run", HELLO64, "--format", "elf", "--backend", "mock",
                             "--memory", "8M")
    assert (status, out) == (1, HELLO_OUT)


def test_verbose_reports_backend_and_cause(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "run", HELLO64, "-v", "--backend", "mock", "--memory", "8M")
    assert status == 1
    assert "kvmcpu run: backend mock" in err
    assert "isa-debug-exit at " in err and "status 1" in err


def test_serial_file_and_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file = tmp_path / "com1.txt"
    status, out, _ = run_cli(capsys, "run", HELLO64, "--backend", "mock", "--memory", "8M",
                             "--serial", f"file:{out_file}")
    assert (status, out) == (1, "")
    assert out_file.read_text() == HELLO_OUT
    status, out, _ = run_cli(capsys, "run", HELLO64, "--backend", "mock", "--memory", "8M",
                             "--serial", "none")
    assert (status, out) == (1, "")


def test_triple_fault_is_125(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             backend_name: str) -> None:
    image = flat(tmp_path, "tf.bin", TRIPLE_FAULT)
    status, out, err = run_cli(capsys, "run", image, "--backend", backend_name, "--timeout", "20")
    assert status == 125
    assert "kvmcpu run: triple fault at " in err


def test_simulated_time_limit_is_124(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     backend_name: str) -> None:
    image = flat(tmp_path, "spin.bin", SPIN)
    status, _, err = run_cli(capsys, "run", image, "--backend", backend_name,
                             "--max-seconds", "0.0001", "--timeout", "20")
    assert status == 124
    assert "simulate() limit reached at 0.000100 s simulated" in err
    status, _, err = run_cli(capsys, "run", image, "--backend", backend_name,
                             "--max-ticks", "2000000", "--timeout", "20")
    assert status == 124 and "at 0.000002 s simulated" in err


def test_host_timeout_is_124(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                             backend_name: str) -> None:
    image = flat(tmp_path, "spin.bin", SPIN)
    status, _, err = run_cli(capsys, "run", image, "--backend", backend_name, "--timeout", "0.2")
    assert status == 124
    assert "kvmcpu run: host timeout at " in err


def test_vcpu_error_is_126(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = flat(tmp_path, "fpu.bin", FPU)
    status, _, err = run_cli(capsys, "run", image, "--backend", "mock")
    assert status == 126
    assert err.startswith("kvmcpu run: system.cpu0: KVM internal error")
    assert len(err.splitlines()) == 1  # the register dump only with -v
    status, _, err = run_cli(capsys, "run", image, "--backend", "mock", "-v")
    assert status == 126 and "rip" in err.lower()


def test_halt_with_interrupts_off_is_0(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = flat(tmp_path, "hlt.bin", bytes.fromhex("fa f4"))
    status, out, err = run_cli(capsys, "run", image, "--backend", "mock", "--timeout", "20")
    assert (status, out, err) == (0, "", "")


def test_unavailable_backend_is_1(capsys: pytest.CaptureFixture[str],
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCPU_DISABLE_KVM", "1")
    status, _, err = run_cli(capsys, "run", HELLO, "--backend", "kvm")
    assert status == 1
    assert err.startswith("kvmcpu run: ") and "KVMCPU_DISABLE_KVM" in err
    assert len(err.splitlines()) == 1


def test_demo(capsys: pytest.CaptureFixture[str], backend_name: str) -> None:
    status, out, _ = run_cli(capsys, "demo", "--backend", backend_name)
    assert status == 0
    assert f"backend: {backend_name}" in out
    assert "  | Hello from kvmcpu!" in out
    assert "result:  isa-debug-exit, status 1" in out


def test_demo_unknown_backend(capsys: pytest.CaptureFixture[str]) -> None:
    status, _, err = run_cli(capsys, "demo", "--backend", "bochs")
    assert status == 2 and "unknown backend 'bochs'" in err


# ------------------------------------------------------------------ a real process
def test_console_path_in_a_subprocess(tmp_path: Path) -> None:
    """``python -m kvmcpu run`` as a user runs it: stdout is the guest's, status is QEMU's."""
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-m", "kvmcpu", "run", HELLO64, "--memory", "8M",
                           "--timeout", "30"], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == HELLO_OUT
    assert proc.stderr == ""
    bad = subprocess.run([sys.executable, "-m", "kvmcpu", "run", "missing.bin"],
                         capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120)
    assert bad.returncode == 2
    assert bad.stderr == "kvmcpu run: missing.bin: no such file\n"


# ------------------------------------------------------------------ helpers
@pytest.mark.parametrize("text, ticks", [
    ("0", 0), ("1000", 1000), ("1ms", 10**9), ("250us", 250 * 10**6), ("2s", 2 * 10**12),
    ("1.5ns", 1500), ("7ps", 7), (" 3MS ", 3 * 10**9),
])
def test_parse_duration(text: str, ticks: int) -> None:
    assert parse_duration(text) == ticks


@pytest.mark.parametrize("text", ["", "ms", "-1ms", "1 parsec", "1e", "infs", "nans", "1.5"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ConfigError, match="bad duration"):
        parse_duration(text)


def test_guest_path() -> None:
    assert guest_path("hello.bin").read_bytes() == Path(HELLO).read_bytes()
    with pytest.raises(GuestError, match="no bundled guest 'nonexistent.bin'"):
        guest_path("nonexistent.bin")


def test_options_that_shape_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    module = tmp_path / "initrd.img"
    module.write_bytes(b"module contents")
    # Global -v, a Multiboot module, a quantum and a progress line: same output and status.
    status, out, err = run_cli(capsys, "-v", "run", HELLO, "--backend", "mock", "--memory", "16M",
                               "--module", str(module), "--quantum", "100us", "--progress")
    assert status == 1
    assert out.startswith(HELLO_OUT)
    assert "kvmcpu run: backend mock" in err and "isa-debug-exit at " in err
