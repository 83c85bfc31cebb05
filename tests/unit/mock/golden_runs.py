"""What every bundled guest does on the mock: instruction counts and exits.

``record(vendor)`` runs each bootable guest (``kvmcpu/guests/*.bin``, through
``System``, start to exit; sieve3 up to a tick limit, it runs for 2 s of host
time per million primes) and each test fixture (``guests/*.bin``, on a bare
vCPU the way tests/guests.py sets them up, exit by exit with the IN/MMIO reads
completed) and returns, per guest, the exits with the exact instruction count
at each one. ``golden_runs.json`` beside this file holds what the engine did
when it was written (``python tests/unit/mock/golden_runs.py`` rewrites it);
test_mock_golden.py checks that every engine change keeps it, on both vendors.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

GOLDEN = Path(__file__).resolve().parent / "golden_runs.json"

#: sieve3 runs long on the mock: compare its first TICKS (still millions of instructions)
TICK_LIMITS = {"sieve3": 3_000_000_000}
#: exits recorded per fixture (spin never exits: it runs budgets of SPIN_BUDGET)
MAX_EXITS = 40
SPIN_BUDGET = 10_007


def _system_run(name: str, vendor: str) -> Dict[str, Any]:
    from kvmcpu import System, guests
    from kvmcpu.backends import get_backend

    out = io.BytesIO()
    with get_backend("mock", vendor=vendor) as backend:
        with System(memory="64M", backend=backend, serial=out) as system:
            # the bytes, not the path: the guests print their command line, which names
            # the file (and so where the checkout is)
            system.load(guests.path(name).read_bytes())
            causes = []
            for _ in range(4):  # the checkpoint guest stops at its checkpoint: go on
                # no host timeout: its checks would be extra exits
                res = system.run(max_ticks=TICK_LIMITS.get(name))
                causes.append(res.cause)
                if res.cause != "checkpoint":
                    break
            stats = system.cpu.stats
            return {"causes": causes, "code": res.code, "tick": res.tick,
                    "numInsts": int(stats.numInsts.value),
                    "numVMExits": int(stats.numVMExits.value),
                    "serial": out.getvalue().decode("latin-1")}


def _fixture_run(name: str, vendor: str) -> List[List[Any]]:
    from guests import IN_VALUE, MMIO_READ_VALUE, setup_long, setup_real
    from kvmcpu.backends import HltExit, IoExit, MmioExit, get_backend

    runs = []
    setups = [("long0", lambda vm: setup_long(vm, name, cpl=0)),
              ("long3", lambda vm: setup_long(vm, name, cpl=3))] if name == "io_long" else \
        [("real", lambda vm: setup_real(vm, name))]
    for label, setup in setups:
        with get_backend("mock", vendor=vendor) as backend, backend.create_vm() as vm:
            _, vcpu = setup(vm)
            exits: List[Any] = [label]
            for _ in range(MAX_EXITS):
                if name == "spin":
                    vcpu.set_budget(SPIN_BUDGET)  # type: ignore[attr-defined]
                ex = vcpu.run()
                fields = {k: (bytes(v).hex() if isinstance(v, (bytes, bytearray, memoryview))
                              else v) for k, v in ex.fields().items()}
                exits.append([type(ex).__name__, fields,
                              vcpu.instructions_retired])  # type: ignore[attr-defined]
                if isinstance(ex, IoExit) and not ex.is_write:
                    ex.data[:] = IN_VALUE * ex.count
                elif isinstance(ex, MmioExit) and not ex.is_write:
                    ex.data[:] = MMIO_READ_VALUE[: ex.len]
                if isinstance(ex, HltExit) or type(ex).__name__ in ("ShutdownExit",
                                                                    "InternalErrorExit"):
                    break
                if name == "spin" and len(exits) > 3:
                    break
            regs = vcpu.get_regs()
            exits.append(["regs", regs.rip, regs.rax, regs.rcx, regs.rsi, regs.rdi,
                          regs.rflags])
            vcpu.close()
            runs.append(exits)
    return runs


def record(vendor: str, only: Optional[Iterable[str]] = None) -> Dict[str, Any]:
    """Run every bundled guest and fixture, or only the ``only`` names (as the record
    names them: ``kvmcpu/guests/NAME``, ``guests/NAME``)."""
    from kvmcpu import guests

    wanted = None if only is None else set(only)
    result: Dict[str, Any] = {}
    for name in guests.names():
        if wanted is None or f"kvmcpu/guests/{name}" in wanted:
            result[f"kvmcpu/guests/{name}"] = _system_run(name, vendor)
    for path in sorted((ROOT / "guests").glob("*.bin")):
        if wanted is None or f"guests/{path.stem}" in wanted:
            result[f"guests/{path.stem}"] = _fixture_run(path.stem, vendor)
    return result


def main() -> None:
    data = {vendor: record(vendor) for vendor in ("intel", "amd")}
    GOLDEN.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")


if __name__ == "__main__":
    main()
