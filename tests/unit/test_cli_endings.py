"""How ``kvmcpu run`` ends, through the real entry point in a subprocess: signals,
the final stats on every ending, stats files that survive a kill, and the
messages for inputs and outputs it cannot use (issue 11, items 1, 2, 12-14, 16, 18, 19)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
GUESTS = ROOT / "guests"  # test fixtures
BOOTABLE = ROOT / "kvmcpu" / "guests"  # the packaged bootable guests
BEGIN = "---------- Begin Simulation Statistics ----------"
SPIN = bytes.fromhex("eb fe")  # jmp $
#: lidt [0x600] (limit 0), CR0.PE = 1, ud2: #UD -> #GP -> #DF -> triple fault.
TRIPLE_FAULT = bytes.fromhex("0f011e0006 0f20c0 0c01 0f22c0 0f0b")
OLD_STATS = "stats of an earlier run\n"


def _env() -> Dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def kvmcpu(tmp_path: Path, *argv: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``python -m kvmcpu ARGV...`` in ``tmp_path``."""
    return subprocess.run([sys.executable, "-m", "kvmcpu", *argv], capture_output=True,
                          text=True, env=_env(), cwd=tmp_path, timeout=timeout)


def start(tmp_path: Path, *argv: str, patch: str = "") -> subprocess.Popen[str]:
    """``kvmcpu ARGV...`` in a subprocess (after running the ``patch`` source: fault
    injection), stderr piped."""
    if patch:
        code = f"import sys\n{patch}\nfrom kvmcpu.cli import main\nsys.exit(main(sys.argv[1:]))\n"
        cmd = [sys.executable, "-c", code, *argv]
    else:
        cmd = [sys.executable, "-m", "kvmcpu", *argv]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=_env(), cwd=tmp_path)


def wait_for(proc: subprocess.Popen[str], marker: str) -> List[str]:
    """Read stderr lines until one contains ``marker`` (the process must print it)."""
    assert proc.stderr is not None
    seen: List[str] = []
    for line in proc.stderr:
        seen.append(line)
        if marker in line:
            return seen
    raise AssertionError(f"{marker!r} never printed; stderr: {''.join(seen)}")


def finish(proc: subprocess.Popen[str], seen: List[str]) -> str:
    try:
        _, rest = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return "".join(seen) + rest


def image(tmp_path: Path, name: str, code: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(code)
    return str(path)


def assert_one_stats_block(text_file: Path, json_file: Optional[Path] = None) -> None:
    text = text_file.read_text()
    assert OLD_STATS not in text
    assert text.count(BEGIN) == 1 and "system.cpu0.numVMExits" in text
    if json_file is not None:
        lines = json_file.read_text().splitlines()
        assert len(lines) == 1
        assert json.loads(lines[0])["stats"]["system.cpu0.numVMExits"]["value"] >= 1


# ------------------------------------------------------------------ item 1: signals
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP],
                         ids=lambda s: signal.Signals(s).name)
def test_a_signal_ends_the_run_with_the_final_stats(tmp_path: Path, backend_name: str,
                                                    signum: int) -> None:
    stats, js = tmp_path / "stats.txt", tmp_path / "stats.json"
    stats.write_text(OLD_STATS)
    js.write_text(OLD_STATS)
    proc = start(tmp_path, "run", image(tmp_path, "spin.bin", SPIN), "--format", "flat",
                 "--backend", backend_name, "--stats-file", str(stats), "--stats-json", str(js),
                 "--timeout", "60", "-v")
    seen = wait_for(proc, "kvmcpu run: backend")
    time.sleep(0.5)  # well inside the simulation loop (a signal before it works too)
    assert stats.read_text() == OLD_STATS  # untouched until the new one is complete
    proc.send_signal(signum)
    err = finish(proc, seen)
    assert proc.returncode == 128 + signum, err
    name = signal.Signals(signum).name
    assert f"kvmcpu run: interrupted by {name} at " in err and f"status {128 + signum}" in err
    assert "Traceback" not in err
    assert_one_stats_block(stats, js)


_BLOCK_STATS_WRITE = """
import os, time
real_fsync = os.fsync
def fsync(fd):
    print("kvmcpu-test: writing stats", file=sys.stderr, flush=True)
    time.sleep(60)
    real_fsync(fd)
os.fsync = fsync
"""


