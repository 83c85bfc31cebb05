"""``kvmcpu info``: output, JSON, exit statuses and error lines."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kvmcpu import cli, info
from kvmcpu.uapi import Cap

ROOT = Path(__file__).resolve().parent.parent.parent


def _run(*args: str, env_extra: dict = None) -> subprocess.CompletedProcess:  # type: ignore[assignment,type-arg]
    import os

    env = dict(os.environ)
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "kvmcpu", *args], capture_output=True,
                          text=True, cwd=ROOT, env=env, timeout=60)


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([], ["bogus"], ["info", "--backend", "nope"]):
        with pytest.raises(SystemExit) as info_:
            cli.main(argv)
        assert info_.value.code == 2
    assert "usage:" in capsys.readouterr().err


def test_unavailable_backend_is_one_line_exit_1() -> None:
    proc = _run("info", "--backend", "kvm", env_extra={"KVMCPU_DISABLE_KVM": "1"})
    assert proc.returncode == 1
    err_lines = proc.stderr.strip().splitlines()
    assert len(err_lines) == 1 and "KVMCPU_DISABLE_KVM" in err_lines[0]
    assert "Traceback" not in proc.stderr
    assert "host:" in proc.stdout  # host facts are still reported


def test_unavailable_backend_json() -> None:
    proc = _run("info", "--backend", "kvm", "--json", env_extra={"KVMCPU_DISABLE_KVM": "1"})
    facts = json.loads(proc.stdout)
    assert facts["backend"] is None and "KVMCPU_DISABLE_KVM" in facts["error"]
    assert "usable" in facts["perf_counters"]


def test_host_notes_from_a_fake_sys(tmp_path: Path) -> None:
    (tmp_path / "kvm" / "parameters").mkdir(parents=True)
    (tmp_path / "kvm" / "parameters" / "enable_pmu").write_text("N\n")
    (tmp_path / "kvm_amd" / "parameters").mkdir(parents=True)
    (tmp_path / "kvm_amd" / "parameters" / "nested").write_text("1\n")
    notes = info.host_notes(tmp_path)
    assert notes["kvm_modules"] == ["kvm", "kvm_amd"]
    assert notes["kvm_amd.nested"] == "1" and notes["kvm.enable_pmu"] == "N"
    assert notes["pvm"] is False


def test_perf_probe_answers() -> None:
    result = info.probe_perf_counters()
    assert isinstance(result["usable"], bool) and result["reason"]


@pytest.mark.kvm
def test_info_on_kvm_text_and_json() -> None:
    proc = _run("info", "--backend", "kvm")
    assert proc.returncode == 0, proc.stderr
    assert "backend:        kvm" in proc.stdout and "KVM_CAP_IMMEDIATE_EXIT" in proc.stdout
    floor = re.search(r"^timer floor: +([0-9.]+) us \(measured", proc.stdout, re.M)
    assert floor is not None and float(floor.group(1)) > 0, proc.stdout
    proc = _run("info", "--backend", "kvm", "--json")
    facts = json.loads(proc.stdout)
    assert facts["backend"] == "kvm" and facts["api_version"] == 12
    assert facts["capabilities"]["KVM_CAP_USER_MEMORY"] == 1
    assert facts["cpuid"]["entries"] > 0 and len(facts["cpuid"]["vendor"]) == 12
    assert facts["msr_count"] > 0
    assert set(facts["capabilities"]) == {f"KVM_CAP_{c.name}" for c in info.INTERESTING_CAPS}
    assert Cap.XSAVE2 in info.INTERESTING_CAPS


def test_pvm_note_only_for_the_kvm_backend(tmp_path: Path) -> None:
    (tmp_path / "kvm").mkdir()
    (tmp_path / "kvm_pvm").mkdir()
    assert "kvm_pvm" in info.host_notes(tmp_path, backend="kvm")["note"]
    notes = info.host_notes(tmp_path, backend="mock")
    assert notes["pvm"] is True and "note" not in notes
    facts = json.loads(_run("info", "--backend", "mock", "--json").stdout)
    assert facts["backend"] == "mock" and "note" not in facts["host"]
    assert "run_timer_floor" not in facts


@pytest.mark.kvm
def test_info_json_gives_the_timer_floor_as_numbers() -> None:
    facts = json.loads(_run("info", "--backend", "kvm", "--json").stdout)
    floor = facts["run_timer_floor"]
    assert floor["measured"] is True and isinstance(floor["ns"], int) and floor["ns"] > 0
    assert info.measure_run_timer_floor.__name__ in info.__all__
