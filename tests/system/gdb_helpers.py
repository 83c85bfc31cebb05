"""Running ``kvmcpu run --gdb 127.0.0.1:0`` in a subprocess and talking to it, with
a raw protocol client or with a real gdb. Every wait is bounded."""

from __future__ import annotations

import os
import re
import select
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from kvmcpu.gdb.packet import INTERRUPT, Ack, BadPacket, Packet, PacketReader, encode

ROOT = Path(__file__).resolve().parents[2]
DEBUGME = ROOT / "kvmcpu" / "guests" / "debugme.bin"
SPIN = ROOT / "guests" / "spin.bin"
WAIT = 60.0

needs_gdb = pytest.mark.skipif(shutil.which("gdb") is None,
                               reason="gdb is not installed (apt-get install gdb)")


def data_breakpoints(backend: str) -> bool:
    """Whether ``backend`` delivers data breakpoints to a 64-bit CPL0 guest such as
    debugme (the probe the CPU model itself runs, kvmcpu.cpu.kvm.debug_probe)."""
    from kvmcpu.backends import get_backend
    from kvmcpu.cpu.kvm import debug_probe

    with get_backend(backend) as b:
        return debug_probe.probe(b, debug_probe.DATA, "long cpl0")[0]


class Stub:
    """A ``kvmcpu run --gdb`` process and the port it listens on."""

    def __init__(self, backend: str, image: Path, *extra: str) -> None:
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kvmcpu", "run", "--backend", backend, "--serial", "none",
             "--gdb", "127.0.0.1:0", *extra, str(image)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=str(ROOT))
        self.clients: List[RawGdb] = []
        self.port = self._read_port()

    def client(self) -> RawGdb:
        """A raw protocol client, closed with the stub."""
        c = RawGdb(self.port)
        self.clients.append(c)
        return c

    def _read_port(self) -> int:
        assert self.proc.stderr is not None
        deadline = time.monotonic() + WAIT
        line = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.proc.stderr], [], [], 1.0)
            if ready:
                line = self.proc.stderr.readline()
                m = re.search(rb"gdb (?:stub )?on 127\.0\.0\.1:(\d+)", line)
                if m:
                    return int(m.group(1))
                if not line:
                    break
        self.kill()
        raise AssertionError(f"the stub did not start: {line!r}")

    def wait(self, timeout: float = WAIT) -> Tuple[int, str]:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise
        return self.proc.returncode, err.decode(errors="replace")

    def kill(self) -> None:
        for c in self.clients:
            c.close()
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=WAIT)


def stub(backend: str, image: Path = DEBUGME, *extra: str) -> Iterator[Stub]:
    s = Stub(backend, image, *extra)
    try:
        yield s
    finally:
        s.kill()


def gdb_session(cache: Dict[str, str], backend: str, commands: List[str],
                image: Path = DEBUGME, *extra: str, key: Optional[str] = None) -> str:
    """The transcript of a real gdb driving ``kvmcpu run --gdb ... -S [extra]`` through
    ``commands``, with the run's exit status as its last line; computed once per
    ``key`` (default: the backend) and kept in ``cache`` (the test module's), so a
    module's tests and its mock-vs-KVM comparison share one session per configuration."""
    key = backend if key is None else key
    if key not in cache:
        for s in stub(backend, image, "-S", *extra):
            out = run_gdb(s.port, image, commands)
            status, _ = s.wait()
            cache[key] = out + f"\nstatus {status}\n"
    return cache[key]


class RawGdb:
    """A minimal protocol client: acks each reply until no-ack mode."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.reader = PacketReader()
        self.items: List[object] = []
        self.no_ack = False

    def close(self) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_item(self) -> object:
        while not self.items:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the stub closed the connection")
            self.items += self.reader.feed(data)
        return self.items.pop(0)

    def reply(self) -> str:
        """The next packet's payload (acks skipped)."""
        while True:
            item = self.next_item()
            if isinstance(item, Packet):
                if not self.no_ack:
                    self.send_raw(b"+")
                return item.payload.decode("latin-1")
            assert not isinstance(item, BadPacket), item
            assert item is not INTERRUPT

    def ack(self) -> Optional[bool]:
        item = self.next_item()
        return item.ok if isinstance(item, Ack) else None

    def ask(self, payload: str) -> str:
        self.send_raw(encode(payload))
        return self.reply()


def run_gdb(port: int, image: Path, commands: List[str], timeout: float = 120) -> str:
    """gdb -batch with ``commands`` against the stub; returns its output."""
    args = ["gdb", "-batch", "-nx", "-ex", "set pagination off", "-ex", "set confirm off",
            "-ex", f"target remote 127.0.0.1:{port}"]
    for c in commands:
        args += ["-ex", c]
    done = subprocess.run(args + [str(image)], capture_output=True, text=True,
                          timeout=timeout)
    return done.stdout + done.stderr
