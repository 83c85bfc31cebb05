"""Host facts for ``kvmcpu info``: the backend, its capabilities, CPUID, MSRs,
perf counters and what /sys says about the KVM modules.

Everything goes through the Backend interface, so the report works on the
mock too; the /sys and perf probes look at the host whichever backend runs.
"""

from __future__ import annotations

import errno
import os
import struct
from pathlib import Path
from typing import Any, Dict, List, Tuple

from . import _ioctl
from .backends import get_backend
from .backends.base import Backend
from .cpu.kvm.base import BaseKvmCPUParams
from .cpu.kvm.perfevent import HostClockCounters, MockCounters, PerfCounters
from .cpu.kvm.timer import BudgetKvmTimer, PosixKvmTimer, measure_min_quantum_ns
from .cpu.kvm.vm import Kvm, smp_limit
from .errors import BackendUnavailableError, KvmIoctlError
from .uapi import Cap

#: The capabilities worth showing, in display order.
INTERESTING_CAPS: Tuple[Cap, ...] = (
    Cap.USER_MEMORY, Cap.SET_TSS_ADDR, Cap.SET_IDENTITY_MAP_ADDR, Cap.EXT_CPUID,
    Cap.NR_VCPUS, Cap.MAX_VCPUS, Cap.NR_MEMSLOTS, Cap.IRQCHIP, Cap.SPLIT_IRQCHIP, Cap.PIT2,
    Cap.USER_NMI, Cap.MP_STATE, Cap.VCPU_EVENTS, Cap.DEBUGREGS, Cap.XSAVE, Cap.XSAVE2,
    Cap.XCRS, Cap.ONE_REG, Cap.SYNC_REGS, Cap.IMMEDIATE_EXIT, Cap.SET_GUEST_DEBUG,
    Cap.READONLY_MEM, Cap.COALESCED_MMIO, Cap.COALESCED_PIO, Cap.IOEVENTFD, Cap.IRQFD,
    Cap.GET_TSC_KHZ, Cap.TSC_CONTROL, Cap.X86_SMM, Cap.EXIT_HYPERCALL,
    Cap.X86_DISABLE_EXITS, Cap.GET_MSR_FEATURES, Cap.DIRTY_LOG_RING,
    Cap.MANUAL_DIRTY_LOG_PROTECT2, Cap.PMU_CAPABILITY,
)

SYS_MODULE = Path("/sys/module")


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def host_notes(sys_module: Path = SYS_MODULE, *, backend: str | None = "kvm") -> Dict[str, Any]:
    """KVM modules loaded, nesting, PVM and PMU settings from /sys/module.

    The note on how KVM runs guest code (``note``) is given only for the
    ``kvm`` backend: the mock runs every guest itself.
    """
    notes: Dict[str, Any] = {}
    modules = [m for m in ("kvm", "kvm_intel", "kvm_amd", "kvm_pvm")
               if (sys_module / m).is_dir()]
    notes["kvm_modules"] = modules
    for vendor in ("kvm_intel", "kvm_amd"):
        nested = _read(sys_module / vendor / "parameters" / "nested")
        if nested is not None:
            notes[f"{vendor}.nested"] = nested
    notes["pvm"] = "kvm_pvm" in modules
    enable_pmu = _read(sys_module / "kvm" / "parameters" / "enable_pmu")
    if enable_pmu is not None:
        notes["kvm.enable_pmu"] = enable_pmu
    if notes["pvm"] and backend == "kvm":
        notes["note"] = (
            "kvm_pvm (pagetable-based virtualization, nested): 64-bit CPL3 guest code runs "
            "natively; real mode, protected mode and CPL0 code is emulated by KVM (what its "
            "emulator refuses runs on the mock: --emulation-fallback)"
        )
    return notes


def probe_perf_counters() -> Dict[str, Any]:
    """Whether PERF_TYPE_HARDWARE cycles with exclude_host can be opened."""
    attr = _ioctl.perf_event_attr()
    attr.type = _ioctl.PERF_TYPE_HARDWARE
    attr.config = _ioctl.PERF_COUNT_HW_CPU_CYCLES
    attr.flags = _ioctl.PERF_ATTR_DISABLED | _ioctl.PERF_ATTR_EXCLUDE_HOST
    try:
        fd = _ioctl.perf_event_open(attr, 0, -1, -1)
    except KvmIoctlError as err:
        absent = err.errno in (errno.ENOENT, errno.ENODEV, errno.EOPNOTSUPP)
        return {
            "usable": False,
            "reason": (f"no hardware counters ({errno.errorcode.get(err.errno or 0, err.errno)})"
                       if absent else str(err)),
        }
    os.close(fd)
    return {"usable": True, "reason": "PERF_TYPE_HARDWARE cycles (exclude_host) opened"}


