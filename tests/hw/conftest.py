"""Fixtures for the real-KVM tests: every test here is marked ``kvm``."""

from __future__ import annotations

from typing import Iterator

import pytest

from kvmcpu.backends import get_backend
from kvmcpu.backends.kvm import KvmBackend, KvmVm


def pytest_collection_modifyitems(config: pytest.Config, items: list) -> None:  # type: ignore[type-arg]
    for item in items:
        if "/tests/hw/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.kvm)


@pytest.fixture
def kvm() -> Iterator[KvmBackend]:
    """An open KVM backend."""
    backend = get_backend("kvm")
    assert isinstance(backend, KvmBackend)
    with backend:
        yield backend


@pytest.fixture
def vm(kvm: KvmBackend) -> Iterator[KvmVm]:
    """A fresh VM on it."""
    with kvm.create_vm() as machine:
        yield machine
