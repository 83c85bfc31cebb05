"""Control-flow signals of the mock engine (Python exceptions that never leave run()).

* :class:`GuestFault` — an x86 exception to deliver to the guest (#GP, #PF, ...).
* :class:`ExitNow` — the instruction cannot complete without user space (IN,
  MMIO read, unimplemented instruction): it is rolled back and ``run()``
  returns the exit it carries; the instruction is re-executed on the next run.
* :class:`Restart` — the instruction stopped part-way on purpose (a long REP
  chunk): roll back to its start without retiring it.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

# Exception vectors
DE, DB, NMI, BP, OF_, BR, UD, NM, DF, TS, NP, SS_, GP, PF, MF, AC, MC, XM = (
    0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 11, 12, 13, 14, 16, 17, 18, 19)

#: Vectors that push an error code.
HAS_ERROR_CODE = frozenset((DF, TS, NP, SS_, GP, PF, AC))
CONTRIBUTORY = frozenset((DE, TS, NP, SS_, GP))


class GuestFault(Exception):
    """Deliver exception ``vector`` (with ``error_code`` when the vector has one)."""

    def __init__(self, vector: int, error_code: int = 0, cr2: Optional[int] = None) -> None:
        super().__init__(vector, error_code)
        self.vector = vector
        self.error_code = error_code
        self.cr2 = cr2


class ExitNow(Exception):
    """Return an exit to user space before the instruction completes.

    ``kind`` is a short tag ("mmio_read", "io_in", "emulation", "io_out_rep", ...);
    ``args`` the fields. The vCPU fills kvm_run from them.
    """

    def __init__(self, kind: str, *args: Any) -> None:
        super().__init__(kind, *args)
        self.kind = kind
        self.args: Tuple[Any, ...] = args


class Restart(Exception):
    """Roll back to the start of the current instruction without retiring it."""


def gp(code: int = 0) -> GuestFault:
    return GuestFault(GP, code)


def ud() -> GuestFault:
    return GuestFault(UD)
