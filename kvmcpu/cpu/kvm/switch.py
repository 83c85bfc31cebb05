"""Moving a running thread from one KVM CPU to another (gem5 ``m5.switchCpus``).

:func:`switch_cpus` is gem5's sequence for two CPUs that both exist: drain
the whole tree, ``switchOut()`` the old CPU, ``takeOverFrom()`` on the new
one; the next ``simulate()`` resumes the tree and the new CPU carries on.

:func:`switch_cpu` builds the new CPU itself, on another backend, and puts it
*in the old one's place*: a new :class:`~kvmcpu.cpu.kvm.vm.KvmVM` on
``backend`` with the old VM's name, parameters and RAM regions (the same
host buffers, so memory needs no copying), and a CPU of the same class with
the old one's name, parameters, buses and interrupt source. The old CPU and
VM are closed. Because the tree keeps its shape (``system.cpu0``,
``system.kvm_vm``), stats keep their names (the counters carry over) and
checkpoints written afterwards restore as usual.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, List, Optional, Sequence, Union

from ...backends.base import Backend
from ...errors import SimulationError
from ...sim import stats as st
from ...sim.simobject import Root, SimObject
from .base import BaseKvmCPU
from .vm import KvmVM

log = logging.getLogger("kvmcpu.cpu.kvm")


def _root_of(obj: SimObject) -> Root:
    node: Optional[SimObject] = obj
    while node is not None and not isinstance(node, Root):
        node = node.parent
    if node is None:
        raise SimulationError(f"{obj.path()} is not in a tree with a Root")
    return node


def switch_cpus(old: BaseKvmCPU, new: BaseKvmCPU) -> None:
    """Drain the tree, switch ``old`` out and let ``new`` take over its thread.

    Raises:
        SimulationError: the CPUs are not in one tree, or ``new`` is running.
    """
    root = _root_of(old)
    if _root_of(new) is not root:
        raise SimulationError(f"{old.path()} and {new.path()} are not in the same tree")
    if not root.drain_manager.is_drained():
        root.drain_all()
    old.switchOut()
    new.takeOverFrom(old)


def _detach(obj: SimObject) -> None:
    parent = obj.parent
    if parent is None:
        return
    del parent.children[obj.name]
    parent.stats_group.remove_group(obj.name)


def switch_cpu(old: BaseKvmCPU, backend: Union[Backend, str]) -> BaseKvmCPU:
    """Continue ``old``'s thread on a new CPU and VM on ``backend`` that take their places.

    Drains the tree first (see the module docstring). Returns the new CPU; the
    next ``simulate()`` resumes it.

    Raises:
        SimulationError: the old VM has an in-kernel irqchip (its state cannot
            move), or the CPU is not in a tree with a Root.
    """
    return switch_cpu_group([old], backend)[0]


def switch_cpu_group(olds: Sequence[BaseKvmCPU], backend: Union[Backend, str]
                     ) -> List[BaseKvmCPU]:
    """:func:`switch_cpu` for every CPU of one VM at once (several CPUs): one new VM on
    ``backend`` in the old VM's place, and a new CPU in each old CPU's place, in
    order (so the vCPU ids, 0..N-1, are the same). Returns the new CPUs.

    Raises:
        ValueError: no CPUs, or CPUs of different VMs.
        SimulationError: as :func:`switch_cpu`.
    """
    if not olds:
        raise ValueError("switch_cpu_group: no CPUs given")
    old_vm = olds[0].vm
    if any(cpu.vm is not old_vm for cpu in olds):
        raise ValueError("switch_cpu_group: the CPUs must share one VM")
    if old_vm.kernel_lapic:
        raise SimulationError(f"{olds[0].path()}: cannot switch a CPU whose VM has an "
                              "in-kernel irqchip (its interrupt state lives in the kernel)")
    root = _root_of(olds[0])
    if not root.drain_manager.is_drained():
        root.drain_all()
    for old in olds:
        old.switchOut()
    vm_parent = old_vm.parent
    _detach(old_vm)
    for old in olds:
        _detach(old)
    try:
        vm = KvmVM(old_vm.name, vm_parent, backend=backend,
                   params=dataclasses.replace(old_vm.params))
    except BaseException:
        _reattach(old_vm)
        for old in olds:
            _reattach(old)
            old.switched_out = False
        raise
    for gpa, memory, flags in old_vm._ram:
        vm.add_ram(gpa, memory, flags=flags)
    news: List[BaseKvmCPU] = []
    try:
        for old in olds:
            new = type(old)(old.name, old.parent, vm=vm, io_bus=old.io_bus,
                            mmio_bus=old.mmio_bus,
                            params=dataclasses.replace(old.params, cpu_id=-1),
                            **old.clone_kwargs())
            news.append(new)
            new.on_halt = old.on_halt
            new.hypercall_handler = old.hypercall_handler
            new.drain_state = old.drain_state
            new._drain_manager = old._drain_manager
            new.takeOverFrom(old)
    except BaseException:
        for new in news:
            new.close()
        vm.close()
        raise
    for old, new in zip(olds, news):
        new.ctr_insts = old.ctr_insts
        _carry_stats(old.stats_group, new.stats_group)
        log.info("%s: switched from backend %s to %s", new.path(), old_vm.backend.name,
                 vm.backend.name)
        old.close()
    old_vm.close()
    return news


def _reattach(obj: SimObject) -> None:
    parent = obj.parent
    if parent is not None:
        parent.children[obj.name] = obj
        parent.stats_group.add_group(obj.name, obj.stats_group)


def _carry_stats(old: st.Group, new: st.Group) -> None:
    """Copy the old CPU's counters into the new one's (same names)."""
    values = {name: stat for name, stat in old.walk()}
    for name, stat in new.walk():
        prev: Any = values.get(name)
        if isinstance(stat, st.Scalar) and isinstance(prev, st.Scalar):
            stat.value = prev.value
