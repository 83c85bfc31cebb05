"""Throughput of a CPL3 compute guest on 1 and 2 vCPUs (several host threads).

The guest is ``guests/smp_compute.bin``: guests/smp.asm's INIT-SIPI-SIPI
bring-up, then every CPU runs 100,000,000 iterations of a CPL3 loop of its own
(no shared data) and the BSP prints the total. The figure is work per host
second: ``N x iterations / host seconds`` of the whole run, for

* 1 vCPU (the one event queue, as every single-CPU run);
* 2 vCPUs on host threads of their own (``System(parallel=True)``: each CPU
  on its own event queue, the queues meeting every ``sim_quantum``);
* 2 vCPUs taking turns on the one event queue (``parallel=False``, 10 us
  turns), for comparison.

* 2 vCPUs on host threads with a 1 ms ``sim_quantum`` instead of the default
  (10 ms): ten times as many meetings of the queues, each a few hundred
  microseconds of host time in Python (thread wake-ups, the GIL).

``ratio`` is the 2-thread throughput (default ``sim_quantum``) over the 1-vCPU
one; the target is 1.8 on a 2-core machine. Other processes competing for the
cores pull it down (the load average is printed with the figures). The full
run uses ``guests/smp_spin.bin`` (2**31 - 1 iterations per CPU, seconds per
run, so the ring-0 bring-up KVM emulates here does not dominate); ``--quick``
uses ``smp_compute.bin`` (10**8 iterations, a fraction of a second per run,
where the bring-up is a large part of the time).

Run: ``python benchmarks/bench_smp_scaling.py [--quick]``.
"""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any, Dict, List

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kvmcpu.system import System  # noqa: E402

#: (image, iterations per CPU) of the full and the quick run.
WORKLOADS = {False: (ROOT / "guests" / "smp_spin.bin", 0x7FFFFFFF),
             True: (ROOT / "guests" / "smp_compute.bin", 100_000_000)}
#: The shorter sim_quantum measured beside the default (1 ms in ticks).
SHORT_QUANTUM = 1_000_000_000


def _seconds(smp: int, parallel: bool, quick: bool, **params: Any) -> float:
    image, iterations = WORKLOADS[quick]
    with System(memory="32M", backend="kvm", smp=smp, parallel=parallel,
                **params) as system:
        system.load(str(image))
        result = system.run(timeout=300)
        want = f"smp: counter {smp * iterations} = {smp} x {iterations}\n".encode()
        if want not in system.serial.output or result.status != 1:
            raise RuntimeError(f"smp={smp} parallel={parallel}: {system.serial.output!r} "
                               f"{result}")
        return result.host_seconds


def run(quick: bool = False) -> Dict[str, Any]:
    try:
        System(memory="1M", backend="kvm").close()
    except Exception as err:  # noqa: BLE001 - the reason is the figure
        return {"skipped": f"KVM unusable: {err}"}
    rounds = 1 if quick else 3
    iterations = WORKLOADS[quick][1]
    one: List[float] = []
    two: List[float] = []
    two_short: List[float] = []
    turns: List[float] = []
    for _ in range(rounds):  # interleaved, so that host load affects each alike
        one.append(_seconds(1, False, quick))
        two.append(_seconds(2, True, quick))
        two_short.append(_seconds(2, True, quick, sim_quantum=SHORT_QUANTUM))
        turns.append(_seconds(2, False, quick))
    t1, t2, ts, tq = (statistics.median(x) for x in (one, two, two_short, turns))
    figures = {
        "1cpu_iterations_per_s": round(iterations / t1),
        "2cpu_threads_iterations_per_s": round(2 * iterations / t2),
        "2cpu_threads_1ms_quantum_iterations_per_s": round(2 * iterations / ts),
        "2cpu_one_queue_iterations_per_s": round(2 * iterations / tq),
        "1cpu_seconds": round(t1, 3),
        "2cpu_threads_seconds": round(t2, 3),
        "2cpu_threads_1ms_quantum_seconds": round(ts, 3),
        "2cpu_one_queue_seconds": round(tq, 3),
        "ratio_1ms_quantum": round(2 * t1 / ts, 3),
        "host_cores": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }
    return {"figures": figures, "ratio": round(2 * t1 / t2, 3),
            "target": 1.8, "higher_is_better": True}


if __name__ == "__main__":
    out = run(quick="--quick" in sys.argv)
    for key, value in out.get("figures", out).items():
        print(f"{key:34} {value}")
    if "ratio" in out:
        print(f"{'ratio (2 threads / 1 vCPU)':34} {out['ratio']} (target {out['target']})")
