"""HostMemory tells its watchers what the host wrote (write, []=, notify_written)."""

from __future__ import annotations

import gc
from typing import List, Tuple

import pytest

from kvmcpu.hostmem import HostMemory


class Watcher:
    def __init__(self) -> None:
        self.seen: List[Tuple[int, int]] = []

    def host_written(self, memory: HostMemory, offset: int, length: int) -> None:
        self.seen.append((offset, length))


def test_every_host_write_path_reports_its_range() -> None:
    with HostMemory(0x2000) as mem:
        w = Watcher()
        mem.watch(w)
        mem.write(0x10, b"abc")
        mem[5] = 1
        mem[-1] = 2
        mem[0x100:0x108] = b"\0" * 8
        mem[0x20:0x10:-2] = b"\1" * 8
        mem.notify_written(0x1000, 0x1000)
        assert w.seen == [(0x10, 3), (5, 1), (0x1FFF, 1), (0x100, 8), (0x11, 16),
                          (0x1000, 0x1000)]
        with pytest.raises(ValueError, match="outside"):
            mem.notify_written(0x1FFF, 2)
        mem.unwatch(w)
        mem[0] = 3
        assert len(w.seen) == 6


def test_watchers_are_held_weakly() -> None:
    with HostMemory(0x1000) as mem:
        mem.watch(Watcher())
        gc.collect()
        mem[0] = 1  # the watcher is gone: nothing to call
