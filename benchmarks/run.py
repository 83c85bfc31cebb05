#!/usr/bin/env python3
"""Run the side-by-side benchmarks and print (or save) their figures.

    python benchmarks/run.py [NAME ...] [--json FILE] [--quick] [--baseline DIR [--rounds N]]

Every ``benchmarks/bench_NAME.py`` exposing ``run(quick: bool = False) -> dict``
is a benchmark. The dict holds ``figures`` (name -> number), ``ratio``,
``target`` and ``higher_is_better``, or ``{"skipped": "reason"}`` when the
prerequisites (KVM, a C compiler ...) are missing. The table shows each
benchmark's main figures, its ratio against its target and PASS/MISS;
``--json FILE`` writes ``{"machine": {...}, "benchmarks": {NAME: {...}}}``.
A benchmark is not a test: MISS does not change the exit status.
``--baseline DIR`` (a source checkout of another commit) runs each named benchmark
there and here, alternately, ``--rounds`` times each in fresh processes, and prints the
medians side by side with the host's load average.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # the source checkout's kvmcpu


def discover() -> Dict[str, Path]:
    """NAME -> path of every benchmarks/bench_NAME.py."""
    return {p.stem[len("bench_"):]: p for p in sorted(HERE.glob("bench_*.py"))}


def _load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"kvmcpu_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _kvm_module() -> str:
    mods = [m for m in ("kvm_intel", "kvm_amd", "kvm_pvm") if Path("/sys/module", m).exists()]
    if not mods:
        return "kvm" if Path("/sys/module/kvm").exists() else "none"
    return ", ".join(mods)


def _python_build() -> str:
    """Whether the interpreter was built with PGO/LTO: unoptimised CPython builds (pyenv's
    default) run the exit paths 10-25 % slower, which the Python/C ratios show."""
    import sysconfig

    args = str(sysconfig.get_config_var("CONFIG_ARGS") or "")
    flags = [f for f in ("--enable-optimizations", "--with-lto") if f in args]
    return " ".join(flags) if flags else "no --enable-optimizations/--with-lto in CONFIG_ARGS"


def machine() -> Dict[str, Any]:
    """The facts that make figures comparable between machines."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_build": _python_build(),
        "kvm_module": _kvm_module(),
    }


def run_one(name: str, path: Path, quick: bool) -> Dict[str, Any]:
    """Import and run one benchmark; errors become {"error": ...}."""
    t0 = time.perf_counter()
    try:
        result: Dict[str, Any] = dict(_load(name, path).run(quick=quick))
    except Exception as err:  # noqa: BLE001 - one broken benchmark must not stop the others
        traceback.print_exc()
        return {"error": f"{type(err).__name__}: {err}"}
    result["seconds"] = round(time.perf_counter() - t0, 3)
    return result


def verdict(result: Dict[str, Any]) -> str:
    if "skipped" in result:
        return "SKIP"
    if "error" in result:
        return "ERROR"
    ratio, target = result.get("ratio"), result.get("target")
    if ratio is None or target is None:
        return "-"
    ok = ratio >= target if result.get("higher_is_better", True) else ratio <= target
    return "PASS" if ok else "MISS"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
    return str(value)


def print_table(results: Dict[str, Dict[str, Any]]) -> None:
    print(f"{'benchmark':20s} {'ratio':>8s} {'target':>10s}  verdict  figures")
    for name, res in results.items():
        v = verdict(res)
        if v in ("SKIP", "ERROR"):
            why = res.get("skipped") or res.get("error")
            print(f"{name:20s} {'':>8s} {'':>10s}  {v:7s}  {why}")
            continue
        op = ">=" if res.get("higher_is_better", True) else "<="
        ratio = _fmt(res.get("ratio"))
        target = f"{op} {_fmt(res.get('target'))}"
        figs = res.get("figures", {})
        print(f"{name:20s} {ratio:>8s} {target:>10s}  {v:7s}")
        for key, value in figs.items():
            print(f"{'':42s}  {key} = {_fmt(value)}")