def test_a_second_signal_aborts_at_once_and_the_old_stats_stay(tmp_path: Path) -> None:
    stats = tmp_path / "stats.txt"
    stats.write_text(OLD_STATS)
    proc = start(tmp_path, "run", image(tmp_path, "spin.bin", SPIN), "--format", "flat",
                 "--backend", "mock", "--stats-file", str(stats), "--timeout", "60", "-v",
                 patch=_BLOCK_STATS_WRITE)
    seen = wait_for(proc, "kvmcpu run: backend")
    proc.send_signal(signal.SIGINT)
    seen += wait_for(proc, "kvmcpu-test: writing stats")  # the final dump is under way
    proc.send_signal(signal.SIGINT)
    err = finish(proc, seen)
    assert proc.returncode == 130
    assert "kvmcpu run: aborted (SIGINT)" in err and "Traceback" not in err
    assert stats.read_text() == OLD_STATS
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_sigkill_during_a_stats_write_leaves_the_previous_file(tmp_path: Path) -> None:
    """Fault injection: the run is killed (SIGKILL) in the middle of writing the stats;
    the stats file of the run before is whole, and the next run writes its own."""
    stats = tmp_path / "stats.txt"
    hello = str(BOOTABLE / "hello64.bin")
    first = kvmcpu(tmp_path, "run", hello, "--backend", "mock", "--memory", "8M",
                   "--stats-file", str(stats))
    assert first.returncode == 1, first.stderr
    previous = stats.read_bytes()
    assert previous.decode().count(BEGIN) == 1
    proc = start(tmp_path, "run", hello, "--backend", "mock", "--memory", "8M",
                 "--stats-file", str(stats), patch=_BLOCK_STATS_WRITE)
    seen = wait_for(proc, "kvmcpu-test: writing stats")
    temporary = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(temporary) == 1 and temporary[0].read_text().count(BEGIN) == 1  # being written
    proc.kill()
    finish(proc, seen)
    assert proc.returncode == -signal.SIGKILL
    assert stats.read_bytes() == previous
    again = kvmcpu(tmp_path, "run", hello, "--backend", "mock", "--memory", "8M",
                   "--stats-file", str(stats))
    assert again.returncode == 1, again.stderr
    assert stats.read_text().count(BEGIN) == 1 and stats.read_bytes() != previous
    assert not temporary[0].exists()  # the killed run's temporary file is cleaned up


# ------------------------------------------------------------------ item 2: every ending
def test_a_vcpu_error_writes_the_final_stats(tmp_path: Path, backend_name: str) -> None:
    stats, js = tmp_path / "ie.txt", tmp_path / "ie.json"
    stats.write_text(OLD_STATS)
    proc = kvmcpu(tmp_path, "run", str(GUESTS / "io_long.bin"), "--backend", backend_name,
                  "--stats-file", str(stats), "--stats-json", str(js), "--timeout", "60")
    assert proc.returncode == 126, proc.stderr
    assert "KVM internal error" in proc.stderr
    assert_one_stats_block(stats, js)


@pytest.mark.parametrize("ending, argv, status, message", [
    ("triple fault", ["--format", "flat"], 125, "triple fault at "),
    ("limit", ["--format", "flat", "--max-ticks", "3000000"], 124, "simulate() limit reached"),
    ("host timeout", ["--format", "flat", "--timeout", "0.5"], 124, "host timeout at "),
])
def test_every_ending_writes_the_final_stats(tmp_path: Path, ending: str, argv: List[str],
                                             status: int, message: str) -> None:
    stats, js = tmp_path / "stats.txt", tmp_path / "stats.json"
    code = TRIPLE_FAULT if ending == "triple fault" else SPIN
    proc = kvmcpu(tmp_path, "run", image(tmp_path, "guest.bin", code), "--backend", "mock",
                  "--stats-file", str(stats), "--stats-json", str(js), *argv)
    assert proc.returncode == status, proc.stderr
    assert message in proc.stderr
    assert_one_stats_block(stats, js)


@pytest.mark.parametrize("fault, message", [
    ("from kvmcpu.devices.uart import Uart16550\n"
     "def write(self, offset, size, value):\n"
     "    raise ZeroDivisionError('a bug in the device')\n"
     "Uart16550.write = write\n",
     "kvmcpu run: error: ZeroDivisionError: a bug in the device (a Python error inside the "
     "simulation; -v for the traceback)"),
    ("import errno\n"
     "from kvmcpu.cpu.kvm.x86 import X86KvmCPU\n"
     "from kvmcpu.errors import KvmIoctlError\n"
     "real, calls = X86KvmCPU.ioctlRun, []\n"
     "def ioctlRun(self):\n"
     "    calls.append(1)\n"
     "    if len(calls) > 5:\n"
     "        raise KvmIoctlError('KVM_RUN', errno.EFAULT, 'vCPU 0')\n"
     "    return real(self)\n"
     "X86KvmCPU.ioctlRun = ioctlRun\n",
     "kvmcpu run: error: KVM_RUN"),
], ids=["device raises", "KVM_RUN fails"])
def test_an_error_inside_the_run_writes_the_final_stats(tmp_path: Path, fault: str,
                                                        message: str) -> None:
    stats, js = tmp_path / "stats.txt", tmp_path / "stats.json"
    proc = start(tmp_path, "run", str(BOOTABLE / "hello64.bin"), "--backend", "mock",
                 "--memory", "8M", "--stats-file", str(stats), "--stats-json", str(js),
                 patch=fault)
    err = finish(proc, [])
    assert proc.returncode == 1, err
    assert message in err and "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert_one_stats_block(stats, js)


