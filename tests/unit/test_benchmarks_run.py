"""benchmarks/run.py --baseline: a benchmark run by two checkouts side by side, through
the script's own command line (in a subprocess, in copies under tmp_path)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

RUN = Path(__file__).resolve().parents[2] / "benchmarks" / "run.py"

FAKE = '''
from typing import Any, Dict

def run(quick: bool = False) -> Dict[str, Any]:
    return {{"figures": {{"speed": {speed}, "label": "x"}}, "ratio": {speed} / 4,
            "target": 1.0, "higher_is_better": True}}
'''


def _checkout(root: Path, speed: float) -> Path:
    (root / "benchmarks").mkdir(parents=True)
    shutil.copy(RUN, root / "benchmarks" / "run.py")
    (root / "benchmarks" / "bench_fake.py").write_text(FAKE.format(speed=speed))
    return root


def test_baseline_runs_both_checkouts_and_prints_them_side_by_side(tmp_path: Path) -> None:
    old = _checkout(tmp_path / "old", 2.0)
    new = _checkout(tmp_path / "new", 3.0)
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(new / "benchmarks" / "run.py"), "fake", "--baseline", str(old),
         "--rounds", "2", "--json", str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    line = next(ln for ln in proc.stdout.splitlines() if "speed" in ln)
    assert line.split()[1:] == ["2.000", "|", "3.000", "x1.50"]
    assert "load average" in proc.stdout
    result = json.loads(out.read_text())["compare"]["fake"]
    assert result["baseline"]["speed"] == 2.0 and result["current"]["speed"] == 3.0
    assert result["errors"] == []


def test_baseline_must_be_a_checkout(tmp_path: Path) -> None:
    new = _checkout(tmp_path / "new", 3.0)
    proc = subprocess.run(
        [sys.executable, str(new / "benchmarks" / "run.py"), "fake", "--baseline",
         str(tmp_path / "nothing")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "not a kvmcpu source checkout" in proc.stderr
