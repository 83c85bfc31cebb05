"""The gem5-style simulation core: ticks and events, SimObjects, statistics, checkpoints."""

from __future__ import annotations

from kvmcpu.sim.eventq import (
    MAX_TICK,
    TICKS_PER_SECOND,
    Clocked,
    Event,
    EventFunctionWrapper,
    EventQueue,
    ExitEvent,
    Priority,
    SimLoopExitEvent,
    cur_tick,
    exit_sim_loop,
    main_queue,
    simulate,
)

__all__ = [
    "MAX_TICK",
    "TICKS_PER_SECOND",
    "Clocked",
    "Event",
    "EventFunctionWrapper",
    "EventQueue",
    "ExitEvent",
    "Priority",
    "SimLoopExitEvent",
    "cur_tick",
    "exit_sim_loop",
    "main_queue",
    "simulate",
]