def cpuid_summary(backend: Backend) -> Dict[str, Any]:
    """Vendor (leaf 0), max basic and extended leaves and entry count of the
    supported CPUID."""
    entries = backend.get_supported_cpuid()
    summary: Dict[str, Any] = {"entries": len(entries)}
    leaf0 = next((e for e in entries if e.function == 0), None)
    if leaf0 is not None:
        vendor = struct.pack("<III", leaf0.ebx, leaf0.edx, leaf0.ecx)
        summary["vendor"] = vendor.decode("ascii", "replace")
        summary["max_basic_leaf"] = int(leaf0.eax)
    ext = next((e for e in entries if e.function == 0x80000000), None)
    if ext is not None:
        summary["max_extended_leaf"] = int(ext.eax)
    return summary


def capabilities(backend: Backend) -> List[Tuple[str, int]]:
    """(name, KVM_CHECK_EXTENSION value) for INTERESTING_CAPS."""
    return [(f"KVM_CAP_{cap.name}", backend.check_extension(cap)) for cap in INTERESTING_CAPS]


def gather(backend_name: str = "auto") -> Dict[str, Any]:
    """Everything ``kvmcpu info`` reports, as one JSON-able dict.

    When the backend cannot be opened the report still has the host facts,
    ``backend`` is None and ``error`` says why.
    """
    facts: Dict[str, Any] = {"requested": backend_name}
    try:
        backend = get_backend(backend_name)
    except BackendUnavailableError as err:
        return _without_backend(facts, err.reason)
    except ImportError as err:  # a backend module that fails at import time
        return _without_backend(facts, f"cannot import: {err}")
    with backend:
        facts.update(backend.describe())
        facts["reason"] = backend.reason
        facts["capabilities"] = dict(capabilities(backend))
        facts["cpuid"] = cpuid_summary(backend)
        facts["max_cpus"] = smp_limit(Kvm(backend))
        msrs = backend.get_msr_index_list()
        facts["msr_count"] = len(msrs)
        facts["msr_feature_count"] = len(backend.get_msr_feature_index_list())
        if facts.get("backend") == "kvm":
            facts["run_timer_floor"] = measure_run_timer_floor(backend)
    facts["perf_counters"] = probe_perf_counters()
    facts["cpu_timing"] = cpu_timing(str(facts.get("backend")), facts["perf_counters"])
    facts["emulation_fallback"] = emulation_fallback_note(str(facts.get("backend")))
    facts["host"] = host_notes(backend=facts.get("backend"))
    return facts


def emulation_fallback_note(backend_name: str) -> str:
    """What the KVM CPU does when KVM's instruction emulator gives up, on this backend."""
    if backend_name == "mock":
        return ("none (the mock is the fallback: an instruction it does not implement ends "
                "the run with KVM_EXIT_INTERNAL_ERROR)")
    return ("on by default (--emulation-fallback): an instruction KVM's emulator refuses "
            "(KVM_EXIT_INTERNAL_ERROR, emulation) runs on the mock over the same memory and "
            "devices, then KVM continues; counted in numEmulatedInstructions; "
            "--emulation-fallback burst runs all CPL0 code on the mock where KVM emulates "
            "it (numEmulationBursts)")


def measure_run_timer_floor(backend: Backend) -> Dict[str, Any]:
    """The shortest run-timer quantum this host honours (see
    :func:`~kvmcpu.cpu.kvm.timer.measure_min_quantum_ns`) as numbers:
    ``{"ns": 30000, "measured": True}``, or ``{"ns": None, "measured": False,
    "error": why}``."""
    try:
        ns = measure_min_quantum_ns(backend)
    except (KvmIoctlError, RuntimeError) as err:
        return {"ns": None, "measured": False, "error": str(err)}
    return {"ns": int(ns), "measured": True}


