"""Register and state access of a KVM CPU, and the TC/vCPU dirty-flag sync (gem5 names).

A mixin of :class:`~kvmcpu.cpu.kvm.base.BaseKvmCPU`: the thin wrappers gem5's
BaseKvmCPU has around the vCPU's state ioctls, and ``syncThreadContext`` /
``syncKvmState`` with ``threadContextDirty`` / ``kvmStateDirty`` exactly as gem5.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Optional

from ...backends.base import Vcpu
from ...errors import SimulationError
from ..thread import ThreadContext


class KvmStateAccess:
    """State wrappers and dirty-flag sync (mixed into BaseKvmCPU after SimObject)."""

    vcpu: Optional[Vcpu]
    tc: ThreadContext
    threadContextDirty: bool
    kvmStateDirty: bool

    if TYPE_CHECKING:
        def path(self) -> str: ...

    def getRegisters(self) -> Any:
        return self._vcpu().get_regs()

    def setRegisters(self, regs: Any) -> None:
        self._vcpu().set_regs(regs)

    def getSpecialRegisters(self) -> Any:
        return self._vcpu().get_sregs()

    def setSpecialRegisters(self, sregs: Any) -> None:
        self._vcpu().set_sregs(sregs)

    def getFPUState(self) -> Any:
        return self._vcpu().get_fpu()

    def setFPUState(self, fpu: Any) -> None:
        self._vcpu().set_fpu(fpu)

    def setOneReg(self, reg_id: int, value: int) -> None:
        self._vcpu().set_one_reg(reg_id, value)

    def getOneReg(self, reg_id: int) -> int:
        return self._vcpu().get_one_reg(reg_id)

    def getOneRegU64(self, reg_id: int) -> int:
        return self.getOneReg(reg_id) & 0xFFFF_FFFF_FFFF_FFFF

    def getOneRegU32(self, reg_id: int) -> int:
        return self.getOneReg(reg_id) & 0xFFFF_FFFF

    def setOneRegU64(self, reg_id: int, value: int) -> None:
        self.setOneReg(reg_id, value & 0xFFFF_FFFF_FFFF_FFFF)

    def setOneRegU32(self, reg_id: int, value: int) -> None:
        self.setOneReg(reg_id, value & 0xFFFF_FFFF)

    def getAndFormatOneReg(self, reg_id: int) -> str:
        """A ONE_REG register formatted in hex."""
        return hex(self.getOneReg(reg_id))

    def getKvmRunState(self) -> Any:
        """The vCPU's kvm_run structure."""
        return self._vcpu().kvm_run

    def getGuestData(self, offset: int) -> memoryview:
        """A view of the run page at ``offset`` (where KVM puts IO data)."""
        return self._vcpu().run_page[offset:]

    def _vcpu(self) -> Vcpu:
        if self.vcpu is None:
            raise SimulationError(f"{self.path()}: the vCPU does not exist yet (before startup)")
        return self.vcpu

    def syncThreadContext(self) -> None:
        """Pull the vCPU state into the TC when the vCPU is newer."""
        if not self.kvmStateDirty:
            return
        if self.threadContextDirty:
            raise SimulationError(f"{self.path()}: both the TC and the vCPU are dirty")
        self.updateThreadContext()
        self.kvmStateDirty = False

    def syncKvmState(self) -> None:
        """Push the TC into the vCPU when the TC is newer."""
        if not self.threadContextDirty:
            return
        if self.kvmStateDirty:
            raise SimulationError(f"{self.path()}: both the TC and the vCPU are dirty")
        self.updateKvmState()
        self.threadContextDirty = False

    def updateKvmState(self) -> None:
        """Write the TC into the vCPU (architectures implement)."""
        raise NotImplementedError

    def updateThreadContext(self) -> None:
        """Read the vCPU into the TC (architectures implement)."""
        raise NotImplementedError

    def setThreadContext(self, tc: ThreadContext) -> None:
        """Replace the architectural state (marks the TC dirty)."""
        if self.kvmStateDirty:
            self.kvmStateDirty = False
        self.tc = tc
        self.threadContextDirty = True

    def dump(self) -> str:
        """A register dump (gem5 dump()): the TC after syncing when possible."""
        if self.vcpu is not None and self.kvmStateDirty and not self.threadContextDirty:
            self.syncThreadContext()
        return self.tc.dump()
