"""Random integer programs: the mock against the host CPU itself (no /dev/kvm needed).

The host executes the program natively at CPL3 through ctypes; the mock runs it in
64-bit long mode at CPL3 and at CPL0 with its default vendor profile, which is the
host's vendor (kvmcpu/backends/mock/vendor.py). Registers, every arithmetic flag,
DF and the scratch buffer must be identical: where the SDM/APM say "undefined", the
mock must do what this very CPU does (the per-vendor choices are listed in
kvmcpu/backends/mock/undefined.py and pinned for both vendors by
test_vendor_profiles.py).
"""

from __future__ import annotations

import os
import random

import pytest
from diffkit import (
    compare,
    host_mock,
    native_available,
    random_inputs,
    run_backend,
    run_native,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from x86enc import Gen, random_program

LONG = os.environ.get("KVMCPU_LONG", "") not in ("", "0")
_reason = native_available()
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")


#: Every arithmetic flag and DF.
FLAG_MASK = 0x8D5 | 0x400


def _check(seed: int, length: int, cpl: int) -> None:
    rng = random.Random(seed)
    body = b"".join(random_program(rng, length))
    regs, flags, buf = random_inputs(rng)
    silicon = run_native(body, regs, flags, buf)
    with host_mock() as b:
        mock = run_backend(b, body, regs, flags, buf, cpl=cpl)
    assert mock[3][-1][0] == "io", (body.hex(), mock[3])
    diffs = compare(silicon, mock[:3], flag_mask=FLAG_MASK)
    assert not diffs, f"program {body.hex()}: {diffs}"


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_single_instructions_cpl3(seed: int) -> None:
    _check(seed, 1, 3)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_sequences_cpl3(seed: int) -> None:
    _check(seed, 10, 3)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_sequences_cpl0(seed: int) -> None:
    _check(seed, 10, 0)


@pytest.mark.slow
@settings(max_examples=3000 if LONG else 1, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), length=st.integers(1, 40))
def test_long_fuzz(seed: int, length: int) -> None:
    _check(seed, length, 3 if seed & 1 else 0)


@pytest.mark.parametrize("family", Gen.FAMILIES)
def test_each_family(family: str) -> None:
    """Every instruction family, 40 single-instruction programs each (fixed seeds)."""
    for seed in range(40):
        rng = random.Random(seed * 7919 + len(family))
        body = b"".join(random_program(rng, 1, [family]))
        regs, flags, buf = random_inputs(rng)
        silicon = run_native(body, regs, flags, buf)
        with host_mock() as b:
            mock = run_backend(b, body, regs, flags, buf, cpl=3)
        diffs = compare(silicon, mock[:3], flag_mask=FLAG_MASK)
        assert not diffs, f"{family} {body.hex()}: {diffs}"
