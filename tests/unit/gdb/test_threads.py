"""The stub's thread packets (kvmcpu.gdb.stub) against the GDB remote protocol's
rules ("Packets": ``H op thread-id``, ``T thread-id``, ``qfThreadInfo``/
``qsThreadInfo``, ``qThreadExtraInfo``, ``vCont[;action[:thread-id]]...``,
thread ids 0 = any and -1 = all) and QEMU's ``gdb_handle_vcont`` (the first
action that applies to a thread is its action; a thread with none stays
stopped), with a stand-in target of three CPUs recording what it is asked."""

from __future__ import annotations

from typing import Dict, List, Optional

import pytest

from kvmcpu.gdb.stub import GdbStub


class _Target:
    """What GdbStub uses of a SystemTarget, recording the resumes."""

    def __init__(self) -> None:
        self.g_thread = 1
        self.c_thread = 1
        self.stop_thread: Optional[int] = None
        self.resumed: List[Dict[int, str]] = []
        self.states = {1: "running", 2: "halted", 3: "wait-for-SIPI"}

    def threads(self) -> List[int]:
        return [1, 2, 3]

    def select(self, tid: int) -> None:
        self.g_thread = tid

    def thread_state(self, tid: int) -> str:
        return self.states[tid]

    def resume_threads(self, actions: Dict[int, str]) -> None:
        self.resumed.append(dict(actions))

    def resume(self, step: bool) -> None:
        actions = {t: "c" for t in self.threads()}
        if step:
            actions[self.c_thread] = "s"
        self.resume_threads(actions)


@pytest.fixture
def stub() -> tuple[GdbStub, _Target, List[str]]:
    target = _Target()
    s = GdbStub(target, "127.0.0.1", 0)  # type: ignore[arg-type]
    sent: List[str] = []
    s._send = sent.append  # type: ignore[method-assign]
    yield s, target, sent
    s.close()


def _ask(s: GdbStub, sent: List[str], pkt: str) -> Optional[str]:
    """The reply to ``pkt`` (None: the guest runs, no reply yet)."""
    del sent[:]
    running, _ = s._dispatch(pkt)
    if running:
        assert not sent
        return None
    assert len(sent) == 1
    return sent[0]


def test_thread_list_and_extra_info(stub: tuple[GdbStub, _Target, List[str]]) -> None:
    s, t, sent = stub
    assert _ask(s, sent, "qfThreadInfo") == "m1,2,3"
    assert _ask(s, sent, "qsThreadInfo") == "l"  # the end of the list
    # qThreadExtraInfo: the description in hex, QEMU's "CPU#index [state]"
    assert bytes.fromhex(_ask(s, sent, "qThreadExtraInfo,2") or "") == b"CPU#1 [halted]"
    assert bytes.fromhex(_ask(s, sent, "qThreadExtraInfo,3") or "") == b"CPU#2 [wait-for-SIPI]"
    assert _ask(s, sent, "qThreadExtraInfo,4") == "E16"
    assert _ask(s, sent, "qThreadExtraInfo,-1") == "E16"  # one thread, not all


def test_thread_alive(stub: tuple[GdbStub, _Target, List[str]]) -> None:
    s, t, sent = stub
    assert [_ask(s, sent, f"T{n}") for n in ("1", "3", "4", "0", "-1", "zz")] == \
        ["OK", "OK", "E16", "E16", "E16", "E16"]


def test_hg_and_hc_select_threads(stub: tuple[GdbStub, _Target, List[str]]) -> None:
    s, t, sent = stub
    assert _ask(s, sent, "Hg3") == "OK" and t.g_thread == 3 and t.c_thread == 1
    assert _ask(s, sent, "Hc2") == "OK" and t.c_thread == 2 and t.g_thread == 3
    assert _ask(s, sent, "qC") == "QC2"
    # 0 (any) and -1 (all): OK, the selection stays (QEMU's handle_set_thread)
    assert _ask(s, sent, "Hg0") == "OK" and _ask(s, sent, "Hc-1") == "OK"
    assert (t.g_thread, t.c_thread) == (3, 2)
    assert _ask(s, sent, "Hg4") == "E16" and _ask(s, sent, "Hgx") == "E16"
    assert t.g_thread == 3


@pytest.mark.parametrize("actions, resumed", [
    ("c", {1: "c", 2: "c", 3: "c"}),                 # no thread-id: every thread
    ("s:2;c", {1: "c", 2: "s", 3: "c"}),             # gdb's stepi, scheduler-locking off
    ("s:2", {2: "s"}),                               # scheduler-locking on: others stopped
    ("c:3", {3: "c"}),
    ("c:1;s:1", {1: "c"}),                           # the leftmost action for a thread wins
    ("s:1;s:3;c", {1: "s", 3: "s", 2: "c"}),
    ("C05:2;c", {1: "c", 2: "c", 3: "c"}),           # a signal: continue (the guest gets none)
    ("S02:3;t", {3: "s"}),                           # t: stays stopped
    ("s:-1", {1: "s", 2: "s", 3: "s"}),              # -1: all threads
    ("s:0", {1: "s"}),                               # 0: any thread (the Hc one)
])
def test_vcont_per_thread_actions(stub: tuple[GdbStub, _Target, List[str]], actions: str,
                                  resumed: Dict[int, str]) -> None:
    s, t, sent = stub
    assert _ask(s, sent, "vCont;" + actions) is None
    assert t.resumed == [resumed]


def test_vcont_step_makes_the_stepping_thread_current(
        stub: tuple[GdbStub, _Target, List[str]]) -> None:
    s, t, sent = stub
    assert _ask(s, sent, "vCont;s:3;c") is None
    assert t.c_thread == 3  # the step's stop reply names it


@pytest.mark.parametrize("actions", ["x", "s:4", "c:zz", "r1,2"])
def test_vcont_refusals(stub: tuple[GdbStub, _Target, List[str]], actions: str) -> None:
    s, t, sent = stub
    assert _ask(s, sent, "vCont;" + actions) == "E16"
    assert t.resumed == []


def test_vcont_that_resumes_nothing_stays_stopped(
        stub: tuple[GdbStub, _Target, List[str]]) -> None:
    s, t, sent = stub
    assert _ask(s, sent, "vCont;t:2") == "OK" and t.resumed == []
    assert _ask(s, sent, "vCont?") == "vCont;c;C;s;S;t"


def test_legacy_c_and_s_act_on_the_hc_thread(
        stub: tuple[GdbStub, _Target, List[str]]) -> None:
    s, t, sent = stub
    assert _ask(s, sent, "Hc2") == "OK"
    assert _ask(s, sent, "s") is None and _ask(s, sent, "c") is None
    # QEMU's handle_step: the Hc thread steps and the VM (every CPU) runs
    assert t.resumed == [{1: "c", 2: "s", 3: "c"}, {1: "c", 2: "c", 3: "c"}]


def test_stop_replies_name_the_thread(stub: tuple[GdbStub, _Target, List[str]]) -> None:
    s, t, sent = stub
    t.c_thread = 3
    assert _ask(s, sent, "?") == "T05thread:03;"
    assert s._stop_reply(5, "gdb: breakpoint") == "T05swbreak:;thread:03;"