# ------------------------------------------------------------------ items 12-14, 16: inputs
@pytest.mark.parametrize("what, message", [
    ("directory", "is a directory, not a file"),
    ("/dev/null", "is a character device, not a file"),
    ("pipe", "is a pipe (or FIFO), not a file"),
])
def test_an_image_or_module_that_is_not_a_file(tmp_path: Path, what: str, message: str) -> None:
    read_fd = None
    if what == "directory":
        path = str(tmp_path)
    elif what == "pipe":
        read_fd, write_fd = os.pipe()
        os.close(write_fd)
        path = f"/dev/fd/{read_fd}"
    else:
        path = what
    try:
        for argv in ([path], [str(BOOTABLE / "hello.bin"), "--module", path]):
            proc = subprocess.run([sys.executable, "-m", "kvmcpu", "run", *argv, "--backend",
                                   "mock"], capture_output=True, text=True, env=_env(),
                                  cwd=tmp_path, timeout=60,
                                  pass_fds=() if read_fd is None else (read_fd,))
            assert proc.returncode == 2, proc.stderr
            prefix = "--module " if "--module" in argv else ""
            assert proc.stderr.startswith(f"kvmcpu run: {prefix}{path}: {message}")
            assert "no such file" not in proc.stderr
    finally:
        if read_fd is not None:
            os.close(read_fd)


@pytest.mark.parametrize("where, message", [
    ("/proc/nope", "--checkpoint-dir /proc/nope: cannot create a directory in /proc"),
    ("a-file", "--checkpoint-dir a-file: exists and is not a directory"),
])
def test_checkpoint_dir_is_checked_up_front(tmp_path: Path, where: str, message: str) -> None:
    (tmp_path / "a-file").write_text("x")
    stats = tmp_path / "stats.txt"
    stats.write_text(OLD_STATS)
    proc = kvmcpu(tmp_path, "run", str(BOOTABLE / "checkpoint.bin"), "--backend", "mock",
                  "--checkpoint-dir", where, "--stats-file", str(stats))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith(f"kvmcpu run: {message}")
    assert stats.read_text() == OLD_STATS  # nothing ran, nothing written


def test_guest_ram_the_host_cannot_map(tmp_path: Path) -> None:
    proc = kvmcpu(tmp_path, "run", str(BOOTABLE / "hello.bin"), "--backend", "mock",
                  "--memory", "100T")
    assert proc.returncode == 2, proc.stderr
    line = proc.stderr.strip()
    assert line.startswith("kvmcpu run: --memory 100T: guest RAM of 100 TiB: the host cannot "
                           "map it"), line
    assert "the host has " in line and "of RAM" in line and "reserved lazily" in line
    assert len(proc.stderr.splitlines()) == 1


def test_limits_that_are_not_limits(tmp_path: Path) -> None:
    hello = str(BOOTABLE / "hello.bin")
    for value in ("inf", "nan"):
        proc = kvmcpu(tmp_path, "run", hello, "--max-seconds", value)
        assert proc.returncode == 2
        assert "must be a finite number of seconds >= 0" in proc.stderr
        assert "non-negative number" not in proc.stderr


def test_restore_messages_name_what_was_given(tmp_path: Path) -> None:
    proc = kvmcpu(tmp_path, "run", "--restore", str(BOOTABLE / "hello.bin"))
    assert proc.returncode == 2
    assert "not a checkpoint (a checkpoint is a directory holding m5.cpt" in proc.stderr
    assert "no such checkpoint directory" not in proc.stderr
    out = tmp_path / "m5out"
    for tick in ("1000", "20000"):
        (out / f"cpt.{tick}").mkdir(parents=True)
        (out / f"cpt.{tick}" / "m5.cpt").write_text("")
    proc = kvmcpu(tmp_path, "run", "--restore", "m5out")
    assert proc.returncode == 2
    assert proc.stderr == ("kvmcpu run: --restore m5out: not a checkpoint (no m5.cpt), but it "
                           "holds 2: m5out/cpt.1000, m5out/cpt.20000; restore one of those\n")
    (tmp_path / "empty").mkdir()
    proc = kvmcpu(tmp_path, "run", "--restore", "empty")
    assert proc.stderr == ("kvmcpu run: --restore empty: not a checkpoint directory "
                           "(no m5.cpt in it)\n")


