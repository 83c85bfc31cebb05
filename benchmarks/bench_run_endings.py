"""How promptly a run ends when asked: the host deadline and a stop request.

* ``deadline_overrun_ms_<backend>``: ``System.run(timeout=T)`` -- how far past T
  the run returned, on the mock with a guest of cold code (a 3-byte flat image,
  ``/etc/hostname``-like, running into zeroed RAM: the mock translates new
  blocks all the time), on KVM with ``jmp $`` in real mode (KVM emulates it on
  a nested kvm_pvm host; that cold-code guest halts there before the deadline).
  The target is 500 ms on both backends (issue 11: before the host timer, the
  mock overran a 3 s deadline by 7 s).
* ``stop_latency_ms_<backend>``: ``System.request_stop()`` from another thread
  while a guest spins -- how long until run() returned.

Run as a script: ``python benchmarks/bench_run_endings.py [--quick]``.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

try:
    from kvmcpu import System
    from kvmcpu.backends import get_backend
    from kvmcpu.errors import BackendUnavailableError
except ImportError:  # run as a script from a source checkout
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from kvmcpu import System
    from kvmcpu.backends import get_backend
    from kvmcpu.errors import BackendUnavailableError

TARGET_MS = 500.0
COLD_CODE = b"vm\n"
SPIN = bytes.fromhex("eb fe")


def _backends() -> List[str]:
    names = ["mock"]
    try:
        get_backend("kvm").close()
        names.append("kvm")
    except BackendUnavailableError:
        pass
    return names


def _overrun_ms(backend: str, timeout: float) -> float:
    with System(memory="16M", backend=backend) as system:
        system.load(COLD_CODE if backend == "mock" else SPIN, fmt="flat")
        result = system.run(timeout=timeout)
        if result.cause != "host timeout":
            raise RuntimeError(f"{backend}: the guest ended first ({result.cause})")
        return (result.host_seconds - timeout) * 1e3


def _stop_latency_ms(backend: str, after: float) -> float:
    with System(memory="2M", backend=backend) as system:
        system.load(SPIN, fmt="flat")
        system.run(max_ticks=1_000_000)  # the vCPU exists
        asked: List[float] = []

        def stop() -> None:
            asked.append(time.monotonic())
            system.request_stop()

        timer = threading.Timer(after, stop)
        timer.start()
        system.run(timeout=60)
        done = time.monotonic()
        timer.join()
        return (done - asked[0]) * 1e3


def run(quick: bool = False) -> Dict[str, Any]:
    rounds = 1 if quick else 3
    timeout = 1.0 if quick else 3.0
    figures: Dict[str, float] = {}
    for backend in _backends():
        figures[f"deadline_overrun_ms_{backend}"] = max(
            _overrun_ms(backend, timeout) for _ in range(rounds))
        figures[f"stop_latency_ms_{backend}"] = statistics.median(
            _stop_latency_ms(backend, 0.5) for _ in range(rounds))
    figures["deadline_s"] = timeout
    worst = max(v for k, v in figures.items() if k.startswith("deadline_overrun"))
    return {"figures": figures, "ratio": worst / TARGET_MS, "target": 1.0,
            "higher_is_better": False}


def main(argv: List[str]) -> int:
    result = run(quick="--quick" in argv)
    for key, value in result["figures"].items():
        print(f"{key:32s} {value:,.1f}")
    print(f"{'worst overrun / target':32s} {result['ratio']:.3f} (target <= 1, "
          f"{TARGET_MS:.0f} ms)")
    print("PASS" if result["ratio"] <= 1 else "MISS")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