def run_in(tree: Path, name: str, quick: bool) -> Dict[str, Any]:
    """One benchmark run by ``tree``'s own run.py in a fresh process (its kvmcpu)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(tree / "benchmarks" / "run.py"), name, "--json", str(out)]
        env = dict(os.environ, PYTHONPATH=str(tree))
        subprocess.run(cmd + (["--quick"] if quick else []), env=env, cwd=str(tree),
                       stdout=subprocess.DEVNULL, check=False)
        if not out.exists():
            return {"error": f"{tree}: no result"}
        result: Dict[str, Any] = json.loads(out.read_text())["benchmarks"][name]
        return result


def _median(values: List[Any]) -> Any:
    nums = sorted(v for v in values if isinstance(v, (int, float)))
    if not nums:
        return values[0] if values else None
    return nums[len(nums) // 2]


def compare(names: List[str], baseline: Path, quick: bool, rounds: int) -> Dict[str, Any]:
    """Each benchmark run by the baseline checkout and by this one in turn, ``rounds``
    times each, alternating (so both see the same host load); prints the medians side by
    side and the host's load average before and after."""
    here = HERE.parent
    load0 = os.getloadavg()
    out: Dict[str, Any] = {}
    for name in names:
        runs: Dict[str, List[Dict[str, Any]]] = {"baseline": [], "current": []}
        for _ in range(rounds):
            runs["baseline"].append(run_in(baseline, name, quick))
            runs["current"].append(run_in(here, name, quick))
        figures: Dict[str, Dict[str, Any]] = {}
        for side, results in runs.items():
            keys = [k for r in results for k in r.get("figures", {})]
            figures[side] = {k: _median([r.get("figures", {}).get(k) for r in results])
                             for k in dict.fromkeys(keys)}
        out[name] = {"baseline": figures["baseline"], "current": figures["current"],
                     "errors": [r["error"] for rs in runs.values() for r in rs if "error" in r]}
        print(f"{name}: median of {rounds} alternating runs ({baseline} | this checkout)")
        for key in dict.fromkeys([*figures["baseline"], *figures["current"]]):
            b, c = figures["baseline"].get(key), figures["current"].get(key)
            ratio = (f"  x{c / b:.2f}" if isinstance(b, (int, float)) and b
                     and isinstance(c, (int, float)) else "")
            print(f"    {key:36s} {_fmt(b):>12s} | {_fmt(c):>12s}{ratio}")
        for err in out[name]["errors"]:
            print(f"    error: {err}")
    load1 = os.getloadavg()
    print(f"load average (1 min) before {load0[0]:.2f}, after {load1[0]:.2f}")
    out["load_average"] = {"before": load0, "after": load1}
    return out


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run kvmcpu's benchmarks.")
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="benchmarks to run (default: all); e.g. exit_roundtrip")
    parser.add_argument("--json", metavar="FILE", type=Path, help="write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="smaller, faster runs")
    parser.add_argument("--baseline", metavar="DIR", type=Path,
                        help="a source checkout of another commit (e.g. `git archive C | tar "
                             "-x -C DIR`): run each benchmark there and here in turn and "
                             "print the figures side by side")
    parser.add_argument("--rounds", type=int, default=3,
                        help="with --baseline: runs of each side (default 3)")
    args = parser.parse_args(argv)
    available = discover()
    names = args.names or list(available)
    unknown = [n for n in names if n not in available]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                     f"available: {', '.join(available)}")
    if args.baseline is not None:
        if not (args.baseline / "benchmarks" / "run.py").exists():
            parser.error(f"--baseline {args.baseline}: not a kvmcpu source checkout")
        if args.rounds < 1:
            parser.error("--rounds must be at least 1")
        both = compare(names, args.baseline.resolve(), args.quick, args.rounds)
        if args.json:
            args.json.write_text(json.dumps({"machine": machine(), "compare": both},
                                            indent=2))
            print(f"wrote {args.json}")
        return 0
    results = {name: run_one(name, available[name], args.quick) for name in names}
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "benchmarks": results}, indent=2))
        print(f"wrote {args.json}")
    return 1 if any(verdict(r) == "ERROR" for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
