"""System.run's asynchronous endings: request_stop (signals, other threads), the host
deadline's timer, and the checks of its limits (issue 11, items 1, 10, 16)."""

from __future__ import annotations

import math
import signal
import threading
from typing import Any, Callable, List

import pytest

from kvmcpu.system import CAUSE_INTERRUPTED, CAUSE_TIMEOUT, STATUS_SIGTERM, System

SPIN = bytes.fromhex("eb fe")  # jmp $


def spinning(make_system: Callable[..., System], backend_name: str) -> System:
    system = make_system(memory="2M", backend=backend_name)
    system.load(SPIN, fmt="flat")
    return system


def test_request_stop_from_another_thread(make_system: Callable[..., System],
                                          backend_name: str) -> None:
    system = spinning(make_system, backend_name)
    stopper = threading.Timer(0.3, system.request_stop, (CAUSE_INTERRUPTED, signal.SIGTERM))
    stopper.start()
    try:
        result = system.run(timeout=30)  # the backstop: a failure must not hang
    finally:
        stopper.cancel()
    assert (result.cause, result.code, result.status) == (CAUSE_INTERRUPTED, signal.SIGTERM,
                                                          STATUS_SIGTERM)
    assert system.eventq.pending_exit is None
    # The request was taken: the next run goes on until its own limit.
    again = system.run(max_ticks=2_000_000)
    assert again.cause == "simulate() limit reached"


def test_request_stop_before_the_run_ends_it_at_once(make_system: Callable[..., System],
                                                     backend_name: str) -> None:
    system = spinning(make_system, backend_name)
    system.run(max_ticks=1_000_000)
    tick = system.eventq.cur_tick
    system.request_stop("stopped by the test", 7)
    result = system.run(timeout=30)
    assert (result.cause, result.status, result.tick) == ("stopped by the test", 7, tick)


def test_a_signal_handler_can_request_the_stop(make_system: Callable[..., System],
                                               backend_name: str) -> None:
    """The CLI's way: a Python signal handler in the main thread (KVM: the signal ends
    KVM_RUN with EINTR; the mock: request_stop kicks the vCPU)."""
    system = spinning(make_system, backend_name)
    system.expect_stop_requests = True
    old = signal.signal(signal.SIGUSR1,
                        lambda signum, frame: system.request_stop(CAUSE_INTERRUPTED, signum))
    sender = threading.Timer(0.3, signal.pthread_kill,
                             (threading.main_thread().ident, signal.SIGUSR1))
    sender.start()
    try:
        result = system.run(timeout=30)
    finally:
        sender.cancel()
        signal.signal(signal.SIGUSR1, old)
    assert (result.cause, result.status) == (CAUSE_INTERRUPTED, 128 + signal.SIGUSR1)


def test_the_host_deadline_kicks_a_run_stuck_in_translation(
        make_system: Callable[..., System], monkeypatch: pytest.MonkeyPatch) -> None:
    """The mock translates a block with compile(), which can take seconds for cold code
    while simulated time does not move: the host timer must kick the vCPU then, not
    wait for a simulated-time check (item 10)."""
    from kvmcpu.backends.mock import codegen, tier0

    # Every block compiled before its first run: without this, cold code stays in the
    # interpreter tier and compile() may not be reached before the deadline.
    monkeypatch.setattr(tier0, "PROMOTE_AFTER", 1)
    system = make_system(memory="2M", backend="mock")
    system.load(b"vm\n", fmt="flat")  # /etc/hostname as a flat image: cold code in zeroed RAM
    system.run(max_ticks=1000)  # the vCPU exists
    kicked = threading.Event()
    real_kick = system.cpu.vcpu.kick

    def kick() -> None:
        kicked.set()
        real_kick()

    monkeypatch.setattr(system.cpu.vcpu, "kick", kick)
    after_kick: List[str] = []
    real_compile = compile

    def slow_compile(*args: Any, **kwargs: Any) -> Any:
        if kicked.is_set():
            after_kick.append("compiled after the kick")
        else:
            kicked.wait(5)  # a translation far longer than the deadline
        return real_compile(*args, **kwargs)

    monkeypatch.setattr(codegen, "compile", slow_compile, raising=False)
    result = system.run(timeout=0.2)
    assert kicked.is_set() and result.cause == CAUSE_TIMEOUT
    assert len(after_kick) <= 1  # the block being translated, then the run ended
    assert system.eventq.pending_exit is None


def test_a_deadline_that_fires_as_the_run_ends_is_not_left_behind(
        make_system: Callable[..., System]) -> None:
    system = spinning(make_system, "mock")
    system.eventq.request_exit(CAUSE_TIMEOUT, 124)  # as if the host timer fired late
    first = system.run(max_ticks=1_000_000, timeout=30)
    assert first.cause == CAUSE_TIMEOUT
    second = system.run(max_ticks=1_000_000, timeout=30)
    assert second.cause == "simulate() limit reached"


@pytest.mark.parametrize("kwargs, message", [
    ({"max_seconds": -1}, r"max_seconds must be a non-negative number of seconds, got -1"),
    ({"max_seconds": math.nan}, r"max_seconds must be a non-negative number of seconds, "
                                r"got nan"),
    ({"timeout": -0.5}, r"timeout must be a non-negative number of seconds, got -0.5"),
    ({"max_ticks": -1}, r"max_ticks must be non-negative, got -1"),
])
def test_run_limits_that_are_not_limits(make_system: Callable[..., System],
                                        kwargs: Any, message: str) -> None:
    system = spinning(make_system, "mock")
    with pytest.raises(ValueError, match=message):
        system.run(**kwargs)
    assert system.eventq.cur_tick == 0 and not system.root.instantiated
