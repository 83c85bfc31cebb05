"""The KVM CPU model (gem5 ``src/cpu/kvm``): KvmVM, BaseKvmCPU, X86KvmCPU, run timers."""

from __future__ import annotations

from .base import BaseKvmCPU, BaseKvmCPUParams, GuestTripleFault, Status, ThreadStatus
from .perfevent import (
    CounterSource,
    HostClockCounters,
    MockCounters,
    PerfCounters,
    choose_counters,
    hardware_counters_usable,
)
from .switch import switch_cpu, switch_cpu_group, switch_cpus
from .timer import BaseKvmTimer, BudgetKvmTimer, PerfKvmTimer, PosixKvmTimer
from .vm import Kvm, KvmVM, KvmVMParams
from .x86 import (
    X86KvmCPU,
    fixup_sregs,
    long_mode_context,
    long_mode_tables,
    protected_mode_context,
    real_mode_context,
)

__all__ = [
    "BaseKvmCPU", "BaseKvmCPUParams", "GuestTripleFault", "Status", "ThreadStatus",
    "CounterSource", "HostClockCounters", "MockCounters", "PerfCounters", "choose_counters",
    "hardware_counters_usable", "BaseKvmTimer", "BudgetKvmTimer", "PerfKvmTimer",
    "PosixKvmTimer", "Kvm", "KvmVM", "KvmVMParams", "X86KvmCPU", "fixup_sregs",
    "long_mode_context", "long_mode_tables", "protected_mode_context", "real_mode_context",
    "switch_cpu", "switch_cpu_group", "switch_cpus",
]
