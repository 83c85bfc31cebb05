"""KVM exits per second through the whole CPU model, next to a C KVM_RUN loop.

The guest is ``guests/out_loop.bin`` (``out dx, al; jmp $-1``). The Python
side runs it the way a simulation does: an :class:`X86KvmCPU` ticked by the
event queue under a Root, with its POSIX run timer, host-clock counters and
statistics; each OUT is serviced on the next tick through the IO bus by a
sink device, which ends the simulation loop after N exits. The C side is
``benchmarks/c/exit_loop.c`` (compiled with the helper of
``bench_exit_roundtrip``), a bare KVM_RUN loop that checks the exit reason
and port. Both run in the same process tree, pinned to one CPU, interleaved
(C, Python, C, Python ...), in 16-bit real mode and in 64-bit CPL3 (IOPL=3 so
that OUT does not fault). Figures are medians over the rounds (5;
``--quick``: 3) and the ratio is the median of the per-round ratios.

Target: the whole Python exit path reaches at least 0.67 of C's exits/s
(``ratio`` is the worse of the two modes).

Next to both, each round also measures the *floor*: the same machine driven by
one flat Python loop that does only what the target asks of the model per
exit (the IO bus, the sink, the per-exit stats, two host-clock reads, the run
timer's deadline check; see :func:`_floor_exits_per_s`). ``*_floor_ratio`` is
what any Python exit path can reach on this interpreter and host, and
``*_share_of_floor`` how close the CPU model comes to it.

The script also prints where the time goes: a per-exit profile (cProfile,
the functions with the most own time per exit) and the split between time
inside KVM_RUN and the rest.

Run: ``python benchmarks/bench_cpu_exit_path.py [--quick] [--no-profile]``.
"""

from __future__ import annotations

import cProfile
import gc
import importlib.util
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Tuple

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from kvmcpu.backends.exits import IoExit  # noqa: E402
from kvmcpu.cpu.kvm import KvmVM, X86KvmCPU  # noqa: E402
from kvmcpu.cpu.kvm.timer import PosixKvmTimer  # noqa: E402
from kvmcpu.cpu.kvm.x86 import long_mode_context, long_mode_tables, real_mode_context  # noqa: E402
from kvmcpu.hostmem import HostMemory  # noqa: E402
from kvmcpu.mem.bus import IoBus, MmioBus  # noqa: E402
from kvmcpu.sim.eventq import MAX_TICK, EventQueue, exit_sim_loop  # noqa: E402
from kvmcpu.sim.simobject import Root  # noqa: E402

TARGET_RATIO = 0.67
PORT = 0x3F8
IMAGE = ROOT / "guests" / "out_loop.bin"
MODES = ("real", "cpl3")
CODE = 0x1000
TABLES = 0x9000


