"""The GDB remote stub: a TCP server speaking the remote serial protocol to one gdb.

:class:`GdbStub` listens (loopback only unless ``allow_remote``), and
:meth:`GdbStub.serve` runs the System under it until the guest ends or gdb
kills it. All-stop mode, as QEMU's stub: while the guest runs the stub looks at
its sockets between slices of simulated time (Ctrl-C, a disconnect, a second
debugger); while it is stopped, it answers packets.

Packets (see :mod:`kvmcpu.gdb.packet` for framing): ``qSupported``
(``PacketSize``, ``qXfer:features:read+``, ``QStartNoAckMode+``, ``swbreak+``,
``vContSupported+``), ``qXfer:features:read:target.xml``, ``?``, ``g``/``G``,
``p``/``P``, ``m``/``M``, ``X``, ``c``/``s`` (with an address), ``vCont``
(``c``, ``s``, ``t``), ``Z0``/``z0`` (software breakpoints: INT3 patches where the backend
delivers them, see :mod:`.target`) and ``Z1``/``z1`` (hardware: the debug
registers), ``Z2``/``z2``, ``Z3``/``z3`` and
``Z4``/``z4`` write, read and access watchpoints (data breakpoints, see
:mod:`.target`; the stop reply says ``watch:``, ``rwatch:`` or ``awatch:``
and the address), ``qfThreadInfo``/
``qsThreadInfo`` (one thread per CPU, ids 1..N), ``qThreadExtraInfo``
(``CPU#i [running]``, ``[halted]``, ``[wait-for-SIPI]``), ``qC``, ``T``,
``Hg``/``Hc`` (the thread of registers and memory / of ``c`` and ``s``; 0 and
-1 keep the current one, as QEMU's), ``qAttached``, ``D``, ``k``,
``QStartNoAckMode``. ``vCont`` takes an action per thread (see
:meth:`GdbStub._vcont`); stop replies name the thread that stopped
(``T05thread:02;``). Anything else unknown gets the empty reply (not
supported); malformed
requests ``E NN`` with the errno in hex, as the protocol says (``E16``
EINVAL: a bad argument or a too large read; ``E0e`` EFAULT: an address that
is not mapped RAM; ``E1c`` ENOSPC: no debug register left; ``E01``: not
supported), bad checksums a ``-``.

A debugger that disconnects (or detaches) leaves the guest running without
breakpoints; a second debugger that connects while one is attached gets
``E01`` and is closed.
"""

from __future__ import annotations

import logging
import select
import socket
import time
from typing import Dict, List, Optional, Tuple

from ..system import RunResult
from .packet import INTERRUPT, Ack, BadPacket, Packet, PacketReader, encode
from .target import (
    CAUSE_BREAK,
    CAUSE_WATCH,
    STOP_CAUSES,
    SystemTarget,
    TargetError,
)

log = logging.getLogger("kvmcpu.gdb")

PACKET_SIZE = 0x4000
#: Largest ``m`` read: what fits a reply packet in hex.
MAX_READ = (PACKET_SIZE - 4) // 2
SIGTRAP = 5
SIGINT = 2
LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: RunResult.cause when gdb killed the guest (``k``).
CAUSE_KILLED = "killed by gdb"
#: Z2/Z3/Z4 -> the data event kind; the kind -> the stop reply's reason.
WATCH_KINDS = {"2": "write", "3": "read", "4": "access"}
STOP_WATCH = {"write": "watch", "read": "rwatch", "access": "awatch"}


def parse_address(spec: str) -> Tuple[str, int]:
    """``[HOST:]PORT`` -> (host, port); the host defaults to 127.0.0.1.

    Raises:
        ValueError: not a port number in 0..65535.
    """
    host, _, port = spec.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{spec!r}: expected [HOST:]PORT with a port number 0..65535")
    return host, int(port)


def is_loopback(host: str) -> bool:
    return host in LOOPBACK or host.startswith("127.")


class _Disconnected(Exception):
    pass


