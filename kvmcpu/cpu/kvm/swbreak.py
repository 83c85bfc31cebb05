"""Software breakpoints: INT3 (0xCC) patched into guest memory.

:class:`Patches` keeps, for each patched linear address, the guest-physical
byte it patched (the translation when it was armed, as QEMU's stub keeps it)
and the original byte in ``shadow`` (guest-physical address -> byte). The
System gives the CPU the shadow of its :class:`~kvmcpu.mem.physmem.PhysicalMemory`
(``PhysicalMemory.overlay``), so reads through the System's memory API and the
GDB stub see the original bytes and writes there change the original (the INT3
stays). The guest itself reads 0xCC at a patched byte while the breakpoint is
armed, as with QEMU's stub; everything else on the page is the guest's own.

A guest (or anything writing RAM behind the System's back) that overwrites a
patched byte has put new code there: :meth:`Patches.verify` takes the new byte
as the original and patches the INT3 in again, so the breakpoint is not lost
and its old original does not come back into the guest's memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Dict, List

if TYPE_CHECKING:
    from ...backends.base import Vm

INT3 = 0xCC


class Patches:
    """The INT3 patches of one CPU, written through the backend VM's memory."""

    def __init__(self, vm: Vm, shadow: Dict[int, int]) -> None:
        self.vm = vm
        #: guest-physical address -> the original byte (what the host is shown)
        self.shadow = shadow
        #: linear address -> guest-physical address of its patch
        self.at: Dict[int, int] = {}

    def __bool__(self) -> bool:
        return bool(self.at)

    def _byte(self, gpa: int) -> int:
        return self.vm.read_guest(gpa, 1)[0]

    def insert(self, lin: int, gpa: int) -> None:
        if lin in self.at:
            return
        if gpa not in self.shadow:
            self.shadow[gpa] = self._byte(gpa)
            self.vm.write_guest(gpa, bytes((INT3,)))
        self.at[lin] = gpa

    def remove(self, lin: int) -> None:
        gpa = self.at.pop(lin, None)
        if gpa is None or gpa in self.at.values():
            return  # another linear alias still uses the patch
        orig = self.shadow.pop(gpa, None)
        if orig is not None and self._byte(gpa) == INT3:
            self.vm.write_guest(gpa, bytes((orig,)))

    def remove_all(self) -> List[int]:
        """Take every patch out (restoring the original bytes); returns their addresses."""
        lins = list(self.at)
        for lin in lins:
            self.remove(lin)
        return lins

    def verify(self) -> None:
        """Re-patch bytes written since they were patched (see the module docstring)."""
        for gpa in set(self.at.values()):
            cur = self._byte(gpa)
            if cur != INT3:
                self.shadow[gpa] = cur
                self.vm.write_guest(gpa, bytes((INT3,)))
