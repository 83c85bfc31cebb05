"""Whole guests through System and the CPU model: timer interrupts (irq.bin) on both backends."""

from __future__ import annotations

import kvmcpu.guests
from kvmcpu.system import System


def test_irq_bin_takes_ten_pit_interrupts_through_the_pic(backend_name: str) -> None:
    """irq.bin programs the PIT (1 kHz) and the 8259s and HLTs between interrupts:
    every interrupt is injected by X86KvmCPU (no in-kernel irqchip) and wakes the
    halted thread; after ten it prints its count and exits through isa-debug-exit."""
    with System(memory="16M", backend=backend_name, irqchip="off") as s:
        s.load(kvmcpu.guests.path("irq"))
        r = s.run(max_seconds=1, timeout=30)
        assert (r.cause, r.code) == ("isa-debug-exit", 1)
        stats = s.cpu.stats
        assert stats.numInterrupts.value == 10
        assert stats.numHalt.value >= 10
        # Ten periods of the 1 kHz PIT: at least 10 ms of simulated time (on KVM the
        # guest's own time follows the host's, which a loaded host stretches).
        assert 10_000_000_000 <= r.tick < 200_000_000_000
        assert s.serial.output == b"irq: 10 timer interrupts\n"
