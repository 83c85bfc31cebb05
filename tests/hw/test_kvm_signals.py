"""Getting a spinning guest back: kick(), immediate_exit, a POSIX run timer."""

from __future__ import annotations

import signal
import threading
import time
from typing import List

import pytest

from guests import setup_long, setup_real
from kvmcpu import _ioctl
from kvmcpu.backends import IntrExit, IoExit
from kvmcpu.backends.base import Vcpu, open_objects
from kvmcpu.backends.kvm import KvmVm
from kvmcpu.backends.kvm_vcpu import KICK_SIGNAL, kick_handler_installed

pytestmark = pytest.mark.kvm

SPIN_MODES = ["real", "cpl3"]


def _spinner(vm: KvmVm, mode: str) -> Vcpu:
    if mode == "real":
        return setup_real(vm, "spin")[1]
    return setup_long(vm, "spin", cpl=3, entry=0x2000)[1]


def _kick_later(vcpu: Vcpu, delay: float) -> threading.Thread:
    def kick() -> None:
        time.sleep(delay)
        vcpu.kick()

    t = threading.Thread(target=kick, name="kicker")
    t.start()
    return t


def test_kick_handler_is_installed() -> None:
    # The backend fixture was created on the main thread (pytest runs tests there).
    from kvmcpu.backends import get_backend

    with get_backend("kvm"):
        assert kick_handler_installed()
        assert callable(signal.getsignal(KICK_SIGNAL))


@pytest.mark.parametrize("mode", SPIN_MODES)
def test_kick_stops_a_spinning_guest(vm: KvmVm, mode: str) -> None:
    vcpu = _spinner(vm, mode)
    t = _kick_later(vcpu, 0.2)
    t0 = time.monotonic()
    ex = vcpu.run()
    elapsed = time.monotonic() - t0
    t.join()
    assert isinstance(ex, IntrExit)
    assert 0.15 < elapsed < 5
    assert not vcpu.immediate_exit  # a kick stops exactly one run
    assert vcpu.running_thread == 0


def test_kick_a_vcpu_running_on_another_thread(vm: KvmVm) -> None:
    vcpu = _spinner(vm, "cpl3")
    result: List[object] = []
    worker = threading.Thread(target=lambda: result.append(vcpu.run()), name="vcpu")
    worker.start()
    deadline = time.monotonic() + 5
    while vcpu.running_thread == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert vcpu.running_thread == worker.ident
    time.sleep(0.05)
    vcpu.kick()
    worker.join(5)
    assert not worker.is_alive()
    assert len(result) == 1 and isinstance(result[0], IntrExit)


def test_kick_before_run_stops_the_next_run_only(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "io_real")
    vcpu.kick()
    assert vcpu.immediate_exit
    assert isinstance(vcpu.run(), IntrExit)
    ex = vcpu.run()
    assert isinstance(ex, IoExit) and bytes(ex.data) == b"4"


def test_kick_on_closed_vcpu_is_a_no_op(vm: KvmVm) -> None:
    _, vcpu = setup_real(vm, "spin")
    vcpu.close()
    vcpu.kick()


def test_watchdog_style_kick_stops_jmp_dollar(vm: KvmVm) -> None:
    """What tests/conftest.py's watchdog does, with a 0.3 s timeout instead of 30 s."""
    vcpu = _spinner(vm, "real")
    done = threading.Event()

    def bite() -> None:
        if done.wait(0.3):
            return
        while not done.is_set():
            for o in list(open_objects):
                if isinstance(o, Vcpu) and not o.closed:
                    o.kick()
            done.wait(0.1)

    t = threading.Thread(target=bite, name="mini-watchdog")
    t.start()
    try:
        t0 = time.monotonic()
        ex = vcpu.run()
        assert isinstance(ex, IntrExit)
        assert time.monotonic() - t0 < 5
    finally:
        done.set()
        t.join()


@pytest.mark.parametrize("mode", SPIN_MODES)
def test_posix_timer_interrupts_spinning_guest(vm: KvmVm, mode: str) -> None:
    """The run-timer recipe: SIGRTMIN blocked in the thread, unblocked only inside
    KVM_RUN through KVM_SET_SIGNAL_MASK, delivered by a SIGEV_THREAD_ID timer."""
    vcpu = _spinner(vm, mode)
    sig = signal.SIGRTMIN
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {sig})
    timer: int | None = None
    try:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())
        vcpu.set_signal_mask(set(blocked) - {sig})
        timer = _ioctl.timer_create(sig)
        _ioctl.timer_settime(timer, 50_000_000)  # 50 ms
        t0 = time.monotonic()
        ex = vcpu.run()
        elapsed = time.monotonic() - t0
        assert isinstance(ex, IntrExit)
        assert 0.03 < elapsed < 5
        assert _ioctl.timer_gettime(timer) == 0  # fired, not re-armed
        info = signal.sigtimedwait([sig], 0)
        assert info is not None and info.si_signo == sig
        assert signal.sigtimedwait([sig], 0) is None
        # A periodic timer keeps interrupting; each run returns IntrExit.
        _ioctl.timer_settime(timer, 5_000_000, 5_000_000)
        for _ in range(3):
            assert isinstance(vcpu.run(), IntrExit)
            while signal.sigtimedwait([sig], 0) is not None:
                pass
        _ioctl.timer_settime(timer, 0)
    finally:
        if timer is not None:
            _ioctl.timer_delete(timer)
        while signal.sigtimedwait([sig], 0) is not None:
            pass
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        vcpu.set_signal_mask(None)


def test_signal_mask_never_blocks_the_kick_signal(vm: KvmVm) -> None:
    vcpu = _spinner(vm, "real")
    vcpu.set_signal_mask({KICK_SIGNAL, signal.SIGRTMIN})
    t = _kick_later(vcpu, 0.1)
    assert isinstance(vcpu.run(), IntrExit)
    t.join()


def test_gettid_is_the_native_id() -> None:
    assert _ioctl.gettid() == threading.get_native_id()
