"""Decoder and engine robustness: random bytes in any mode end in an exit, never in a
Python exception escaping run() (an engine bug would show as INTERNAL_ERROR plus a log)."""

from __future__ import annotations

import logging

import pytest
from diffkit import host_mock
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

MODES = ["real", "prot", "long0", "long3"]


class _Rig:
    """One VM per mode, reset for every snippet."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.b = host_mock()
        self.vm = self.b.create_vm()
        self.ram = self.vm.add_ram(0, 0x200000)
        self.v = self.vm.create_vcpu(0)

    def run(self, code: bytes, caplog: pytest.LogCaptureFixture) -> None:
        v, mode = self.v, self.mode
        self.ram[0x1000:0x1200] = b"\xf4" * 0x200  # HLT after the snippet ends it quickly
        self.ram[0x1000:0x1000 + len(code)] = code
        if mode == "real":
            v.set_real_mode(0, 0x1000, sp=0x8000)
        elif mode == "prot":
            v.set_protected_mode(0x1000, esp=0x80000)
        else:
            v.set_long_mode(0x1000, rsp=0x80000, cpl=0 if mode == "long0" else 3,
                            page_tables=0x100000)
        v.set_budget(60)
        with caplog.at_level(logging.ERROR, logger="kvmcpu.backends.mock"):
            for _ in range(20):
                ex = v.run()  # must not raise
                if ex.kind == "io" and not ex.is_write:  # type: ignore[attr-defined]
                    ex.data[:] = bytes(len(ex.data))  # type: ignore[attr-defined]
                if ex.kind in ("intr", "shutdown", "internal_error", "hlt"):
                    break
        bugs = [r for r in caplog.records if "mock engine failure" in r.getMessage()]
        assert not bugs, f"{mode} {code.hex()}: {bugs[0].getMessage()}"

    def close(self) -> None:
        self.vm.close()
        self.b.close()


def _run(code: bytes, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    rig = _Rig(mode)
    try:
        rig.run(code, caplog)
    finally:
        rig.close()


@settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(code=st.binary(min_size=1, max_size=64), mode=st.sampled_from(MODES))
def test_random_bytes_end_in_an_exit(code: bytes, mode: str,
                                     caplog: pytest.LogCaptureFixture) -> None:
    _run(code, mode, caplog)


@pytest.mark.slow
@settings(max_examples=5000, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(code=st.binary(min_size=1, max_size=256), mode=st.sampled_from(MODES))
def test_random_bytes_long(code: bytes, mode: str, caplog: pytest.LogCaptureFixture) -> None:
    _run(code, mode, caplog)


@pytest.mark.parametrize("mode", MODES)
def test_every_one_and_two_byte_opcode(mode: str, caplog: pytest.LogCaptureFixture) -> None:
    """Each opcode of the one- and two-byte maps, with a ModRM and some tail bytes."""
    tail = bytes([0xC0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00])
    rig = _Rig(mode)
    try:
        for op in range(256):
            if op != 0x0F:
                rig.run(bytes([op]) + tail, caplog)
            rig.run(bytes([0x0F, op]) + tail, caplog)
            rig.run(bytes([0x0F, op, 0x04, 0x24]) + tail, caplog)
    finally:
        rig.close()
