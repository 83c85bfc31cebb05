#!/usr/bin/env python3
"""How closely the KVM CPU's run timers honour a quantum on this host.

    python benchmarks/bench_run_timer.py        (or: python benchmarks/run.py run_timer)

A spinning guest (``guests/spin.bin``, real mode: on a nested host KVM's emulator
runs it) is simulated for 40 quanta with the POSIX timer (the default) and with
the perf-overflow timer (usePerfOverflow: hardware cycles where a PMU exists, else
the task-clock software event), for quanta of 2 ms and 200 us. Every entry ends on
the timer's signal; the figure is how much simulated time an entry took against
the quantum it was given (executed / requested: 1.0 is exact, 4 means the entry
ran four quanta before the signal stopped it), p50 and p90 per timer and quantum,
measured side by side in one run. These were a timed assertion in the perf-timer
test before (an overshoot of 3-5x on an Intel host failed it): they are host
properties, so they are figures here. Ratio: perf p50 / POSIX p50 at 2 ms.

Beside them, the run-timer floor's own criterion (kvmcpu.cpu.kvm.timer
.measure_min_quantum_ns): the share of a long run's work a counting guest gets in
one entry at the measured floor (``floor_share``; the calibration picks the first
quantum giving at least half) and at 5 us (``tiny_share``, below what an interrupted
entry costs on a nested host). These were timed assertions in a unit test before.
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

MS = 1_000_000_000  # ticks per ms (1 THz simulated tick)


def _overshoots(perf: bool, quantum: int, quanta: int) -> List[float]:
    from cpu_rig import CpuRig

    rig = CpuRig("kvm", "spin", quantum=quantum, usePerfOverflow=perf).start()
    try:
        ratios: List[float] = []
        original = rig.cpu.kvmRun

        def run(ticks: int) -> int:
            executed = original(ticks)
            if ticks >= quantum:
                ratios.append(executed / ticks)
            return int(executed)

        rig.cpu.kvmRun = run  # type: ignore[method-assign]
        rig.simulate(quanta * quantum)
        return ratios
    finally:
        rig.close()


def run(quick: bool = False) -> Dict[str, Any]:
    from kvmcpu.backends import get_backend
    from kvmcpu.errors import BackendUnavailableError

    try:
        get_backend("kvm").close()
    except BackendUnavailableError as err:
        return {"skipped": f"KVM unusable: {err.reason}"}
    quanta = 15 if quick else 40
    figures: Dict[str, Any] = {}
    p50 = {}
    for quantum, label in ((2 * MS, "2ms"), (MS // 5, "200us")):
        for perf, name in ((False, "posix"), (True, "perf")):
            r = sorted(_overshoots(perf, quantum, quanta))
            if not r:
                figures[f"{name}_{label}_entries"] = 0
                continue
            figures[f"{name}_{label}_entries"] = len(r)
            figures[f"{name}_{label}_p50"] = statistics.median(r)
            figures[f"{name}_{label}_p90"] = r[min(len(r) - 1, int(0.9 * len(r)))]
            p50[(name, label)] = statistics.median(r)
    from kvmcpu.cpu.kvm import timer as timer_module

    with get_backend("kvm") as kvm:
        floor = timer_module.measure_min_quantum_ns(kvm)
        with timer_module.CountingGuest(kvm) as guest:
            per_ns = max(guest.work(1_000_000) for _ in range(3)) / 1_000_000
            figures["floor_us"] = floor / 1000
            figures["floor_share"] = max(guest.work(floor) for _ in range(5)) / (per_ns * floor)
            figures["tiny_share"] = min(guest.work(5_000) for _ in range(5)) / (per_ns * 5_000)
    ratio = p50.get(("perf", "2ms"), 0.0) / p50.get(("posix", "2ms"), 1.0)
    return {"figures": figures, "ratio": ratio, "target": 2.0, "higher_is_better": False}


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for k, v in out.get("figures", {}).items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    if "skipped" in out:
        print("skipped:", out["skipped"])
    else:
        print(f"ratio (perf p50 / posix p50 at 2 ms): {out['ratio']:.2f} (target <= 2)")
