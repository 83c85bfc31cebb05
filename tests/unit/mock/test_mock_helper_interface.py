"""The mock's helper modules use the engine only through ``cpuview.HelperCpu``.

Every function of the helper modules whose first parameter is the engine has it
annotated ``HelperCpu``, and every attribute it reads or calls on that parameter is a
member of the Protocol: a helper that reaches into another part of the engine fails
here (and mypy --strict fails with it).
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import List, Set

import pytest

from kvmcpu.backends.mock import cpuview
from kvmcpu.backends.mock.engine import Engine

MOCK = Path(cpuview.__file__).resolve().parent
HELPER_MODULES = ("helpers", "transfer", "system", "strings", "xsave", "extensions",
                  "interrupts")
ENGINE_NAMES = ("e", "eng", "engine")


def _members() -> Set[str]:
    proto = cpuview.HelperCpu
    names = set(proto.__annotations__)
    names |= {n for n, v in vars(proto).items() if callable(v) and not n.startswith("_")}
    return names


def _violations(source: str, members: Set[str]) -> List[str]:
    out: List[str] = []
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef) or not fn.args.args:
            continue
        first = fn.args.args[0]
        if first.arg not in ENGINE_NAMES:
            continue
        ann = first.annotation
        name = ann.value if isinstance(ann, ast.Constant) else getattr(ann, "id", None)
        if name != "HelperCpu":
            out.append(f"{fn.name}: {first.arg} is annotated {name!r}, not HelperCpu")
            continue
        for node in ast.walk(fn):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == first.arg and node.attr not in members):
                out.append(f"{fn.name}: {first.arg}.{node.attr} is not in HelperCpu")
    return out


@pytest.mark.parametrize("module", HELPER_MODULES)
def test_helpers_use_only_the_helper_interface(module: str) -> None:
    source = (MOCK / f"{module}.py").read_text()
    assert "from .engine import" not in source
    assert _violations(source, _members()) == []


def test_a_helper_reaching_into_the_engine_is_found() -> None:
    bad = 'def h(e: "HelperCpu") -> None:\n    e.blocks.clear()\n    e.mode_changed()\n'
    assert _violations(bad, _members()) == ["h: e.blocks is not in HelperCpu"]
    untyped = 'def g(e: "Engine") -> None:\n    pass\n'
    assert _violations(untyped, _members()) == ["g: e is annotated 'Engine', not HelperCpu"]


def test_a_live_engine_has_every_member() -> None:
    from kvmcpu.backends.mock import MockBackend

    with MockBackend() as backend, backend.create_vm() as vm:
        vm.add_ram(0, 1 << 20)
        vcpu = vm.create_vcpu(0)
        try:
            engine = vcpu.engine  # type: ignore[attr-defined]
            assert isinstance(engine, Engine)
            assert sorted(n for n in _members() if not hasattr(engine, n)) == []
        finally:
            vcpu.close()
