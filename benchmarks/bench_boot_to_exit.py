"""Boot to exit: ``kvmcpu run kvmcpu/guests/hello.bin`` next to QEMU booting the same kernel.

Wall time from process start to exit, median of the rounds (7; ``--quick``: 3),
the two commands interleaved so load from other processes hits both alike:

* kvmcpu: ``python -m kvmcpu run kvmcpu/guests/hello.bin --backend kvm`` (``sys.executable``,
  not a pyenv shim). The package is copied to a temporary directory and
  byte-compiled first, as ``pip install`` leaves it; ``kvmcpu_no_bytecode_s`` is
  the same run from the bare source tree when no ``__pycache__`` can be used
  (``PYTHONDONTWRITEBYTECODE=1`` and none written yet), for comparison.
* QEMU: ``qemu-system-x86_64 -accel kvm -kernel kvmcpu/guests/hello.bin -device
  isa-debug-exit,iobase=0xf4,iosize=4 -serial stdio -display none -nodefaults
  -no-reboot`` (Debian's qemu-system-x86). QEMU boots its SeaBIOS first, which on
  hosts that emulate real mode (kvm_pvm) is most of its time.

Both must print hello's four lines and exit with status 1 (debug-exit 0); a
mismatch is an error, not a figure. ``ratio`` = kvmcpu / QEMU, target <= 0.25.
Without QEMU (or when it cannot use KVM) the QEMU side is skipped, the reason is
in ``figures["qemu"]`` and there is no ratio.

Where kvmcpu's time goes: ``python_startup_s`` (``python -c pass``: the
interpreter and site, outside kvmcpu's control) and ``import_system_s``
(``python -c "import kvmcpu.system"``, byte-compiled) are measured in the same
rounds.

Second figure, in-process (after a warm-up run, so imports are not counted):
VM set-up time, from ``System(...)`` to the first KVM_RUN entered
(``setup_to_first_kvm_run_ms``, target < 5 ms) and to its first return
(``setup_to_first_exit_ms``: also includes the guest's own code up to its first
exit, hello's page-table loop, run by KVM's emulator on kvm_pvm hosts), and the
CPU time this process spent up to the entry (``setup_cpu_ms``: less sensitive to
other load on the host than the wall time).

Run as a script: ``python benchmarks/bench_boot_to_exit.py [--quick]``.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
IMAGE = ROOT / "kvmcpu" / "guests" / "hello.bin"
TARGET_RATIO = 0.25
SETUP_TARGET_MS = 5.0
HELLO_LINES = "Hello from kvmcpu!\nfw_cfg signature: QEMU\nfw_cfg cpus: 1\n"
QEMU = "qemu-system-x86_64"


def qemu_command(image: Path) -> List[str]:
    return [QEMU, "-accel", "kvm", "-kernel", str(image), "-device",
            "isa-debug-exit,iobase=0xf4,iosize=4", "-serial", "stdio", "-display", "none",
            "-nodefaults", "-no-reboot"]


def _timed(cmd: List[str], env: Dict[str, str], cwd: Path,
           check: Optional[Callable[[subprocess.CompletedProcess[str]], None]] = None
           ) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=cwd, timeout=300)
    elapsed = time.perf_counter() - t0
    if check is not None:
        check(proc)
    return elapsed


def _check_hello(who: str) -> Callable[[subprocess.CompletedProcess[str]], None]:
    def check(proc: subprocess.CompletedProcess[str]) -> None:
        if proc.returncode != 1 or not proc.stdout.startswith(HELLO_LINES):
            raise RuntimeError(f"{who}: status {proc.returncode}, stdout {proc.stdout!r}, "
                               f"stderr {proc.stderr[-500:]!r}")
    return check


def _check_ok(who: str) -> Callable[[subprocess.CompletedProcess[str]], None]:
    def check(proc: subprocess.CompletedProcess[str]) -> None:
        if proc.returncode != 0:
            raise RuntimeError(f"{who}: status {proc.returncode}: {proc.stderr[-500:]}")
    return check


def _qemu_unusable(env: Dict[str, str], cwd: Path) -> Optional[str]:
    """None when QEMU boots hello with KVM, else why the QEMU side is skipped."""
    if shutil.which(QEMU) is None:
        return (f"{QEMU} is not installed (Debian/Ubuntu: apt-get install qemu-system-x86); "
                "no ratio")
    try:
        proc = subprocess.run(qemu_command(IMAGE), capture_output=True, text=True, env=env,
                              cwd=cwd, timeout=300)
    except subprocess.TimeoutExpired:
        return f"{QEMU} did not finish booting hello.bin in 300 s; no ratio"
    if proc.returncode != 1 or not proc.stdout.startswith(HELLO_LINES):
        err = proc.stderr.strip().splitlines()
        return (f"{QEMU} -accel kvm failed (status {proc.returncode}: "
                f"{err[-1] if err else 'no message'}); no ratio")
    return None


def _setup_times(rounds: int) -> Tuple[List[float], List[float], List[float]]:
    """In-process: ms from System(...) to the first KVM_RUN entered / returned, and the
    CPU time (user + system, this process) up to the entry."""
    try:
        from kvmcpu.system import System
    except ImportError:  # run as a script from a source checkout
        sys.path.insert(0, str(ROOT))
        from kvmcpu.system import System

    enter: List[float] = []
    ret: List[float] = []
    cpu_ms: List[float] = []
    for i in range(rounds + 1):
        marks: Dict[str, float] = {}
        c0 = time.process_time()
        t0 = time.perf_counter()
        system = System(backend="kvm", serial=None)
        try:
            cpu: Any = system.cpu
            original = cpu.ioctlRun

            def first_run(original: Any = original, cpu: Any = cpu,
                          marks: Dict[str, float] = marks) -> Any:
                marks["enter"] = time.perf_counter()
                marks["cpu"] = time.process_time()
                ex = original()
                marks["return"] = time.perf_counter()
                cpu.ioctlRun = original  # once: the rest of the run is not instrumented
                return ex

            cpu.ioctlRun = first_run
            system.load(IMAGE)
            result = system.run(max_seconds=1, timeout=60)
            if result.status != 1:
                raise RuntimeError(f"in-process hello ended with {result}")
        finally:
            system.close()
        if i:  # round 0 warms up (imports, caches)
            enter.append((marks["enter"] - t0) * 1e3)
            ret.append((marks["return"] - t0) * 1e3)
            cpu_ms.append((marks["cpu"] - c0) * 1e3)
    return enter, ret, cpu_ms


def run(quick: bool = False) -> Dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return {"skipped": "/dev/kvm is not usable"}
    rounds = 3 if quick else 7
    py = sys.executable
    with tempfile.TemporaryDirectory(prefix="kvmcpu-bench-boot-") as tmp_name:
        tmp = Path(tmp_name)
        # The package as an install leaves it: a copy with its bytecode compiled.
        shutil.copytree(ROOT / "kvmcpu", tmp / "kvmcpu",
                        ignore=shutil.ignore_patterns("__pycache__"))
        subprocess.run([py, "-m", "compileall", "-q", str(tmp / "kvmcpu")], check=True,
                       stdout=subprocess.DEVNULL)
        env = dict(os.environ, PYTHONPATH=str(tmp))
        env.pop("PYTHONPYCACHEPREFIX", None)  # it would hide the stdlib's bytecode too
        # The bare checkout, where no bytecode cache exists (skipped when one does).
        env_src = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONDONTWRITEBYTECODE="1")
        env_src.pop("PYTHONPYCACHEPREFIX", None)
        kvmcpu_cmd = [py, "-m", "kvmcpu", "run", str(IMAGE), "--backend", "kvm",
                      "--no-progress"]
        why_no_qemu = _qemu_unusable(env, tmp)
        check_kvmcpu = _check_hello("kvmcpu")
        _timed(kvmcpu_cmd, env, tmp, check_kvmcpu)  # warm the page cache
        samples: Dict[str, List[float]] = {}
        nopyc_ok = not any((ROOT / "kvmcpu").rglob("__pycache__"))
        for _ in range(rounds):
            samples.setdefault("kvmcpu", []).append(_timed(kvmcpu_cmd, env, tmp, check_kvmcpu))
            if why_no_qemu is None:
                samples.setdefault("qemu", []).append(
                    _timed(qemu_command(IMAGE), env, tmp, _check_hello("qemu")))
            samples.setdefault("python", []).append(
                _timed([py, "-c", "pass"], env, tmp, _check_ok("python")))
            samples.setdefault("import", []).append(
                _timed([py, "-c", "import kvmcpu.system"], env, tmp, _check_ok("import")))
            if nopyc_ok:
                samples.setdefault("nopyc", []).append(  # cwd: -m puts it first on sys.path
                    _timed(kvmcpu_cmd, env_src, ROOT, check_kvmcpu))
    enter, ret, cpu_ms = _setup_times(rounds * 3)
    figures: Dict[str, Any] = {
        "kvmcpu_s": statistics.median(samples["kvmcpu"]),
        "kvmcpu_best_s": min(samples["kvmcpu"]),
    }
    ratio: Optional[float] = None
    if why_no_qemu is None:
        figures["qemu_s"] = statistics.median(samples["qemu"])
        figures["qemu_best_s"] = min(samples["qemu"])
        ratio = statistics.median(k / q for k, q in zip(samples["kvmcpu"], samples["qemu"]))
    else:
        figures["qemu"] = f"skipped: {why_no_qemu}"
    figures["python_startup_s"] = statistics.median(samples["python"])
    figures["import_system_s"] = statistics.median(samples["import"])
    if "nopyc" in samples:
        figures["kvmcpu_no_bytecode_s"] = statistics.median(samples["nopyc"])
    figures["setup_to_first_kvm_run_ms"] = statistics.median(enter)
    figures["setup_to_first_exit_ms"] = statistics.median(ret)
    figures["setup_cpu_ms"] = statistics.median(cpu_ms)
    figures["setup_target_ms"] = SETUP_TARGET_MS
    figures["rounds"] = rounds
    return {
        "figures": figures,
        "ratio": ratio,
        "target": TARGET_RATIO,
        "higher_is_better": False,
    }


def main(argv: List[str]) -> int:
    result = run(quick="--quick" in argv)
    if "skipped" in result:
        print(f"skipped: {result['skipped']}")
        return 0
    for key, value in result["figures"].items():
        print(f"{key:28s} {value:,.4f}" if isinstance(value, float) else f"{key:28s} {value}")
    ratio = result["ratio"]
    if ratio is None:
        print(f"{'ratio':28s} none (no QEMU figure)")
        return 0
    print(f"{'ratio (kvmcpu / QEMU)':28s} {ratio:.3f} (target <= {result['target']})")
    print("PASS" if ratio <= TARGET_RATIO else "MISS")
    setup = result["figures"]["setup_to_first_kvm_run_ms"]
    print(f"set-up {setup:.2f} ms: {'PASS' if setup < SETUP_TARGET_MS else 'MISS'} "
          f"(target < {SETUP_TARGET_MS} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
