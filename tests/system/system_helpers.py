"""Shared by the System tests: the bundled guests and their golden output."""

from __future__ import annotations

from pathlib import Path

import kvmcpu.guests

ROOT = Path(__file__).resolve().parent.parent.parent

#: What the bundled guests print over COM1 (QEMU prints the same; see each .asm header).
HELLO_LINES = b"Hello from kvmcpu!\nfw_cfg signature: QEMU\nfw_cfg cpus: 1\n"
IRQ_OUTPUT = b"irq: 10 timer interrupts\n"
CHECKPOINT_BEFORE = b"checkpoint: before\n"
CHECKPOINT_AFTER = b"checkpoint: after, sum=5050 (register) 5050 (memory)\n"


def sieve_output(n: int, primes: int) -> bytes:
    return (f"sieve3: counting primes below {n} at CPL3\n"
            f"sieve3: {primes} primes below {n}\n").encode()


def guest(name: str) -> str:
    """The path of a bundled guest image, as a string (the Multiboot cmdline echoes it)."""
    return str(kvmcpu.guests.path(name))
