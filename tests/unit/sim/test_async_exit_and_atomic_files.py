"""EventQueue.request_exit (gem5's async_event) and the atomic stats files."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import List

import pytest

from kvmcpu.sim import atomic
from kvmcpu.sim.atomic import write_atomically
from kvmcpu.sim.eventq import QUEUE_EMPTY_CAUSE, EventFunctionWrapper, EventQueue
from kvmcpu.sim.stats import BEGIN_BANNER, Statistics


def _chain(q: EventQueue, ran: List[int], n: int) -> None:
    for i in range(n):
        q.schedule(EventFunctionWrapper(lambda i=i: ran.append(i), f"e{i}"), 10 * (i + 1))


def test_a_request_ends_the_loop_after_the_event_that_made_it() -> None:
    q = EventQueue()
    ran: List[int] = []
    _chain(q, ran, 5)
    q.schedule(EventFunctionWrapper(lambda: q.request_exit("interrupted", 2), "sig"), 25)
    ev = q.simulate()
    assert (ev.cause, ev.code, ev.tick) == ("interrupted", 2, 25)
    assert ran == [0, 1] and q.pending_exit is None and q.last_exit is ev
    assert q.simulate().cause == QUEUE_EMPTY_CAUSE and ran == [0, 1, 2, 3, 4]


def test_a_request_before_simulate_returns_at_once_and_a_drain_leaves_it() -> None:
    q = EventQueue()
    ran: List[int] = []
    _chain(q, ran, 3)
    q.request_exit("stop", 1)
    assert q.simulate(async_exits=False).cause == QUEUE_EMPTY_CAUSE and ran == [0, 1, 2]
    assert q.pending_exit == ("stop", 1)
    ev = q.simulate(max_ticks=100)
    assert (ev.cause, ev.tick) == ("stop", 30) and q.pending_exit is None
    q.request_exit("x")
    q.reset()
    assert q.pending_exit is None


def test_write_atomically_replaces_appends_and_keeps_the_mode(tmp_path: Path) -> None:
    path = tmp_path / "stats.txt"
    write_atomically(path, "one\n")
    assert path.read_text() == "one\n"
    os.chmod(path, 0o640)
    write_atomically(path, "two\n", append=True)
    assert path.read_text() == "one\ntwo\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    write_atomically(path, "three\n")
    assert path.read_text() == "three\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.txt"]


def test_write_atomically_follows_a_link_and_writes_devices_in_place(tmp_path: Path) -> None:
    real = tmp_path / "real.txt"
    real.write_text("old\n")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    write_atomically(link, "new\n", append=True)
    assert link.is_symlink() and real.read_text() == "old\nnew\n"
    write_atomically("/dev/null", "discarded\n")  # not a regular file: no rename


def test_a_failed_write_leaves_the_old_file(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "stats.txt"
    path.write_text("previous run\n")

    def full(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic.os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_atomically(path, "new block\n", append=True)
    assert path.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.txt"]


def test_start_file_makes_the_next_dump_replace_then_append(tmp_path: Path) -> None:
    q = EventQueue()
    stats = Statistics(q)
    text, js = tmp_path / "stats.txt", tmp_path / "stats.json"
    text.write_text("an earlier run\n")
    js.write_text("an earlier run\n")
    stats.dump(str(text))  # the library's default: append
    assert text.read_text().startswith("an earlier run\n")
    stats.start_file(str(text))
    stats.start_file(str(js))
    assert text.read_text().startswith("an earlier run\n")  # kept until the next dump
    stats.dump(str(text))
    stats.dump(str(text))
    stats.dump_json(str(js))
    assert "an earlier run" not in text.read_text()
    assert text.read_text().count(BEGIN_BANNER) == 2
    assert len(js.read_text().splitlines()) == 1


def test_a_dead_writers_temporary_file_is_removed(tmp_path: Path) -> None:
    path = tmp_path / "stats.txt"
    dead = tmp_path / ".stats.txt.999999999.tmp"  # above any pid_max: no such process
    alive = tmp_path / f".stats.txt.{os.getppid()}.tmp"
    other = tmp_path / ".other.txt.999999999.tmp"
    for p in (dead, alive, other):
        p.write_text("half a dump")
    write_atomically(path, "whole\n")
    assert path.read_text() == "whole\n"
    assert not dead.exists() and alive.exists() and other.exists()
