"""gem5's address-based pseudo instructions ("m5ops") on an MMIO page.

gem5's x86 ``m5`` library (``util/m5/src/abi/x86/m5op_addr.S``) calls a
pseudo instruction by loading from ``M5OP_ADDR + (func << 8)``: the function
number is in bits 8-15 of the offset into the 64 KiB page at
:data:`M5OP_ADDR` (0xFFFF0000), the arguments are in the System V argument
registers (rdi, rsi, rdx, rcx, r8, r9) and the result comes back in rax (the
loaded value). Under KVM that load is an MMIO exit; the device reads the
arguments through the access's ``requestor`` (the CPU), which implements
``m5op_args(n) -> list[int]``, and returns the result as the read value.

Function numbers are gem5's (``include/gem5/asm/generic/m5ops.h``); each is
routed to a method of the handler object given at construction:

=====  ====================  =============================================
func   gem5 name             handler call
=====  ====================  =============================================
0x21   m5_exit(delay)        ``m5_exit(0, delay)``
0x22   m5_fail(delay, code)  ``m5_exit(code, delay)``
0x40   m5_reset_stats        ``m5_reset_stats(delay, period)``
0x41   m5_dump_stats         ``m5_dump_stats(delay, period)``
0x42   m5_dump_reset_stats   ``m5_dump_reset_stats(delay, period)`` (or dump + reset)
0x43   m5_checkpoint         ``m5_checkpoint(delay, period)``
0x5a   m5_work_begin         ``m5_work_begin(work_id, thread_id)``
0x5b   m5_work_end           ``m5_work_end(work_id, thread_id)``
0x07   m5_rpns               ``m5_rpns()`` when the handler has it, else 0
=====  ====================  =============================================

Delays are nanoseconds of simulated time, as in gem5. Any other function is
logged once and returns 0. A handler method's return value (an int) becomes
rax; None means 0. Writes to the page dispatch the same way (the result is
dropped), as gem5's m5op range does.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Dict, List, Protocol, Set, Tuple

from kvmcpu.devices.base import Device

__all__ = [
    "M5OP_ADDR",
    "M5OP_SIZE",
    "M5OP_RPNS",
    "M5OP_EXIT",
    "M5OP_FAIL",
    "M5OP_RESET_STATS",
    "M5OP_DUMP_STATS",
    "M5OP_DUMP_RESET_STATS",
    "M5OP_CHECKPOINT",
    "M5OP_WORK_BEGIN",
    "M5OP_WORK_END",
    "M5Ops",
    "M5OpsHandler",
    "M5OpRequestor",
    "m5op_offset",
]

logger = logging.getLogger("kvmcpu.devices.m5ops")

#: Physical address of the m5op page (gem5's default ``m5ops_base`` on x86).
M5OP_ADDR = 0xFFFF0000
#: Size of the page: function numbers use offset bits 8-15.
M5OP_SIZE = 0x10000

M5OP_RPNS = 0x07
M5OP_EXIT = 0x21
M5OP_FAIL = 0x22
M5OP_RESET_STATS = 0x40
M5OP_DUMP_STATS = 0x41
M5OP_DUMP_RESET_STATS = 0x42
M5OP_CHECKPOINT = 0x43
M5OP_WORK_BEGIN = 0x5A
M5OP_WORK_END = 0x5B

_MASK64 = (1 << 64) - 1


def m5op_offset(func: int) -> int:
    """The offset into the m5op page that calls ``func``."""
    return (func & 0xFF) << 8


class M5OpRequestor(Protocol):
    """What the m5op device needs from the CPU that made the access."""

    def m5op_args(self, n: int) -> List[int]:
        """The first ``n`` integer argument registers (rdi, rsi, rdx, rcx, r8, r9)."""
        ...


class M5OpsHandler(Protocol):
    """What the System implements to act on m5ops (all values are ints)."""

    def m5_exit(self, code: int, delay: int) -> object: ...

    def m5_dump_stats(self, delay: int, period: int) -> object: ...

    def m5_reset_stats(self, delay: int, period: int) -> object: ...

    def m5_checkpoint(self, delay: int, period: int) -> object: ...

    def m5_work_begin(self, work_id: int, thread_id: int) -> object: ...

    def m5_work_end(self, work_id: int, thread_id: int) -> object: ...


# func -> (name, number of arguments)
_FUNCS: Dict[int, Tuple[str, int]] = {
    M5OP_RPNS: ("m5_rpns", 0),
    M5OP_EXIT: ("m5_exit", 1),
    M5OP_FAIL: ("m5_fail", 2),
    M5OP_RESET_STATS: ("m5_reset_stats", 2),
    M5OP_DUMP_STATS: ("m5_dump_stats", 2),
    M5OP_DUMP_RESET_STATS: ("m5_dump_reset_stats", 2),
    M5OP_CHECKPOINT: ("m5_checkpoint", 2),
    M5OP_WORK_BEGIN: ("m5_work_begin", 2),
    M5OP_WORK_END: ("m5_work_end", 2),
}


class M5Ops(Device):
    """The m5op page. Map on the MMIO bus at 0xFFFF0000 with 0x10000 bytes.

    Args:
        name: device name.
        handler: receives the calls (see the module docstring); None logs them.
    """

    def __init__(self, name: str = "m5ops", *, handler: M5OpsHandler | None = None) -> None:
        super().__init__(name)
        self.handler = handler
        #: Calls per function number.
        self.counts: Dict[int, int] = {}
        self._warned: Set[int] = set()

    def read(self, offset: int, size: int, requestor: Any = None) -> int:
        return self.call((offset >> 8) & 0xFF, requestor)

    def write(self, offset: int, size: int, value: int, requestor: Any = None) -> None:
        self.call((offset >> 8) & 0xFF, requestor)

    def call(self, func: int, requestor: Any = None) -> int:
        """Run pseudo instruction ``func`` with the requestor's arguments; returns rax."""
        self.counts[func] = self.counts.get(func, 0) + 1
        entry = _FUNCS.get(func)
        if entry is None:
            if func not in self._warned:
                self._warned.add(func)
                logger.warning("%s: unknown m5op %#x ignored (returns 0)", self.name, func)
            return 0
        name, nargs = entry
        args = self._args(requestor, nargs)
        handler = self.handler
        if handler is None:
            logger.info("%s: %s%s (no handler)", self.name, name, tuple(args))
            return 0
        result: object
        if func == M5OP_EXIT:
            result = handler.m5_exit(0, args[0])
        elif func == M5OP_FAIL:
            result = handler.m5_exit(args[1], args[0])
        elif func == M5OP_DUMP_RESET_STATS:
            both: Callable[..., object] | None = getattr(handler, "m5_dump_reset_stats", None)
            if both is not None:
                result = both(*args)
            else:
                handler.m5_dump_stats(*args)
                result = handler.m5_reset_stats(*args)
        else:
            method: Callable[..., object] | None = getattr(handler, name, None)
            if method is None:
                logger.info("%s: handler has no %s; returns 0", self.name, name)
                return 0
            result = method(*args)
        return int(result) & _MASK64 if isinstance(result, int) else 0

    @staticmethod
    def _args(requestor: Any, n: int) -> List[int]:
        if n == 0:
            return []
        if requestor is None or not hasattr(requestor, "m5op_args"):
            return [0] * n
        values = list(requestor.m5op_args(n))
        return [int(v) & _MASK64 for v in values[:n]] + [0] * (n - len(values))
