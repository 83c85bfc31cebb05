"""The README's debugging example (PC events, an instruction-count event) runs as
printed and prints what its comments say."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_debugging_example(tmp_path: Path) -> None:
    section = README.read_text().split("## Debugging guests", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match is not None
    done = subprocess.run([sys.executable, "-c", match.group(1)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"compute {i}" for i in range(4)] + [
        "40 instructions", "41"]