def _floor_text(floor: Dict[str, Any]) -> str:
    if floor.get("ns") is None:
        return f"not measured: {floor.get('error')}"
    return (f"{floor['ns'] / 1000:g} us (measured: shorter quanta give the guest under half "
            f"their time)")


def run_timer_floor(backend: Backend) -> str:
    """:func:`measure_run_timer_floor` as the line ``kvmcpu info`` prints."""
    return _floor_text(measure_run_timer_floor(backend))


def cpu_timing(backend_name: str, perf: Dict[str, Any]) -> Dict[str, str]:
    """Where the KVM CPU model gets cycles/instructions and its run timer, on this backend
    (the same choice BaseKvmCPU makes at startup with default parameters)."""
    if backend_name == "mock":
        return {"counters": MockCounters.describe, "run_timer": BudgetKvmTimer.describe}
    if perf.get("usable"):
        counters = PerfCounters.describe
    else:
        counters = HostClockCounters(BaseKvmCPUParams().hostFreq).describe
    return {"counters": counters, "run_timer": PosixKvmTimer.describe}


def _without_backend(facts: Dict[str, Any], reason: str) -> Dict[str, Any]:
    facts.update({"backend": None, "error": reason})
    facts["perf_counters"] = probe_perf_counters()
    facts["host"] = host_notes(backend=None)
    return facts


def _perf_line(facts: Dict[str, Any]) -> str:
    perf = facts.get("perf_counters", {})
    return f"HW perf:        {'yes' if perf.get('usable') else 'no'} ({perf.get('reason')})"


def _host_lines(facts: Dict[str, Any]) -> List[str]:
    lines = ["host:"]
    for key, value in facts.get("host", {}).items():
        if isinstance(value, list):
            value = ", ".join(value) or "none"
        lines.append(f"  {key:34s} {value}")
    return lines


def format_text(facts: Dict[str, Any]) -> str:
    """The human-readable report."""
    if facts.get("backend") is None:
        lines = [f"backend:        none ({facts.get('requested')} is unavailable: "
                 f"{facts.get('error')})"]
        lines.append(_perf_line(facts))
        lines.extend(_host_lines(facts))
        return "\n".join(lines)
    lines = [
        f"backend:        {facts.get('backend')}",
        f"why:            {facts.get('reason')}",
        f"API version:    {facts.get('api_version')}",
    ]
    for key in ("device", "vcpu_mmap_size", "kick_signal"):
        if key in facts:
            lines.append(f"{key + ':':16s}{facts[key]}")
    if "vendor_profile" in facts:
        lines.append(f"vendor profile: {facts['vendor_profile']} (undefined flags and results; "
                     f"chosen by: {facts.get('vendor_profile_source')})")
    cpuid = facts.get("cpuid", {})
    lines.append(
        f"CPUID:          {cpuid.get('vendor', '?')}, max basic leaf "
        f"{cpuid.get('max_basic_leaf', 0):#x}, max extended leaf "
        f"{cpuid.get('max_extended_leaf', 0):#x}, {cpuid.get('entries', 0)} entries"
    )
    if "max_cpus" in facts:
        lines.append(f"CPUs (--smp):   up to {facts['max_cpus']} (KVM_CAP_MAX_VCPUS, at most "
                     f"255 APIC IDs)")
    lines.append(f"MSRs:           {facts.get('msr_count')} "
                 f"({facts.get('msr_feature_count')} feature MSRs)")
    lines.append(_perf_line(facts))
    timing = facts.get("cpu_timing", {})
    if timing:
        lines.append(f"CPU counters:   {timing.get('counters')}")
        lines.append(f"run timer:      {timing.get('run_timer')}")
    if "run_timer_floor" in facts:
        lines.append(f"timer floor:    {_floor_text(facts['run_timer_floor'])}")
    if "emulation_fallback" in facts:
        lines.append(f"emul. fallback: {facts['emulation_fallback']}")
    lines.append("capabilities:")
    for name, value in facts.get("capabilities", {}).items():
        lines.append(f"  {name:34s} {value}")
    lines.extend(_host_lines(facts))
    return "\n".join(lines)


__all__ = ["gather", "format_text", "emulation_fallback_note", "host_notes",
           "probe_perf_counters", "cpuid_summary", "capabilities", "measure_run_timer_floor",
           "run_timer_floor", "INTERESTING_CAPS"]
