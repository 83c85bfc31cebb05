"""The README's System example, run as a user would: from a directory outside the
checkout, twice in a row (the bundled guest is package data; the checkpoint is
overwritten), through a fresh interpreter."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvmcpu
import kvmcpu.guests

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"


def _system_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    found = [b for b in blocks if "System(" in b and "checkpoint(" in b]
    assert len(found) == 1, "the README has one System example"
    return found[0]


def test_the_example_loads_a_bundled_guest_not_a_checkout_path() -> None:
    code = _system_example()
    assert 'kvmcpu.guests.path("hello")' in code
    assert '"guests/' not in code


def test_readme_system_example_runs_anywhere_twice(tmp_path: Path) -> None:
    code = _system_example().replace('memory="128M"', 'memory="32M"')  # a smaller checkpoint
    code += "\nassert result.status == 1, result\nprint('OUT', system.serial.output[:18])\n"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "OUT b'Hello from kvmcpu!'" in done.stdout
    assert (tmp_path / "stats.txt").is_file() and (tmp_path / "cpt.1").is_dir()


def test_bundled_guests_are_found_by_name() -> None:
    assert kvmcpu.guests.names() == ["checkpoint", "debugme", "hello", "hello64", "irq", "sieve3",
                                     "smpdebug"]
    for name in kvmcpu.guests.names():
        p = kvmcpu.guests.path(name)
        assert p.is_file() and p == kvmcpu.guests.path(f"{name}.bin")
        assert p.parent == Path(kvmcpu.__file__).parent / "guests"
    with pytest.raises(ValueError, match="no bundled guest 'spin' .*there are: checkpoint"):
        kvmcpu.guests.path("spin")  # a test fixture, not a bundled guest
    with pytest.raises(TypeError):
        kvmcpu.guests.path(None)  # type: ignore[arg-type]


def test_help_and_dir_of_the_package() -> None:
    doc = kvmcpu.__doc__ or ""
    assert "get_backend" in doc and "System" in doc
    for name in ("System", "RunResult", "guests", "__version__"):
        assert name in dir(kvmcpu)
    done = subprocess.run([sys.executable, "-c", "import kvmcpu, pydoc; "
                           "print(pydoc.render_doc(kvmcpu, renderer=pydoc.plaintext))"],
                          env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "kvmcpu.backends.get_backend" in done.stdout and "kvmcpu.System" in done.stdout
