"""Cold code on the mock: instructions that run once, where translation is the cost.

Two workloads:

* ``cold``: 2,000 distinct blocks of 7 instructions in 64-bit long mode at CPL0,
  each run once (6 ALU/memory instructions with a different immediate per block,
  then RET to the next block through a table on the stack). The figure is host
  microseconds per guest instruction, on the mock and on /dev/kvm when it is
  usable (on hosts that emulate CPL0 code, that is KVM's instruction emulator).
* the bundled guests (``kvmcpu.guests``) through ``System`` from start to exit:
  host seconds and microseconds per retired instruction (sieve3 runs 2 M
  instructions with ``--quick``).

``run(quick=False) -> {"figures": {...}, "ratio": cold us/instruction / 5.0, "target": 1.0,
"higher_is_better": False}``. Also runnable as a script (prints JSON).
"""

from __future__ import annotations

import io
import json
import struct
import sys
import time
from typing import Any, Dict, Optional

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from kvmcpu.backends import get_backend  # noqa: E402
from kvmcpu.backends.base import Backend  # noqa: E402
from kvmcpu.errors import BackendUnavailableError  # noqa: E402

CODE = 0x100000
TABLE = 0x600000
DATA = 0x700000
BLOCKS = 2000
PER_BLOCK = 7
TARGET_US = 5.0


def cold_image(blocks: int = BLOCKS) -> bytes:
    """``blocks`` blocks of 7 instructions, 32 bytes apart, each ending in RET."""
    out = bytearray()
    for i in range(blocks):
        blk = (b"\xb8" + struct.pack("<I", 0x1000 + i * 77)  # mov eax, imm32
               + b"\x01\xc3"                                  # add ebx, eax
               + b"\x31\xd9"                                  # xor ecx, ebx
               + b"\x89\x8f" + struct.pack("<I", (i * 8) & 0xFFF)  # mov [rdi+d32], ecx
               + b"\xff\xc2"                                  # inc edx
               + b"\x48\x8d\x34\x46"                          # lea rsi, [rsi+rax*2]
               + b"\xc3")                                     # ret
        out += blk.ljust(32, b"\x90")
    out += b"\xf4"  # hlt
    return bytes(out)


def _cold_run(backend: Backend, blocks: int = BLOCKS) -> Optional[float]:
    """Seconds from the first run() to HLT (None if the backend cannot run it)."""
    with backend.create_vm() as vm:
        vm.add_ram(0, 16 << 20)
        vm.write_guest(CODE, cold_image(blocks))
        table = b"".join(struct.pack("<Q", CODE + 32 * i) for i in range(1, blocks + 1))
        vm.write_guest(TABLE, table)
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_long_mode(CODE, rsp=TABLE, cpl=0)
            regs = vcpu.get_regs()
            regs.rdi = DATA
            vcpu.set_regs(regs)
            t0 = time.perf_counter()
            for _ in range(1000):
                ex = vcpu.run()
                if ex.kind == "hlt":
                    return time.perf_counter() - t0
                if ex.kind != "intr" or time.perf_counter() - t0 > 120:
                    return None
            return None
        finally:
            vcpu.close()


def _guest_run(name: str, max_ticks: Optional[int]) -> Dict[str, Any]:
    from kvmcpu import System, guests

    with System(memory="64M", backend="mock", serial=io.BytesIO()) as system:
        system.load(guests.path(name).read_bytes())  # the command line names no path
        t0 = time.perf_counter()
        res = system.run(max_ticks=max_ticks)
        while res.cause == "checkpoint":
            res = system.run(max_ticks=max_ticks)
        secs = time.perf_counter() - t0
        insts = int(system.cpu.stats.numInsts.value)
    return {"seconds": secs, "insts": insts, "cause": res.cause}


def run(quick: bool = False) -> Dict[str, Any]:
    from kvmcpu import guests

    figures: Dict[str, Any] = {}
    insns = BLOCKS * PER_BLOCK + 1
    with get_backend("mock") as mock:
        secs = _cold_run(mock)
    cold_us = secs / insns * 1e6 if secs else None
    figures["mock_cold_us_per_insn"] = cold_us
    try:
        kvm = get_backend("kvm")
    except BackendUnavailableError as err:
        figures["kvm"] = f"unavailable: {err.reason}"
    else:
        with kvm:
            ksecs = _cold_run(kvm)
        if ksecs:
            figures["kvm_cpl0_cold_us_per_insn"] = ksecs / insns * 1e6
    for name in guests.names():
        limit = 2_000_000_000 if quick and name == "sieve3" else None
        r = _guest_run(name, limit)
        figures[f"{name}_seconds"] = r["seconds"]
        figures[f"{name}_us_per_insn"] = r["seconds"] / max(r["insts"], 1) * 1e6
        figures[f"{name}_insts"] = r["insts"]
    for key, v in list(figures.items()):
        if isinstance(v, float):
            figures[key] = round(v, 3)
    figures["target_cold_us_per_insn"] = TARGET_US
    ratio = round(cold_us / TARGET_US, 3) if cold_us else None
    return {"figures": figures, "ratio": ratio, "target": 1.0, "higher_is_better": False}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
