"""The gem5-style simulation core: ticks and events, SimObjects, statistics, checkpoints.

The submodules are the reference (``eventq``, ``simobject``, ``params``,
``stats``, ``checkpoint``); the names most code needs are re-exported here.
"""

from __future__ import annotations

from kvmcpu.sim.checkpoint import (
    CheckpointIn,
    CheckpointOut,
    UnknownCheckpointKeyWarning,
    param_in,
    param_out,
    reseal,
    write_checkpoint,
)
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
from kvmcpu.sim.params import Params, param
from kvmcpu.sim.simobject import (
    ClockedObject,
    ClockedObjectParams,
    DrainManager,
    DrainState,
    Root,
    SimObject,
    SimObjectParams,
    instantiate,
)
from kvmcpu.sim.stats import Group, Statistics

__all__ = [
    "MAX_TICK",
    "TICKS_PER_SECOND",
    "CheckpointIn",
    "CheckpointOut",
    "Clocked",
    "ClockedObject",
    "ClockedObjectParams",
    "DrainManager",
    "DrainState",
    "Event",
    "EventFunctionWrapper",
    "EventQueue",
    "ExitEvent",
    "Group",
    "Params",
    "Priority",
    "Root",
    "SimLoopExitEvent",
    "SimObject",
    "SimObjectParams",
    "Statistics",
    "UnknownCheckpointKeyWarning",
    "cur_tick",
    "exit_sim_loop",
    "instantiate",
    "main_queue",
    "param",
    "param_in",
    "param_out",
    "simulate",
    "write_checkpoint",
    "reseal",
]
