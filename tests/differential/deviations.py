"""The host-deviation table (host_deviations.json): load it, probe it, render it.

``python tests/differential/deviations.py --write`` regenerates HOST_DEVIATIONS.md
from the JSON; ``test_diff_kvm.test_deviation_page_is_generated`` checks they agree.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any, Dict, List

HERE = Path(__file__).resolve().parent
TABLE = HERE / "host_deviations.json"
PAGE = HERE / "HOST_DEVIATIONS.md"

_HEAD = """# Where this host's KVM differs from silicon (and the mock does not copy it)

Generated from `host_deviations.json` by `python tests/differential/deviations.py --write`;
edit the JSON, not this page.

The mock follows the architecture and, where the SDM/APM leave a result undefined,
the silicon of the host's vendor (its vendor profile, `kvmcpu/backends/mock/undefined.py`).
This host's `/dev/kvm` (`kvm_pvm`, nested) runs CPL0, real and protected mode code in
KVM's instruction emulator, which deviates in the cases below. Rows marked *probed* are
detected at test time (a probe runs on KVM and on the mock): where the deviation is
present, `test_diff_kvm.py` leaves the matching instructions out of its random programs
at that CPL, and compares everything else with every flag. The other rows document
what the directed tests (tests/hw, tests/differential) take into account.

| id | instruction | KVM | silicon / mock | detection |
|---|---|---|---|---|
"""

_TAIL = """
Documented modelling choices of the mock (not deviations of the host):

* INTERNAL_ERROR/EMULATION: the mock reports `ndata = 3` (flags + instruction
  bytes) and `insn_size` = the decoded length of the refused instruction; this
  host reports `ndata = 8` and always 15 fetched bytes.
* `rep ins/outs`: one element per IO exit (count 1), as this host's emulator does.
* MOV to CR0 etc. end a translated block; RDTSC starts its own block so the TSC
  it returns equals the exact cycle count (one cycle per instruction).
"""


def load() -> List[Dict[str, Any]]:
    """The rows, each checked for the keys it needs."""
    rows: List[Dict[str, Any]] = json.loads(TABLE.read_text())["rows"]
    for r in rows:
        for key in ("id", "instruction", "kvm", "silicon"):
            if key not in r:
                raise ValueError(f"host_deviations.json: row {r.get('id')!r} has no {key!r}")
        if "probe" in r:
            re.compile(r["match"])
            bytes.fromhex(r["probe"]["code"])
    return rows


def render(rows: List[Dict[str, Any]]) -> str:
    lines = []
    for r in rows:
        how = f"probed (CPL{r['cpl']})" if "probe" in r else "directed tests"
        lines.append(f"| {r['id']} | {r['instruction']} | {r['kvm']} | {r['silicon']} | {how} |")
    return _HEAD + "\n".join(lines) + "\n" + _TAIL


def present(kvm: Any, mock: Any, row: Dict[str, Any]) -> bool:
    """Whether ``row``'s deviation shows on this host: its probe gives different
    registers, flags or exits on KVM and on the mock."""
    from diffkit import compare, run_backend

    p = row["probe"]
    code = bytes.fromhex(p["code"])
    regs, flags = p.get("regs", {}), p.get("flags", 0)
    a = run_backend(kvm, code, regs, flags, bytes(16), cpl=row["cpl"])
    b = run_backend(mock, code, regs, flags, bytes(16), cpl=row["cpl"])
    return a[3][-1][0] != b[3][-1][0] or bool(compare(a[:3], b[:3]))


def present_patterns(kvm: Any, mock: Any, cpl: int) -> List["re.Pattern[str]"]:
    """The instruction patterns of the probed deviations present on this host at ``cpl``."""
    return [re.compile(r["match"]) for r in load()
            if "probe" in r and r["cpl"] == cpl and present(kvm, mock, r)]


def program(rng: Any, n: int, excluded: List["re.Pattern[str]"]) -> bytes:
    """``n`` random instructions of every family (x86enc.Gen), none matching ``excluded``."""
    from x86enc import Gen

    gen = Gen(rng)
    out: List[bytes] = []
    while len(out) < n:
        insn = gen.insn()
        if not any(p.search(insn.hex()) for p in excluded):
            out.append(insn)
    return b"".join(out)


if __name__ == "__main__":
    text = render(load())
    if sys.argv[1:] == ["--write"]:
        PAGE.write_text(text)
    else:
        sys.stdout.write(text)
