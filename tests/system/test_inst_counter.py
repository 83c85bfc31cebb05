"""Instruction-count events through a sampling instruction counter (the KVM path,
kvmcpu/cpu/kvm/instevents.py), tested on the mock: a counter driven by the mock's
exact retired-instruction count whose overflow ends the run ``skid`` instructions
after the armed period (a PMU's overflow comes some instructions late). The
events must land where the mock's own exact budget lands them (the oracle: the
registers and the mock's retired count at the callback on a run without the
counter), for every skid up to the margin; a larger skid is an
InstEventOvershootError, never a late event."""

from __future__ import annotations

from typing import Any, Callable, List, Optional, Tuple

import pytest

import kvmcpu
from kvmcpu.cpu.kvm.perfevent import InstCounter
from kvmcpu.cpu.thread import ThreadContext
from kvmcpu.errors import InstEventOvershootError
from kvmcpu.sim.eventq import exit_sim_loop
from kvmcpu.system import System

MARGIN = 8
#: debugme's exit status (see test_pc_events.py)
STATUS = 41


class SkidCounter(InstCounter):
    """A test counter on the mock: counts the mock vCPU's retired instructions and
    ends the run ``skid`` instructions after the armed period has been counted (the
    mock's budget, capped at that point)."""

    describe = "test counter (mock retired instructions, overflow late by a skid)"

    def __init__(self, cpu: Any, skid: int) -> None:
        self.cpu = cpu
        self.skid = skid
        self.vcpu: Any = None
        self.base = 0
        self.overflow_at: Optional[int] = None
        self.arms: List[Optional[int]] = []

    def open(self) -> None:
        if self.vcpu is not None:
            return
        vcpu = self.vcpu = self.cpu.vcpu
        self.base = vcpu.instructions_retired
        plain = vcpu.set_budget

        def set_budget(n: Optional[int]) -> None:
            at = self.overflow_at
            if at is not None:
                left = at - vcpu.instructions_retired
                if left > 0:
                    n = left if n is None else min(n, left)
            plain(n)

        vcpu.set_budget = set_budget

    def arm(self, period: Optional[int]) -> None:
        self.open()
        self.arms.append(period)
        self.overflow_at = (None if period is None
                            else self.vcpu.instructions_retired + period + self.skid)

    def read(self) -> int:
        return int(self.vcpu.instructions_retired) - self.base if self.vcpu else 0

    def close(self) -> None:
        self.overflow_at = None


def _system() -> System:
    s = System(memory="16M", backend="mock")
    s.load(kvmcpu.guests.path("debugme"))
    return s


def _landings(counts: List[int], skid: Optional[int]) -> List[Tuple[int, ...]]:
    """(count, rip, rbx, rdi, the mock's retired count) at each event's callback; the
    budget (skid None) or a SkidCounter."""
    s = _system()
    try:
        seen: List[Tuple[int, ...]] = []
        counter = None
        if skid is not None:
            counter = SkidCounter(s.cpu, skid)
            s.cpu.use_inst_counter(counter, margin=MARGIN)

        def at(n: int) -> Callable[[ThreadContext], None]:
            def cb(tc: ThreadContext) -> None:
                seen.append((n, tc.rip, tc.rbx, tc.rdi, s.cpu.vcpu.instructions_retired))
                if len(seen) == len(counts):
                    exit_sim_loop("events done", 0, queue=s.eventq)
            return cb

        for n in counts:
            s.cpu.schedule_inst_event(n, at(n))
        assert s.run(timeout=120).cause == "events done"
        if counter is not None:
            assert any(a is not None and a > 0 for a in counter.arms) or max(counts) <= MARGIN
        assert s.run(timeout=120).status == STATUS  # the guest goes on undisturbed
        return seen
    finally:
        s.close()


_oracle: dict = {}


def _exact(counts: Tuple[int, ...]) -> List[Tuple[int, ...]]:
    if counts not in _oracle:
        _oracle[counts] = _landings(list(counts), None)
    return list(_oracle[counts])


@pytest.mark.parametrize("skid", range(MARGIN + 1))
def test_events_land_where_the_exact_budget_lands_them(skid: int) -> None:
    counts = (1, 5, 9, 32, 84)
    exact = _exact(counts)
    assert [row[0] for row in exact] == list(counts)
    assert [row[4] for row in exact] == list(counts)  # the oracle is the mock's count
    assert _landings(list(counts), skid) == exact


def test_events_within_the_margin_of_each_other() -> None:
    counts = (20, 21, 27, 60)
    assert _landings(list(counts), MARGIN // 2) == _exact(counts)


def test_an_event_scheduled_by_an_event_lands_exactly() -> None:
    def run(skid: Optional[int]) -> List[Tuple[int, int]]:
        s = _system()
        try:
            if skid is not None:
                s.cpu.use_inst_counter(SkidCounter(s.cpu, skid), margin=MARGIN)
            seen: List[Tuple[int, int]] = []

            def second(tc: ThreadContext) -> None:
                seen.append((tc.rip, s.cpu.vcpu.instructions_retired))
                exit_sim_loop("second", 0, queue=s.eventq)

            def first(tc: ThreadContext) -> None:
                seen.append((tc.rip, s.cpu.vcpu.instructions_retired))
                s.cpu.schedule_inst_event(23, second)

            s.cpu.schedule_inst_event(30, first)
            assert s.run(timeout=120).cause == "second"
            return seen
        finally:
            s.close()

    exact = run(None)
    assert [n for _, n in exact] == [30, 53]
    assert run(3) == exact


def test_a_skid_beyond_the_margin_is_an_overshoot_error() -> None:
    s = _system()
    try:
        s.cpu.use_inst_counter(SkidCounter(s.cpu, MARGIN + 1), margin=MARGIN)
        fired: List[int] = []
        s.cpu.schedule_inst_event(40, lambda tc: fired.append(1))
        with pytest.raises(InstEventOvershootError) as err:
            s.run(timeout=120)
        assert (err.value.target, err.value.reached, err.value.margin) == (40, 41, MARGIN)
        assert "1 past it" in str(err.value) and fired == []
    finally:
        s.close()


def test_use_inst_counter_checks_its_arguments() -> None:
    s = _system()
    try:
        with pytest.raises(TypeError, match="InstCounter"):
            s.cpu.use_inst_counter(object())  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="margin"):
            s.cpu.use_inst_counter(SkidCounter(s.cpu, 0), margin=-1)
    finally:
        s.close()
