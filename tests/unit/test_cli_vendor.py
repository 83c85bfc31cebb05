"""`kvmcpu info --backend mock` names the mock's vendor profile (the real entry point)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def _info(*args: str, vendor: str = "") -> subprocess.CompletedProcess:  # type: ignore[type-arg]
    env = dict(os.environ)
    env.pop("KVMCPU_MOCK_VENDOR", None)
    if vendor:
        env["KVMCPU_MOCK_VENDOR"] = vendor
    return subprocess.run([sys.executable, "-m", "kvmcpu", "info", "--backend", "mock", *args],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("vendor,cpuid", [("intel", "GenuineIntel"), ("amd", "AuthenticAMD")])
def test_info_names_the_profile(vendor: str, cpuid: str) -> None:
    p = _info(vendor=vendor)
    assert p.returncode == 0, p.stderr
    assert f"vendor profile: {vendor} (" in p.stdout
    assert "chosen by: environment" in p.stdout
    assert f"CPUID:          {cpuid}," in p.stdout
    j = _info("--json", vendor=vendor)
    facts = json.loads(j.stdout)
    assert facts["vendor_profile"] == vendor and facts["cpuid"]["vendor"] == cpuid


def test_info_default_is_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmcpu.backends.mock.vendor import host_vendor

    p = _info()
    assert p.returncode == 0, p.stderr
    want = host_vendor() or "amd"
    how = "host" if host_vendor() else "fallback"
    assert f"vendor profile: {want} (undefined flags and results; chosen by: {how})" in p.stdout


def test_info_refuses_an_unknown_profile() -> None:
    p = _info(vendor="transmeta")
    assert "KVMCPU_MOCK_VENDOR='transmeta' names no vendor profile; choose one of intel, amd" \
        in p.stdout + p.stderr
    assert "Traceback" not in p.stderr
