"""Guest instructions per second of the mock vCPU, next to this host's KVM.

Three loops run in 64-bit long mode at CPL0: (a) ``dec ecx; jnz`` (b) a mixed
ALU + memory loop (c) ``rep movsb`` of 1 MiB. Each runs on the mock with and
without the decode cache and on /dev/kvm when it is usable (on hosts that
emulate CPL0 code, that is KVM's instruction emulator). Instruction counts are
exact on the mock (``instructions_retired``); the KVM figure divides the same
architectural instruction count by the wall time. (c) is in MB/s: REP MOVSB retires
once. ``mock_b_bytecodes_per_insn``: Python bytecodes the compiled block runs per guest
instruction of loop (b) (traced, so independent of the host's load).

``run(quick=False) -> {"figures": {...}, "ratio": mock (a) MIPS / 3.0, "target": 1.0,
"higher_is_better": True}``: the ratio is normalised to the 3 MIPS goal, so the target
is 1.0. Also runnable as a script (prints JSON). The figures depend on host load: the
machines this is developed on have two cores shared with other jobs.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent.parent))

from kvmcpu.backends import get_backend  # noqa: E402
from kvmcpu.backends.base import Backend
from kvmcpu.errors import BackendUnavailableError

CODE = 0x100000
TARGET_MIPS = 3.0

# (a) mov ecx, N / l: dec ecx / jnz l / hlt          -> 1 + 2N + 1 instructions
def _loop_a(n: int) -> Tuple[bytes, int]:
    code = b"\xb9" + n.to_bytes(4, "little") + b"\xff\xc9\x75\xfc\xf4"
    return code, 2 + 2 * n


# (b) rsi = buffer; l: mov rax,[rsi]; add rax,rcx; xor rdx,rax; mov [rsi+8],rdx;
#     shl rax,3; sub rdx,rax; lea rsi,[rsi]; dec ecx; jnz l; hlt  -> 9 per iteration
def _loop_b(n: int) -> Tuple[bytes, int]:
    body = bytes.fromhex(
        "488b06"      # mov rax, [rsi]
        "4801c8"      # add rax, rcx
        "4831c2"      # xor rdx, rax
        "48895608"    # mov [rsi+8], rdx
        "48c1e003"    # shl rax, 3
        "4829c2"      # sub rdx, rax
        "488d36"      # lea rsi, [rsi]
        "ffc9"        # dec ecx
    )
    rel = -(len(body) + 2)
    code = (b"\xbe\x00\x00\x30\x00"  # mov esi, 0x300000
            + b"\xb9" + n.to_bytes(4, "little")
            + body + b"\x75" + (rel & 0xFF).to_bytes(1, "little") + b"\xf4")
    return code, 3 + 9 * n


# (c) rep movsb of 1 MiB: REP MOVSB retires once (on the mock as on KVM), so its figure
#     is the bytes moved per second (MB/s, the `n` returned), not instructions
def _loop_c(n: int) -> Tuple[bytes, int]:
    code = (b"\xbe\x00\x00\x40\x00"      # mov esi, 0x400000
            b"\xbf\x00\x00\x50\x00"      # mov edi, 0x500000
            b"\xb9" + n.to_bytes(4, "little")
            + b"\xf3\xa4\xf4")           # rep movsb; hlt
    return code, n


def _time_run(backend: Backend, code: bytes, *, cache: bool = True,
              budget_s: float = 60.0) -> Optional[float]:
    """Seconds from the first run() to HLT, or None if the backend cannot run it."""
    with backend.create_vm() as vm:
        vm.add_ram(0, 8 << 20)
        vm.write_guest(CODE, code)
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_long_mode(CODE, rsp=0x200000, cpl=0)
            if hasattr(vcpu, "use_decode_cache"):
                vcpu.use_decode_cache = cache  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            for _ in range(1000):
                ex = vcpu.run()
                if ex.kind == "hlt":
                    return time.perf_counter() - t0
                if ex.kind != "intr" or time.perf_counter() - t0 > budget_s:
                    return None
            return None
        finally:
            vcpu.close()


def _measure(make: Callable[[int], Tuple[bytes, int]], n: int, backend: Backend,
             **kw: Any) -> Optional[float]:
    code, insns = make(n)
    secs = _time_run(backend, code, **kw)
    if secs is None or secs <= 0:
        return None
    return insns / secs / 1e6


def bytecodes_per_insn() -> float:
    """Bytecodes the compiled loop (b) runs per guest instruction (sys.settrace opcodes,
    over 1,000 iterations less 100: the difference leaves entry and exit out)."""
    from kvmcpu.backends.mock import tier0

    def count(iters: int) -> int:
        code, _ = _loop_b(iters)
        n = [0]

        def inner(frame: Any, event: str, arg: Any) -> Any:
            if event == "opcode":
                n[0] += 1
            return inner

        def outer(frame: Any, event: str, arg: Any) -> Any:
            if frame.f_code.co_filename.startswith("<mock-block"):
                frame.f_trace_opcodes = True
                return inner
            return None
        saved = tier0.PROMOTE_AFTER
        tier0.PROMOTE_AFTER = 1
        try:
            with get_backend("mock") as mock, mock.create_vm() as vm:
                vm.add_ram(0, 8 << 20)
                vm.write_guest(CODE, code)
                vcpu = vm.create_vcpu(0)
                vcpu.set_long_mode(CODE, rsp=0x200000, cpl=0)
                sys.settrace(outer)
                try:
                    vcpu.run()
                finally:
                    sys.settrace(None)
                vcpu.close()
        finally:
            tier0.PROMOTE_AFTER = saved
        return n[0]
    return (count(1100) - count(100)) / (9 * 1000)


def run(quick: bool = False) -> Dict[str, Any]:
    """Measure and return the figures (MIPS)."""
    sizes = {"a": 100_000 if quick else 1_000_000, "b": 20_000 if quick else 200_000,
             "c": 1 << 20}
    loops = {"a": _loop_a, "b": _loop_b, "c": _loop_c}
    figures: Dict[str, Any] = {}
    unit = {"a": "mips", "b": "mips", "c": "mb_per_s"}
    with get_backend("mock") as mock:
        for k, make in loops.items():
            figures[f"mock_{k}_{unit[k]}"] = _measure(make, sizes[k], mock)
            small = max(sizes[k] // (20 if k != "c" else 1), 1000)
            figures[f"mock_nocache_{k}_{unit[k]}"] = _measure(make, small, mock,
                                                              cache=False)
    try:
        kvm = get_backend("kvm")
    except BackendUnavailableError as err:
        figures["kvm"] = f"unavailable: {err.reason}"
    else:
        with kvm:
            for k, make in loops.items():
                figures[f"kvm_cpl0_{k}_{unit[k]}"] = _measure(make, sizes[k], kvm)
    for k in loops:
        kv = figures.get(f"kvm_cpl0_{k}_{unit[k]}")
        if isinstance(kv, float) and figures.get(f"mock_{k}_{unit[k]}"):
            figures[f"mock_over_kvm_{k}"] = figures[f"mock_{k}_{unit[k]}"] / kv
    figures["mock_b_bytecodes_per_insn"] = bytecodes_per_insn()
    a = figures.get("mock_a_mips") or 0.0
    for key, v in list(figures.items()):
        if isinstance(v, float):
            figures[key] = round(v, 3)
    figures["target_a_mips"] = TARGET_MIPS
    return {"figures": figures, "ratio": round(a / TARGET_MIPS, 3), "target": 1.0,
            "higher_is_better": True}


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv), indent=2))
