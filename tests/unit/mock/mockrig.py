"""The mock test rig: a VM with RAM at 0 and one vCPU, plus assembling helpers."""

from __future__ import annotations

from typing import List, Optional

from mockasm import asm

from kvmcpu.backends import Exit, get_backend
from kvmcpu.backends.mock import MockBackend, MockVcpu, MockVm


class Machine:
    """A mock VM with ``ram_size`` bytes of RAM at 0 and vCPU 0 (the host's vendor
    profile unless ``vendor`` names one)."""

    def __init__(self, ram_size: int = 4 << 20, vendor: Optional[str] = None) -> None:
        self.backend: MockBackend = get_backend(  # type: ignore[assignment]
            "mock", **({} if vendor is None else {"vendor": vendor}))
        self.vm: MockVm = self.backend.create_vm()
        self.ram = self.vm.add_ram(0, ram_size)
        self.vcpu: MockVcpu = self.vm.create_vcpu(0)  # type: ignore[assignment]
        self.out = b""

    def load(self, addr: int, code: bytes) -> None:
        self.ram[addr:addr + len(code)] = code

    def real(self, source: str, at: int = 0x1000, sp: int = 0x8000) -> None:
        self.load(at, asm(source, 16, at))
        self.vcpu.set_real_mode(0, at, sp=sp)

    def prot(self, source: str, at: int = 0x10000, esp: int = 0x80000) -> None:
        self.load(at, asm(source, 32, at))
        self.vcpu.set_protected_mode(at, esp=esp)

    def long(self, source: str, at: int = 0x100000, cpl: int = 0, rsp: int = 0x200000) -> None:
        self.load(at, asm(source, 64, at))
        self.vcpu.set_long_mode(at, rsp=rsp, cpl=cpl)

    def run(self, n: int = 1) -> Exit:
        ex = self.vcpu.run()
        for _ in range(n - 1):
            ex = self.vcpu.run()
        return ex

    def exits(self, limit: int = 50, until: str = "hlt") -> List[Exit]:
        """Run until ``until`` (or shutdown/internal error); IO writes go to ``self.out``."""
        out = []
        for _ in range(limit):
            ex = self.vcpu.run()
            out.append(ex)
            if ex.kind == "io" and ex.is_write:  # type: ignore[attr-defined]
                self.out += bytes(ex.data)  # type: ignore[attr-defined]
            if ex.kind in (until, "shutdown", "internal_error"):
                break
        return out

    def regs(self):  # type: ignore[no-untyped-def]
        return self.vcpu.get_regs()

    def close(self) -> None:
        self.vm.close()
        self.backend.close()
