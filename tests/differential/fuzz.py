#!/usr/bin/env python3
"""Count differences between the mock and silicon / KVM over many random programs.

    python tests/differential/fuzz.py --programs 10000 [--target native|kvm3|kvm0] [--seed S]

native: the host CPU runs each program natively at CPL3 (ctypes) and the mock (the
host's vendor profile) runs it in long mode, alternately at CPL3 and CPL0.
kvm3 / kvm0: KVM runs it at CPL3 (natively on the host CPU) or CPL0 (KVM's emulator on
nested hosts; instructions of the host deviations present are left out, as in
test_diff_kvm). Programs are 1-40 instructions of every family (x86enc.Gen), inputs as
in the tests. Prints the counts and the first differences; exit status 1 if any.
The bounded versions of these runs are the tests; this is the long run behind the
figures in the notes (KVMCPU_LONG=1 runs a few thousand inside pytest too).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent.parent))


def main() -> int:
    import re

    import deviations
    from diffkit import REG_NAMES, compare, host_mock, run_backend, run_native
    from x86enc import Gen

    from kvmcpu.backends import get_backend

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--target", choices=("native", "kvm3", "kvm0"), default="native")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    mock = host_mock()
    kvm = None if a.target == "native" else get_backend("kvm")
    excluded = []
    if a.target == "kvm0":
        excluded = [re.compile(r["match"]) for r in deviations.load()
                    if "probe" in r and r["cpl"] == 0 and deviations.present(kvm, mock, r)]
    bad = 0
    shown = 0
    insns = 0
    for i in range(a.programs):
        g = Gen(rng)
        n = rng.randint(1, 40)
        prog = []
        while len(prog) < n:
            x = g.insn()
            if not any(p.search(x.hex()) for p in excluded):
                prog.append(x)
        insns += n
        body = b"".join(prog)
        pool = [0, 1, 2**64 - 1, 2**63, 0x7FFFFFFF, 0x80000000]
        regs = {r: rng.choice(pool) if rng.random() < 0.2 else
                rng.getrandbits(rng.choice([8, 16, 32, 64])) for r in REG_NAMES}
        flags = rng.getrandbits(12) & 0x8D5
        buf = bytes(rng.getrandbits(8) for _ in range(256))
        if a.target == "native":
            ref = run_native(body, regs, flags, buf)
            got = run_backend(mock, body, regs, flags, buf, cpl=3 if i & 1 else 0)[:3]
            exits_ok = True
        else:
            cpl = 3 if a.target == "kvm3" else 0
            r = run_backend(kvm, body, regs, flags, buf, cpl=cpl)
            m = run_backend(mock, body, regs, flags, buf, cpl=cpl)
            ref, got, exits_ok = r[:3], m[:3], r[3] == m[3]
        diffs = compare(ref, got)
        if diffs or not exits_ok:
            bad += 1
            if shown < 10:
                shown += 1
                print(f"program {i}: {body.hex()}: {diffs or 'exits differ'}")
    mock.close()
    if kvm is not None:
        kvm.close()
    print(f"{a.target}: {a.programs} programs, {insns} instructions, {bad} with differences "
          f"(vendor profile {mock.profile.name}; excluded deviations: "
          f"{len(excluded)})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
