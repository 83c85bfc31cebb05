"""Errors and the backend registry, without KVM."""

from __future__ import annotations

import errno
import os
import pickle

import pytest

from kvmcpu import _ioctl, uapi
from kvmcpu.backends import backend_names, get_backend, kvm_disabled, register_backend
from kvmcpu.errors import BackendUnavailableError, ClosedError, KvmCpuError, KvmIoctlError


def _closed_fd() -> int:
    fd = os.open(os.devnull, os.O_RDONLY)
    os.close(fd)
    return fd


def test_ioctl_on_closed_fd_is_ebadf_naming_the_ioctl() -> None:
    regs = uapi.kvm_regs()
    with pytest.raises(KvmIoctlError) as info:
        _ioctl.ioctl(_closed_fd(), uapi.KVM_GET_REGS, regs)
    err = info.value
    assert err.errno == errno.EBADF
    assert isinstance(err, OSError) and isinstance(err, KvmCpuError)
    assert err.call == "KVM_GET_REGS"
    assert str(err).startswith("KVM_GET_REGS: Bad file descriptor (errno 9 EBADF)")


def test_ioctl_int_and_raw_on_invalid_fd() -> None:
    with pytest.raises(KvmIoctlError) as info:
        _ioctl.ioctl_int(-1, uapi.KVM_CHECK_EXTENSION, 0)
    assert info.value.errno == errno.EBADF
    assert "KVM_CHECK_EXTENSION" in str(info.value)
    assert _ioctl.ioctl_raw(-1, uapi.KVM_RUN, 0) == -errno.EBADF


def test_ioctl_on_a_non_kvm_fd_is_enotty() -> None:
    fd = os.open(os.devnull, os.O_RDWR)
    try:
        with pytest.raises(KvmIoctlError) as info:
            _ioctl.ioctl(fd, uapi.KVM_GET_API_VERSION)
        assert info.value.errno == errno.ENOTTY
    finally:
        os.close(fd)


def test_unknown_ioctl_number_is_named_in_hex() -> None:
    assert _ioctl.ioctl_name(0x1234) == "ioctl 0x1234"
    assert _ioctl.ioctl_name(uapi.KVM_RUN) == "KVM_RUN"


def test_error_detail_and_pickle() -> None:
    err = KvmIoctlError("KVM_SET_USER_MEMORY_REGION", errno.EEXIST, "slot 1, guest_phys_addr 0x0")
    assert str(err).endswith("(errno 17 EEXIST): slot 1, guest_phys_addr 0x0")
    back = pickle.loads(pickle.dumps(err))
    assert (back.call, back.errno, back.detail) == (err.call, err.errno, err.detail)


def test_open_dev_missing_path() -> None:
    with pytest.raises(KvmIoctlError) as info:
        _ioctl.open_dev("/nonexistent/kvm")
    assert info.value.errno == errno.ENOENT and "/nonexistent/kvm" in str(info.value)


def test_kernel_sigset() -> None:
    assert _ioctl.kernel_sigset([]) == bytes(8)
    assert _ioctl.kernel_sigset([1]) == b"\x01" + bytes(7)
    assert _ioctl.kernel_sigset([64]) == bytes(7) + b"\x80"
    assert _ioctl.sigset_signals(_ioctl.kernel_sigset([2, 34, 35])) == {2, 34, 35}
    with pytest.raises(ValueError):
        _ioctl.kernel_sigset([0])


def test_unknown_backend_is_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        get_backend("nope")
    assert "auto" in backend_names() and "kvm" in backend_names()


def test_register_backend_validates() -> None:
    with pytest.raises(ValueError):
        register_backend("auto", "x:Y")
    with pytest.raises(ValueError):
        register_backend("x", "no_colon")


def test_unimportable_backend_is_unavailable() -> None:
    register_backend("broken-test", "kvmcpu.no_such_module:Nothing")
    try:
        with pytest.raises(BackendUnavailableError) as info:
            get_backend("broken-test")
        assert "cannot import" in info.value.reason
    finally:
        from kvmcpu.backends import _REGISTRY

        _REGISTRY.pop("broken-test", None)


def test_disable_kvm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCPU_DISABLE_KVM", "1")
    assert kvm_disabled()
    with pytest.raises(BackendUnavailableError) as info:
        get_backend("kvm")
    assert info.value.backend == "kvm"
    assert "KVMCPU_DISABLE_KVM" in info.value.reason
    assert "KVMCPU_DISABLE_KVM" in str(info.value)


def test_disable_kvm_zero_means_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCPU_DISABLE_KVM", "0")
    assert not kvm_disabled()


def test_auto_without_kvm_picks_mock_or_explains(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KVMCPU_DISABLE_KVM", "1")
    monkeypatch.delenv("KVMCPU_MOCK_VENDOR", raising=False)
    backend = get_backend("auto")  # the mock always imports: a failure here is a bug
    with backend:
        assert backend.name == "mock"
        assert "KVMCPU_DISABLE_KVM" in backend.reason


def test_missing_device_is_unavailable(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from kvmcpu.backends.kvm import KvmBackend

    monkeypatch.delenv("KVMCPU_DISABLE_KVM", raising=False)
    with pytest.raises(BackendUnavailableError) as info:
        KvmBackend(os.path.join(str(tmp_path), "kvm"))
    assert "does not exist" in info.value.reason


def test_non_kvm_device_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    from kvmcpu.backends.kvm import KvmBackend

    monkeypatch.delenv("KVMCPU_DISABLE_KVM", raising=False)
    # /dev/null opens read-write but answers KVM_GET_API_VERSION with ENOTTY.
    with pytest.raises(BackendUnavailableError) as info:
        KvmBackend(os.devnull)
    assert "API version" in info.value.reason


def test_closed_error_is_value_error() -> None:
    assert issubclass(ClosedError, ValueError) and issubclass(ClosedError, KvmCpuError)