def test_unknown_checkpoint_keys_are_one_line(tmp_path: Path) -> None:
    (tmp_path / "cpt.1").mkdir()
    (tmp_path / "cpt.1" / "m5.cpt").write_text("")
    patch = ("import warnings\n"
             "from kvmcpu.errors import CheckpointError\n"
             "from kvmcpu.sim.checkpoint import UnknownCheckpointKeyWarning\n"
             "from kvmcpu.system import System\n"
             "def restore(directory, **kwargs):\n"
             "    warnings.warn(f'checkpoint {directory}: unknown manifest keys ignored: x.y',\n"
             "                  UnknownCheckpointKeyWarning, stacklevel=2)\n"
             "    raise CheckpointError('stop here')\n"
             "System.restore = restore\n")
    proc = start(tmp_path, "run", "--restore", "cpt.1", "--backend", "mock", patch=patch)
    err = finish(proc, [])
    assert proc.returncode == 2
    assert err == ("kvmcpu run: warning: checkpoint cpt.1: unknown manifest keys ignored: x.y\n"
                   "kvmcpu run: stop here\n")


# ------------------------------------------------------------------ items 18, 19: help, README
def test_run_help_shows_defaults_and_statuses_in_plain_text(tmp_path: Path) -> None:
    proc = kvmcpu(tmp_path, "run", "--help")
    assert proc.returncode == 0
    text = proc.stdout
    for default in ("(default: 128M)", "(default: auto)", "(default: m5out)", "(default: stdio)",
                    "(default: 0: until the next event)"):
        assert default in text
    assert "``" not in text and "====" not in text and ":meth:" not in text
    for status in ("124", "125", "126", "129, 130, 143", "(v << 1) | 1"):
        assert status in text


def test_readme_lists_every_exit_status() -> None:
    from kvmcpu import system

    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("| status | meaning |"):]
    table = table[:table.index("\n\n")]
    for name in ("STATUS_TIMEOUT", "STATUS_TRIPLE_FAULT", "STATUS_VCPU_ERROR", "STATUS_SIGINT",
                 "STATUS_SIGTERM", "STATUS_SIGHUP", "STATUS_ERROR", "STATUS_USAGE"):
        assert f"| {getattr(system, name)}" in table or f", {getattr(system, name)}" in table, name
    assert "isa-debug-exit" in table and "status 1" in table  # the ambiguity is spelled out
    usage = readme[readme.index("kvmcpu run IMAGE"):readme.index("`python -m kvmcpu` works")]
    assert "[--memory 128M]" not in usage and "[--stats-file stats.txt]" not in usage


def test_stats_to_stdout_and_a_fifo(tmp_path: Path) -> None:
    """Not regular files: written in place (no temporary file, no rename)."""
    proc = kvmcpu(tmp_path, "run", str(BOOTABLE / "hello64.bin"), "--backend", "mock",
                  "--memory", "8M", "--serial", "none", "--stats-json", "/dev/stdout")
    assert proc.returncode == 1, proc.stderr
    assert json.loads(proc.stdout)["stats"]["system.cpu0.numIO"]["value"] > 0
    fifo = tmp_path / "stats.fifo"
    os.mkfifo(fifo)
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        proc = kvmcpu(tmp_path, "run", str(BOOTABLE / "hello64.bin"), "--backend", "mock",
                      "--memory", "8M", "--serial", "none", "--stats-file", str(fifo))
        out, _ = reader.communicate(timeout=60)
    finally:
        reader.kill()
        reader.wait()
    assert proc.returncode == 1, proc.stderr
    assert out.count(BEGIN) == 1


@pytest.mark.kvm
def test_guest_ram_whose_kvm_bookkeeping_the_host_cannot_hold(tmp_path: Path) -> None:
    """On a shadow-paging host KVM allocates 8 bytes of kernel memory per guest page when
    the RAM is registered (minutes and the OOM killer for a few TiB): refused up front.
    The host is made to look small, so that a regression costs seconds, not the host."""
    patch = ("from kvmcpu.mem import physmem\n"
             "physmem.host_meminfo = lambda: {'MemTotal': 2 << 30, 'MemAvailable': 1 << 30}\n"
             "physmem.kvm_shadow_paging = lambda sys_module='/sys/module': True\n")
    proc = start(tmp_path, "run", str(BOOTABLE / "hello.bin"), "--backend", "kvm",
                 "--memory", "1T", "--timeout", "30", patch=patch)
    err = finish(proc, [])
    assert proc.returncode == 2, err
    assert err == ("kvmcpu run: --memory 1T: guest RAM of 1 TiB needs 2 GiB of kernel memory "
                   "for KVM's page bookkeeping on this host (shadow paging: kvm.tdp_mmu=N), "
                   "more than half of the 1 GiB available (the mock backend has no such "
                   "cost)\n")
