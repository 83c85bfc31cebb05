"""A GDB remote stub for kvmcpu guests (``kvmcpu run --gdb [HOST:]PORT [-S]``).

Three layers: :mod:`.packet` (the remote serial protocol's framing),
:mod:`.target` (a System's registers, memory, breakpoints and run control in
gdb's terms) and :mod:`.stub` (the TCP server and the packet set).
:func:`run_under_gdb` is what the command line calls.
"""

from __future__ import annotations

import sys
from typing import Optional

from ..system import RunResult, System

__all__ = ["run_under_gdb"]


def run_under_gdb(system: System, address: str, *, wait: bool = False,
                  allow_remote: bool = False, timeout: Optional[float] = None) -> RunResult:
    """Run ``system`` under a GDB stub listening on ``[HOST:]PORT`` until the guest
    ends or gdb kills it; ``wait``: stop before the first instruction until a
    debugger attaches.

    Raises:
        ValueError: a bad address, or one that is not loopback without ``allow_remote``.
        OSError: the address cannot be bound.
    """
    from .stub import GdbStub, parse_address
    from .target import SystemTarget

    host, port = parse_address(address)
    stub = GdbStub(SystemTarget(system), host, port, allow_remote=allow_remote)
    try:
        print(f"kvmcpu run: waiting for gdb on {host}:{stub.port}" if wait else
              f"kvmcpu run: gdb stub on {host}:{stub.port}", file=sys.stderr, flush=True)
        return stub.serve(wait=wait, timeout=timeout)
    finally:
        stub.close()