def _roundtrip() -> ModuleType:
    """benchmarks/bench_exit_roundtrip.py (its C build and C run helpers)."""
    spec = importlib.util.spec_from_file_location("kvmcpu_bench_exit_roundtrip",
                                                  HERE / "bench_exit_roundtrip.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Sink:
    """The OUT port's device: counts writes and ends the loop after ``limit`` of them."""

    def __init__(self, queue: EventQueue) -> None:
        self.queue = queue
        self.count = 0
        self.limit = 0

    def read(self, offset: int, size: int) -> int:
        return 0

    def write(self, offset: int, size: int, value: int) -> None:
        self.count += 1
        if self.count == self.limit:
            exit_sim_loop("enough exits", 0, queue=self.queue)


class Machine:
    """Root + KvmVM(kvm) + 64 KiB RAM + IO bus with the sink + X86KvmCPU running out_loop."""

    def __init__(self, mode: str) -> None:
        self.queue = EventQueue("bench")
        self.root = Root(eventq=self.queue)
        self.ram = HostMemory(0x10000)
        self.vm = KvmVM("kvm_vm", self.root, backend="kvm")
        self.io = IoBus(unclaimed="raise")
        self.sink = Sink(self.queue)
        self.io.add(PORT, 1, self.sink)
        self.cpu = X86KvmCPU("cpu0", self.root, vm=self.vm, io_bus=self.io,
                             mmio_bus=MmioBus(unclaimed="raise"))
        self.vm.add_ram(0, self.ram)
        code = IMAGE.read_bytes()
        self.ram[CODE:CODE + len(code)] = code
        if mode == "real":
            tc = real_mode_context(0, CODE)
        else:
            tables = long_mode_tables(TABLES)
            self.ram[TABLES:TABLES + len(tables["blob"])] = tables["blob"]
            tc = long_mode_context(CODE, cpl=3, iopl=3, cr3=tables["cr3"],
                                   gdt_base=tables["gdt_base"])
        tc.rdx = PORT
        tc.rax = ord("x")
        self.cpu.setThreadContext(tc)
        self.root.instantiate()
        self.cpu.activateContext()

    def run(self, n: int) -> float:
        """Seconds for the next ``n`` exits (simulated, serviced, counted)."""
        self.sink.limit = self.sink.count + n
        t0 = time.perf_counter()
        ev = self.root.simulate()
        elapsed = time.perf_counter() - t0
        if ev.cause != "enough exits":
            raise RuntimeError(f"the loop stopped early: {ev.cause}")
        return elapsed

    def close(self) -> None:
        self.cpu.close()
        self.vm.close()
        self.ram.close()


def _python_exits_per_s(mode: str, n: int) -> float:
    m = Machine(mode)
    try:
        m.run(200)
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            elapsed = m.run(n)
        finally:
            if gc_was_enabled:
                gc.enable()
        stats = m.cpu.stats
        if stats.numIO.value < n:
            raise RuntimeError(f"only {stats.numIO.value} IO exits were serviced")
        return n / elapsed
    finally:
        m.close()


def _floor_exits_per_s(mode: str, n: int) -> float:
    """The floor: the least Python per exit that still does what the target asks of
    the CPU model, written as one flat loop over the same machine.

    Each exit is serviced through the IO bus's cached mapping into the sink device,
    counted in the four per-exit stats (numVMExits, numIO, numCycles, numInsts) and
    hostSecondsInKvm, timed with two host-clock reads, and the next entry keeps the
    run timer's armed deadline (re-arming it only when it is due) and moves the
    queue's time on. No state machine, no overridable handlers, no method layers:
    what is left is ctypes' KVM_RUN call, the decode and the bookkeeping itself.
    The CPU model cannot be faster than this on the same interpreter and host.
    """
    m = Machine(mode)
    try:
        m.run(200)
        cpu, eq, io_bus = m.cpu, m.queue, m.io
        cpu.deschedule(cpu.tick_event)
        eq.next_tick()  # drops the descheduled entry from the heap
        vcpu, timer, stats = cpu.vcpu, cpu.run_timer, cpu.stats
        if vcpu is None or not isinstance(timer, PosixKvmTimer):
            raise RuntimeError("the floor loop needs a KVM vCPU with its POSIX run timer")
        run, heap, cache = vcpu.run, eq._heap, io_bus._cache
        num_io, num_exits = stats.numIO, stats.numVMExits
        num_cycles, num_insts, seconds = stats.numCycles, stats.numInsts, stats.hostSecondsInKvm
        min_quantum, ticks_per_ns = timer.min_quantum_ns, 1000
        clock = time.perf_counter_ns
        ex = run()
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            t_start = time.perf_counter()
            for _ in range(n):
                while type(ex) is not IoExit:  # a timer signal: take it, enter again
                    timer.after_run(True)
                    ex = run()
                num_io.value += 1
                mapping = cache[ex.port]
                mapping.device.write(ex.port - mapping.start, ex.size,
                                     int.from_bytes(ex.data, "little"))
                next_tick = heap[0][0] if heap else MAX_TICK
                t0 = clock()
                deadline = timer.deadline
                if deadline is None or deadline - t0 < min_quantum:
                    timer.arm(next_tick - eq.cur_tick)
                ex = run()
                elapsed = clock() - t0
                seconds.value += elapsed * 1e-9
                cycles = int(elapsed * 2.0)
                num_cycles.value += cycles
                num_insts.value += cycles
                num_exits.value += 1
                eq.cur_tick += elapsed * ticks_per_ns
            elapsed_all = time.perf_counter() - t_start
        finally:
            if gc_was_enabled:
                gc.enable()
        if m.sink.count < n:
            raise RuntimeError(f"the sink saw only {m.sink.count} writes")
        return n / elapsed_all
    finally:
        m.close()


def profile(mode: str, n: int, top: int = 14) -> str:
    """A per-exit profile of ``n`` exits: cProfile's own time per exit, the top functions,
    and the share of wall time spent inside KVM_RUN (the hostSecondsInKvm stat)."""
    m = Machine(mode)
    try:
        m.run(200)
        m.cpu.stats.hostSecondsInKvm.reset()
        wall = m.run(n)
        in_kvm = float(m.cpu.stats.hostSecondsInKvm.value)
        prof = cProfile.Profile()
        prof.enable()
        m.run(n)
        prof.disable()
    finally:
        m.close()
    out = io.StringIO()
    out.write(f"{mode}: {wall / n * 1e6:.2f} us per exit, of which {in_kvm / n * 1e6:.2f} us "
              f"inside KVM_RUN ({in_kvm / wall:.0%}) and {(wall - in_kvm) / n * 1e6:.2f} us "
              "in Python (unprofiled run)\n")
    st = pstats.Stats(prof)
    rows: List[Tuple[float, int, str]] = []
    for (filename, line, func), (_cc, ncalls, tottime, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        where = f"{Path(filename).name}:{line}({func})" if line else func
        rows.append((tottime, ncalls, where))
    rows.sort(reverse=True)
    total = sum(r[0] for r in rows)
    out.write(f"  profiled: {total / n * 1e6:.2f} us per exit (cProfile inflates Python calls)\n")
    out.write(f"  {'own us/exit':>11s} {'calls/exit':>10s}  function\n")
    for tottime, ncalls, where in rows[:top]:
        out.write(f"  {tottime / n * 1e6:11.3f} {ncalls / n:10.2f}  {where}\n")
    return out.getvalue()


def run(quick: bool = False, *, show_profile: bool = False) -> Dict[str, Any]:
    """Measure and return the figures (see the module docstring)."""
    rt = _roundtrip()
    reason = rt.kvm_skip_reason()
    if reason is not None:
        return {"skipped": reason}
    repeats = 3 if quick else 5
    counts = {"real": 5_000 if quick else 20_000, "cpl3": 2_000 if quick else 6_000}
    samples: Dict[Tuple[str, str], List[float]] = {}
    profiles: List[str] = []
    with tempfile.TemporaryDirectory(prefix="kvmcpu-bench-") as tmp:
        try:
            exe = rt._build_c(Path(tmp))
        except Exception as err:  # noqa: BLE001 - CalledProcessError and friends
            return {"skipped": f"cannot compile the C baseline: {err}"}
        if exe is None:
            return {"skipped": "no C compiler (cc) for the baseline"}
        with rt.pinned_to_one_cpu():
            for _ in range(repeats):
                for mode in MODES:
                    n = counts[mode]
                    samples.setdefault(("c", mode), []).append(rt._c_exits_per_s(exe, mode, n))
                    samples.setdefault(("py", mode), []).append(_python_exits_per_s(mode, n))
                    samples.setdefault(("floor", mode), []).append(_floor_exits_per_s(mode, n))
            if show_profile:
                for mode in MODES:
                    profiles.append(profile(mode, counts[mode] // 2))
    figures: Dict[str, Any] = {}
    ratios = []
    for mode in MODES:
        c_all, py_all = samples[("c", mode)], samples[("py", mode)]
        ratio = statistics.median(p / q for p, q in zip(py_all, c_all))
        floor_all = samples[("floor", mode)]
        figures[f"{mode}_python_exits_per_s"] = statistics.median(py_all)
        figures[f"{mode}_c_exits_per_s"] = statistics.median(c_all)
        figures[f"{mode}_ratio"] = ratio
        figures[f"{mode}_best_ratio"] = max(py_all) / max(c_all)
        figures[f"{mode}_python_us_per_exit"] = 1e6 / statistics.median(py_all)
        figures[f"{mode}_c_us_per_exit"] = 1e6 / statistics.median(c_all)
        figures[f"{mode}_floor_exits_per_s"] = statistics.median(floor_all)
        figures[f"{mode}_floor_ratio"] = statistics.median(
            f / q for f, q in zip(floor_all, c_all))
        figures[f"{mode}_share_of_floor"] = statistics.median(
            p / f for p, f in zip(py_all, floor_all))
        ratios.append(ratio)
    figures["rounds"] = repeats
    result: Dict[str, Any] = {"figures": figures, "ratio": min(ratios), "target": TARGET_RATIO,
                              "higher_is_better": True}
    if profiles:
        result["profile"] = "\n".join(profiles)
    return result


def main(argv: List[str]) -> int:
    result = run(quick="--quick" in argv, show_profile="--no-profile" not in argv)
    if "skipped" in result:
        print(f"skipped: {result['skipped']}")
        return 0
    for key, value in result["figures"].items():
        print(f"{key:32s} {value:,.3f}" if isinstance(value, float) else f"{key:32s} {value}")
    print(f"{'ratio (worst mode)':32s} {result['ratio']:.3f} (target >= {result['target']})")
    print("PASS" if result["ratio"] >= TARGET_RATIO else "MISS")
    if "profile" in result:
        print()
        print("Where the time goes (per exit):")
        print(result["profile"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