class GdbStub:
    """One gdb at a time for one System (see the module docstring).

    Args:
        target: the :class:`SystemTarget`.
        host, port: where to listen (port 0: any free port, see :attr:`port`).
        allow_remote: needed for an address that is not loopback.

    Raises:
        ValueError: a non-loopback host without ``allow_remote``.
    """

    def __init__(self, target: SystemTarget, host: str = "127.0.0.1", port: int = 1234,
                 *, allow_remote: bool = False) -> None:
        if not is_loopback(host) and not allow_remote:
            raise ValueError(f"refusing to listen on {host}: the GDB stub gives full "
                             "control of the guest; only loopback addresses unless "
                             "allowed explicitly")
        if not is_loopback(host):
            log.warning("GDB stub listening on %s: anyone who can reach it controls "
                        "the guest", host)
        self.target = target
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((host, port))
        self.listener.listen(2)
        self.port: int = self.listener.getsockname()[1]
        self.client: Optional[socket.socket] = None
        self.reader = PacketReader(PACKET_SIZE)
        self.no_ack = False
        self._pending: List[object] = []
        self._last_sent = b""
        self._thread_list_sent = False

    def close(self) -> None:
        self._drop_client()
        self.listener.close()

    # ------------------------------------------------------------ connections
    def _accept(self, timeout: Optional[float]) -> bool:
        ready, _, _ = select.select([self.listener], [], [], timeout)
        if not ready:
            return False
        conn, peer = self.listener.accept()
        if self.client is not None:
            log.warning("gdb: a second debugger (%s) connected: refused", peer)
            try:
                conn.sendall(encode("E01"))
            finally:
                conn.close()
            return False
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client = conn
        self.target.choose_layout()
        self.reader = PacketReader(PACKET_SIZE)
        self.no_ack = False
        self._pending = []
        log.info("gdb: debugger connected from %s", peer)
        return True

    def _drop_client(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None
            self.target.remove_all()  # the guest goes on without breakpoints

    def _poll(self, timeout: Optional[float]) -> None:
        """Read what gdb sent (and refuse second debuggers) for at most ``timeout`` s."""
        client = self.client
        if client is None:
            return
        ready, _, _ = select.select([client, self.listener], [], [], timeout)
        if self.listener in ready:
            self._accept(0)
        if client in ready:
            try:
                data = client.recv(65536)
            except OSError:
                data = b""
            if not data:
                raise _Disconnected()
            self._pending.extend(self.reader.feed(data))

    def _send(self, payload: str) -> None:
        if self.client is None:
            return
        self._last_sent = encode(payload)
        try:
            self.client.sendall(self._last_sent)
        except OSError as err:
            raise _Disconnected() from err

    def _next_packet(self) -> Packet:
        """The next good packet (acks, naks and interrupts while stopped handled here)."""
        while True:
            while not self._pending:
                self._poll(None)
            item = self._pending.pop(0)
            if isinstance(item, Packet):
                if not self.no_ack:
                    self._raw(b"+")
                return item
            if isinstance(item, BadPacket):
                log.info("gdb: bad packet: %s", item.reason)
                if not self.no_ack:
                    self._raw(b"-")
            elif isinstance(item, Ack) and not item.ok and self._last_sent:
                self._raw(self._last_sent)
            elif item is INTERRUPT:
                self._send(self._stop_reply(SIGINT, None))  # already stopped: say so again

    def _raw(self, data: bytes) -> None:
        if self.client is not None:
            try:
                self.client.sendall(data)
            except OSError as err:
                raise _Disconnected() from err

    # ---------------------------------------------------------------- serving
    def serve(self, *, wait: bool = True, timeout: Optional[float] = None) -> RunResult:
        """Run the guest under the stub until it ends (or gdb kills it).

        ``wait``: wait for a debugger before the first instruction (``-S``);
        otherwise the guest runs and a debugger that connects stops it.
        ``timeout``: host seconds for the whole run (None: none); it ends the run
        as ``System.run``'s timeout does.
        """
        from ..system import CAUSE_TIMEOUT, STATUS_TIMEOUT

        deadline = None if timeout is None else time.monotonic() + timeout
        running = not wait
        started = time.monotonic()
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                self._end(None)
                return RunResult(CAUSE_TIMEOUT, STATUS_TIMEOUT,
                                 self.target.system.eventq.cur_tick, STATUS_TIMEOUT,
                                 time.monotonic() - started)
            try:
                if self.client is None:
                    if running:
                        result = self.target.run_slice()
                        if result is not None and result.cause not in STOP_CAUSES:
                            return result
                        if self._accept(0):
                            running = False
                    else:
                        left = None if deadline is None else max(0.0, deadline - time.monotonic())
                        if self._accept(left):
                            pass
                        elif deadline is not None:
                            continue
                    continue
                if running:
                    result = self.target.run_slice()
                    if result is not None:
                        if result.cause in STOP_CAUSES:
                            running = False
                            tid = self.target.stop_thread
                            if tid is not None:  # QEMU: both follow the thread that stopped
                                self.target.g_thread = self.target.c_thread = tid
                            self._send(self._stop_reply(SIGTRAP, result.cause))
                            continue
                        self._end(result)
                        return result
                    self._poll(0)
                    if any(item is INTERRUPT for item in self._pending):
                        self._pending = [i for i in self._pending if i is not INTERRUPT]
                        running = False
                        self.target.interrupt()
                        self._send(self._stop_reply(SIGINT, None))
                    continue
                packet = self._next_packet()
                running, killed = self._dispatch(packet.payload.decode("latin-1"))
                if killed is not None:
                    return killed
            except _Disconnected:
                log.info("gdb: debugger disconnected; the guest runs on")
                self._drop_client()
                running = True

    def _end(self, result: Optional[RunResult]) -> None:
        """The guest is gone: tell gdb (W: exited) and drop it."""
        if self.client is None:
            return
        try:
            if result is not None:
                self._send(f"W{result.status & 0xFF:02x}")
            else:
                self._send("X09")
        except _Disconnected:
            pass
        self._drop_client()

    def _stop_reply(self, signo: int, cause: Optional[str]) -> str:
        why = "swbreak:;" if cause == CAUSE_BREAK else ""
        if cause == CAUSE_WATCH and self.target.watch_hit is not None:
            why = f"{STOP_WATCH[self.target.watch_kind]}:{self.target.watch_hit:x};"
        return f"T{signo:02x}{why}thread:{self.target.c_thread:02x};"

    # --------------------------------------------------------------- packets
    def _dispatch(self, pkt: str) -> Tuple[bool, Optional[RunResult]]:
        """Answer one packet; returns (guest running now, result when killed)."""
        try:
            return self._handle(pkt)
        except TargetError as err:
            log.info("gdb: %s: %s", pkt[:40], err)
            self._send(f"E{err.errno:02x}")
        except (ValueError, IndexError) as err:
            log.info("gdb: malformed %r: %s", pkt[:40], err)
            self._send("E16")
        return False, None

    def _handle(self, pkt: str) -> Tuple[bool, Optional[RunResult]]:
        t = self.target
        send = self._send
        head = pkt[:1]
        if pkt.startswith("qSupported"):
            send(f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;QStartNoAckMode+;"
                 "swbreak+;hwbreak+;vContSupported+")
        elif pkt == "QStartNoAckMode":
            send("OK")
            self.no_ack = True
        elif pkt.startswith("qXfer:features:read:"):
            annex, _, span = pkt[len("qXfer:features:read:"):].partition(":")
            if annex != "target.xml":
                send("E00")
            else:
                off_s, _, len_s = span.partition(",")
                off, length = int(off_s, 16), int(len_s, 16)
                xml = t.layout.xml()
                chunk = xml[off: off + min(length, PACKET_SIZE - 5)]
                send(("l" if off + len(chunk) >= len(xml) else "m") + chunk)
        elif pkt == "?":
            send(self._stop_reply(SIGTRAP, None))
        elif pkt == "g":
            send(t.read_registers().hex())
        elif head == "G":
            data = bytes.fromhex(pkt[1:])
            t.write_registers(data)
            send("OK")
        elif head == "p":
            send(t.read_register(int(pkt[1:], 16)).hex())
        elif head == "P":
            num, _, value = pkt[1:].partition("=")
            t.write_register(int(num, 16), bytes.fromhex(value))
            send("OK")
        elif head == "m":
            addr_s, _, len_s = pkt[1:].partition(",")
            addr, length = int(addr_s, 16), int(len_s, 16)
            if length > MAX_READ:
                raise TargetError(22, f"read of {length:#x} bytes (at most {MAX_READ:#x})")
            send(t.read_memory(addr, length).hex())
        elif head == "M":
            where, _, data_s = pkt[1:].partition(":")
            addr_s, _, len_s = where.partition(",")
            data = bytes.fromhex(data_s)
            if len(data) != int(len_s, 16):
                raise TargetError(22, "M length does not match its data")
            t.write_memory(int(addr_s, 16), data)
            send("OK")
        elif head == "X":
            raw = pkt.encode("latin-1")
            colon = raw.index(b":")
            addr_s, _, len_s = raw[1:colon].decode().partition(",")
            data = raw[colon + 1:]
            if len(data) != int(len_s, 16):
                raise TargetError(22, "X length does not match its data")
            if data:
                t.write_memory(int(addr_s, 16), data)
            send("OK")
        elif head in ("c", "s"):
            if len(pkt) > 1:
                self._set_pc(int(pkt[1:], 16))
            t.resume(step=head == "s")
            return True, None
        elif pkt == "vCont?":
            send("vCont;c;C;s;S;t")
        elif pkt.startswith("vCont;"):
            return self._vcont(pkt[6:])
        elif head in ("Z", "z") and pkt[1:2] in ("0", "1", "2", "3", "4"):
            kind, addr_s, size_s = pkt[1:].split(",")[:3]
            addr = int(addr_s, 16)
            if kind in WATCH_KINDS:
                if head == "Z":
                    t.insert_watchpoint(addr, int(size_s, 16), WATCH_KINDS[kind])
                else:
                    t.remove_watchpoint(addr, int(size_s, 16), WATCH_KINDS[kind])
            elif head == "Z":
                t.insert_breakpoint(addr, hardware=kind == "1")
            else:
                t.remove_breakpoint(addr, hardware=kind == "1")
            send("OK")
        elif pkt == "qfThreadInfo":
            send("m" + ",".join(f"{i:x}" for i in t.threads()))
        elif pkt == "qsThreadInfo":
            send("l")
        elif pkt == "qC":
            send(f"QC{t.c_thread:x}")
        elif pkt.startswith("qAttached"):
            send("1")
        elif head == "H" and pkt[1:2] in ("g", "c"):
            tid = self._thread_id(pkt[2:])
            if tid > 0:  # 0 (any) and -1 (all): the current one stays, as in QEMU
                if pkt[1] == "g":
                    t.select(tid)
                else:
                    t.c_thread = tid
            send("OK")
        elif head == "T":
            tid = self._thread_id(pkt[1:])
            send("OK" if tid > 0 else "E16")
        elif pkt.startswith("qThreadExtraInfo,"):
            tid = self._thread_id(pkt.split(",", 1)[1])
            if tid <= 0:
                raise TargetError(22, "qThreadExtraInfo needs one thread")
            send(f"CPU#{tid - 1} [{t.thread_state(tid)}]".encode().hex())
        elif head == "D":
            send("OK")
            self._drop_client()
            return True, None
        elif head == "k":
            self._drop_client()
            return False, RunResult(CAUSE_KILLED, 0, t.system.eventq.cur_tick, 0, 0.0)
        else:
            send("")  # not supported (gdb knows what the empty reply means)
        return False, None

    def _thread_id(self, spec: str) -> int:
        """A thread id of a packet: one of the threads, 0 (any) or -1 (all).

        Raises:
            TargetError: not a number, or no such thread (``E16``).
        """
        try:
            tid = int(spec, 16)
        except ValueError:
            raise TargetError(22, f"thread id {spec!r}") from None
        if tid not in (0, -1) and tid not in self.target.threads():
            raise TargetError(22, f"no thread {spec}")
        return tid

    def _set_pc(self, addr: int) -> None:
        layout = self.target.layout
        self.target.write_register(layout.pc, addr.to_bytes(layout.bits // 8, "little"))

    def _vcont(self, actions: str) -> Tuple[bool, Optional[RunResult]]:
        """``vCont;action[:thread]...``: the first action that applies to a thread is
        its action (one without a thread applies to all the others); a thread with
        none stays stopped (QEMU's ``gdb_handle_vcont``). ``t`` (stop) leaves it
        stopped: in all-stop mode it is already."""
        chosen: Dict[int, str] = {}
        threads = self.target.threads()
        for action in actions.split(";"):
            kind, _, spec = action.partition(":")
            if kind in ("s", "c", "t") or (kind[:1] in ("S", "C") and len(kind) == 3):
                what = kind[:1].lower()
            else:
                raise TargetError(22, f"vCont action {kind!r}")
            tid = self._thread_id(spec) if spec else -1
            for t in (threads if tid == -1 else [tid or self.target.c_thread]):
                chosen.setdefault(t, what)
        run = {t: a for t, a in chosen.items() if a != "t"}
        if not run:
            self._send("OK")  # nothing resumed: every thread stays stopped
            return False, None
        steps = [t for t, a in run.items() if a == "s"]
        if steps:
            self.target.c_thread = steps[0]  # the stop reply names the stepping thread
        self.target.resume_threads(run)
        return True, None
