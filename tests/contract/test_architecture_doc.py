"""docs/architecture.md is the project's own map: the README links it, nothing points
outside the repository, and every path and name it cites exists."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "architecture.md"


def _tracked_text_files() -> list:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / f for f in out if f.endswith((".py", ".md", ".cfg", ".ini", ".toml", ".asm",
                                                 ".inc", ".txt"))]


def test_readme_links_the_architecture_document() -> None:
    readme = (ROOT / "README.md").read_text()
    assert "[docs/architecture.md](docs/architecture.md)" in readme
    assert DOC.is_file()


def test_nothing_points_outside_the_repository() -> None:
    outside = ("../" + "shared", "DESIGN" + ".md")  # spelled apart: this file is tracked too
    for path in _tracked_text_files():
        text = path.read_text(errors="replace")
        for target in outside:
            assert target not in text, f"{path} points at {target}"


def test_every_path_the_document_cites_exists() -> None:
    text = DOC.read_text()
    paths = set(re.findall(r"`((?:kvmcpu|tests|guests|docs)/[\w./]*)`", text))
    assert len(paths) > 20
    for p in sorted(paths):
        assert (ROOT / p).exists(), f"docs/architecture.md cites {p}, which does not exist"


def test_the_document_covers_each_layer_and_the_named_code() -> None:
    text = DOC.read_text()
    for heading in ("## Layers", "## The backend contract", "## The CPU model",
                    "## The platform", "## Where to add", "## Mock backend", "## Naming"):
        assert heading in text
    for layer in ("uapi", "_ioctl", "errors", "backends", "sim", "mem", "devices",
                  "firmware", "cpu", "loader", "system", "gdb", "cli"):
        assert re.search(rf"^\| {re.escape(layer)} \|", text, flags=re.M), layer
    from kvmcpu.cpu.kvm import base

    for name in ("kvmRun", "handleKvmExit", "handleKvmExitIO", "try_drain", "EXIT_HANDLERS"):
        assert name in text and hasattr(base.BaseKvmCPU if name != "EXIT_HANDLERS" else base,
                                        name), name
    for state in base.Status:
        assert f"`{state.value}`" in text


#: Layer -> the layers it may import (docs/architecture.md, "Layers"); the cli
#: modules and the package's lazy __init__ sit on top and may import anything.
ALLOWED = {
    "errors": set(), "uapi": set(), "_ioctl": {"errors", "uapi"}, "hostmem": {"errors"},
    "backends": {"_ioctl", "errors", "hostmem", "uapi"}, "sim": {"errors"},
    "mem": {"errors", "hostmem"}, "devices": {"errors", "mem", "sim"},
    "firmware": {"devices", "errors", "mem"},
    "loader": {"errors", "mem"}, "guests": {"errors"},
    "cpu": {"_ioctl", "backends", "errors", "hostmem", "sim", "uapi"},
    "system": {"backends", "cpu", "devices", "errors", "firmware", "loader", "mem", "power",
               "sim", "smp"},
    # kvmcpu/power.py: the System's S5/S3/reset mixin, of the system layer.
    "power": {"cpu", "devices", "errors", "loader", "mem", "sim"},
    # kvmcpu/smp.py: the System's CPU-scheduling mixin, of the system layer.
    "smp": {"cpu", "devices", "errors", "sim"},
    "gdb": {"cpu", "errors", "sim", "system"},
}


def _imports(path: Path, module: str) -> set:
    import ast

    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = parts[: len(parts) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [target] if target != "kvmcpu" else [f"kvmcpu.{a.name}" for a in node.names]
            found.update(names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {t.split(".")[1] for t in found if t.startswith("kvmcpu.")}


def test_dependencies_point_downward_only() -> None:
    for path in sorted((ROOT / "kvmcpu").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        module = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        layer = module.split(".")[1] if "." in module else "kvmcpu"
        if layer not in ALLOWED:
            continue  # kvmcpu/__init__, __main__, cli, cli_run, info: the top
        wrong = _imports(path, module) - ALLOWED[layer] - {layer}
        assert not wrong, f"{path.relative_to(ROOT)} ({layer}) imports {sorted(wrong)}"


def test_only_the_backends_know_a_backend() -> None:
    """Above backends/, code talks to the contract (base.py, exits.py, modes.py,
    get_backend), never to kvm.py, kvm_vcpu.py or mock/ directly."""
    import re

    private = re.compile(
        r"^\s*(from|import)\s+[.\w]*backends(\.|\s+import\s+)(mock|kvm|kvm_vcpu)\b", re.M)
    for path in sorted((ROOT / "kvmcpu").rglob("*.py")):
        if "backends" in path.relative_to(ROOT).parts:
            continue
        hits = [m.group(0).strip() for m in private.finditer(path.read_text())]
        assert not hits, f"{path.relative_to(ROOT)}: {hits}"
