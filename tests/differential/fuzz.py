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
    import deviations
    from diffkit import compare, host_mock, random_inputs, run_backend, run_native

    from kvmcpu.backends import get_backend

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--programs", type=int, default=1000)
    ap.add_argument("--target", choices=("native", "kvm3", "kvm0"), default="native")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    mock = host_mock()
    kvm = None if a.target == "native" else get_backend("kvm")
    excluded = deviations.present_patterns(kvm, mock, cpl=0) if a.target == "kvm0" else []
    bad = 0
    shown = 0
    insns = 0
    for i in range(a.programs):
        n = rng.randint(1, 40)
        insns += n
        body = deviations.program(rng, n, excluded)
        regs, flags, buf = random_inputs(rng)
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
