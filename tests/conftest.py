"""Shared fixtures: the two-backend ``backend`` fixture, the KVM gate, the
leak check and the watchdog that keeps a spinning guest from hanging CI."""

from __future__ import annotations

import gc
import os
import threading
from typing import Iterator, List, Optional

import pytest

from kvmcpu.backends import get_backend, kvm_disabled
from kvmcpu.backends.base import Backend, Vcpu, open_objects
from kvmcpu.errors import BackendUnavailableError

#: Seconds a test may keep a vCPU running before the watchdog kicks it.
WATCHDOG_SECONDS = float(os.environ.get("KVMCPU_WATCHDOG", "30"))
#: The same for tests marked slow (KVMCPU_LONG=1 fuzz and soak runs of thousands of
#: programs, each a few milliseconds): they run for minutes while making progress.
WATCHDOG_SLOW_SECONDS = float(os.environ.get("KVMCPU_WATCHDOG_SLOW", "1800"))

_kvm_reason: Optional[str] = None
_kvm_probed = False


def kvm_unusable_reason() -> Optional[str]:
    """None when /dev/kvm can be opened and used, else why not (cached)."""
    global _kvm_reason, _kvm_probed
    if not _kvm_probed:
        _kvm_probed = True
        if kvm_disabled():
            _kvm_reason = "KVMCPU_DISABLE_KVM is set"
        else:
            try:
                b = get_backend("kvm")
            except BackendUnavailableError as err:
                _kvm_reason = err.reason
            else:
                b.close()
    return _kvm_reason


def require_kvm() -> None:
    """Skip (or fail under KVMCPU_REQUIRE_KVM=1) when /dev/kvm is unusable."""
    reason = kvm_unusable_reason()
    if reason is None:
        return
    if os.environ.get("KVMCPU_REQUIRE_KVM", "") not in ("", "0") and not kvm_disabled():
        pytest.fail(f"KVMCPU_REQUIRE_KVM=1 but KVM is unusable: {reason}")
    pytest.skip(f"KVM unusable: {reason}")


def pytest_collection_modifyitems(config: pytest.Config, items: List[pytest.Item]) -> None:
    long_runs = os.environ.get("KVMCPU_LONG", "") not in ("", "0")
    for item in items:
        if "slow" in item.keywords and not long_runs:
            item.add_marker(pytest.mark.skip(reason="long run: set KVMCPU_LONG=1"))


@pytest.fixture(autouse=True)
def _kvm_gate(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("kvm") is not None:
        require_kvm()


@pytest.fixture(scope="module")
def kvm_backend() -> Iterator[Backend]:
    """One KVM backend for a module's tests, behind the same gate as the kvm marker
    (module-scoped fixtures are set up before the function-scoped autouse gate)."""
    require_kvm()
    b = get_backend("kvm")
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(params=["mock", pytest.param("kvm", marks=pytest.mark.kvm)])
def backend_name(request: pytest.FixtureRequest) -> str:
    """'mock' and 'kvm' (the latter marked kvm): one test body checks both."""
    return str(request.param)


@pytest.fixture
def backend(backend_name: str) -> Iterator[Backend]:
    """An open backend of each kind, closed after the test."""
    b = get_backend(backend_name)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(autouse=True)
def _no_leaks() -> Iterator[None]:
    """Fail a test that leaves a VM or vCPU (or backend) open."""
    before = set(map(id, open_objects))
    yield
    leaked = [o for o in list(open_objects) if id(o) not in before]
    for o in leaked:
        try:
            o.close()
        except Exception:  # noqa: BLE001
            pass
    gc.collect()
    if leaked:
        pytest.fail(f"test leaked open objects: {leaked!r}")


@pytest.fixture(autouse=True)
def _watchdog(request: pytest.FixtureRequest) -> Iterator[None]:
    """Kick every open vCPU if a test runs longer than WATCHDOG_SECONDS, so a
    guest spinning inside KVM_RUN returns with IntrExit instead of hanging."""
    fired = threading.Event()
    done = threading.Event()
    limit = WATCHDOG_SLOW_SECONDS if request.node.get_closest_marker("slow") else \
        WATCHDOG_SECONDS

    def bite() -> None:
        # Past the limit only a vCPU of this process counts: a test that runs the
        # guest in a subprocess (`kvmcpu run`) bounds it with its own timeout.
        if done.wait(limit):
            return
        while not done.is_set():
            for o in list(open_objects):
                if isinstance(o, Vcpu) and not o.closed:
                    fired.set()
                    try:
                        o.kick()
                    except Exception:  # noqa: BLE001 - racing with close
                        pass
            done.wait(0.5)

    t = threading.Thread(target=bite, name="kvmcpu-watchdog", daemon=True)
    t.start()
    yield
    done.set()
    t.join(5)
    if fired.is_set():
        pytest.fail(f"watchdog fired after {limit:.0f} s: a vCPU did not stop")
