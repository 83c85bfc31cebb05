"""``kvmcpu run`` and ``kvmcpu demo``: boot a guest image on a System.

Exit status of ``kvmcpu run`` (also in ``kvmcpu run --help`` and the README):

====  ==================================================================
N     the guest wrote v to isa-debug-exit (port 0xf4): N = (v << 1) | 1
0     the guest ended with m5 exit (code 0), or halted with nothing left to run
c     the guest's m5 exit / m5 fail code c
124   the simulated-time limit or the host timeout was reached
125   the guest triple-faulted
126   the vCPU stopped with an error KVM reports (internal error, failed entry, ...)
1     any other error (one line on stderr; ``-v`` for the traceback)
2     bad command line (missing file, bad size, unknown backend, ...)
====  ==================================================================
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, List, Optional

from .errors import ConfigError, GuestError, VcpuRunError
from .mem.physmem import parse_size
from .sim.eventq import TICKS_PER_SECOND

EXIT_USAGE = 2
EXIT_RUNTIME = 1


def parse_duration(text: str) -> int:
    """A simulated duration like "1ms", "250us", "2s", "1000000ns" or plain ticks -> ticks.

    Raises:
        ConfigError: naming the bad value.
    """
    units = {"ps": 1, "ns": 10**3, "us": 10**6, "ms": 10**9, "s": 10**12}
    t = text.strip().lower()
    for suffix in ("ps", "ns", "us", "ms", "s"):
        if t.endswith(suffix):
            number = t[: -len(suffix)]
            try:
                value = float(number)
            except ValueError:
                break
            if value < 0:
                break
            return int(value * units[suffix])
    else:
        if t.isdigit():
            return int(t)
    raise ConfigError(f"bad duration {text!r} (use e.g. 1ms, 250us, 2s or a tick count)")


def guest_path(name: str) -> Path:
    """Find a bundled guest image: $KVMCPU_GUESTS, the source checkout, or the installed copy.

    Raises:
        GuestError: the image is not found anywhere.
    """
    candidates: List[Path] = []
    env = os.environ.get("KVMCPU_GUESTS")
    if env:
        candidates.append(Path(env) / name)
    here = Path(__file__).resolve().parent
    candidates.append(here.parent / "guests" / name)
    candidates.append(Path(sys.prefix) / "share" / "kvmcpu" / "guests" / name)
    for c in candidates:
        if c.is_file():
            return c
    raise GuestError(f"bundled guest {name!r} not found (looked in "
                     + ", ".join(str(c.parent) for c in candidates) + ")")


def _serial_sink(spec: str) -> Any:
    if spec == "stdio":
        return "stdout"
    if spec == "none":
        return None
    if spec.startswith("file:"):
        path = spec[5:]
        if not path:
            raise ConfigError("--serial file: needs a path (file:PATH)")
        return open(path, "wb")  # noqa: SIM115 - closed by the caller
    raise ConfigError(f"bad --serial {spec!r} (use stdio, file:PATH or none)")


def add_parsers(sub: Any) -> None:
    """Register ``run`` and ``demo`` on the subcommand parser."""
    p = sub.add_parser(
        "run", help="boot a guest image (flat, ELF64 or Multiboot)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log more, and show tracebacks of errors")
    p.add_argument("image", help="the guest image")
    p.add_argument("--format", dest="fmt", default="auto",
                   choices=("auto", "flat", "elf", "multiboot"), help="image format")
    p.add_argument("--append", default="", metavar="CMDLINE",
                   help="Multiboot command line")
    p.add_argument("--module", action="append", default=[], metavar="FILE",
                   help="Multiboot module (repeatable; the first can serve as initrd)")
    p.add_argument("--memory", default="128M", help="guest RAM (e.g. 128M, 1G)")
    p.add_argument("--smp", type=int, default=1, help="number of CPUs (only 1 so far)")
    p.add_argument("--backend", default="auto", help="auto, kvm or mock")
    lim = p.add_mutually_exclusive_group()
    lim.add_argument("--max-ticks", type=int, default=None, help="simulated ticks limit")
    lim.add_argument("--max-seconds", type=float, default=None,
                     help="simulated seconds limit")
    p.add_argument("--quantum", default="0",
                   help="longest KVM entry in simulated time (e.g. 1ms; 0: until the next event)")
    p.add_argument("--serial", default="stdio", help="stdio, file:PATH or none")
    p.add_argument("--stats-file", default=None, help="write gem5 stats.txt here at the end")
    p.add_argument("--stats-json", default=None, help="write the stats as JSON here")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where checkpoints requested by the guest (m5 checkpoint) go")
    p.add_argument("--restore", default=None, metavar="DIR",
                   help="restore this checkpoint instead of loading IMAGE's start state")
    p.add_argument("--timeout", type=float, default=None, help="host (wall-clock) seconds limit")
    p.add_argument("--irqchip", default="auto", choices=("auto", "on", "off"),
                   help="KVM's in-kernel irqchip (auto: the userspace PIC/PIT)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress on stderr (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    p.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="run the bundled hello guest on the best backend")
    d.add_argument("--backend", default="auto", help="auto, kvm or mock")
    d.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log more, and show tracebacks of errors")
    d.set_defaults(func=cmd_demo)


class _Progress:
    """A tqdm status line (simulated time, exits/s, wall time) on stderr."""

    def __init__(self, system: Any) -> None:
        from tqdm import tqdm

        self.system = system
        self.start = time.monotonic()
        self.bar = tqdm(total=None, file=sys.stderr, unit="ms sim", leave=False,
                        bar_format="{desc}")
        self.last_exits = 0
        self.last_time = self.start

    def update(self) -> None:
        now = time.monotonic()
        if now - self.last_time < 0.2:
            return
        cpu = self.system.cpu
        exits = int(cpu.stats.numVMExits.value)
        rate = (exits - self.last_exits) / (now - self.last_time)
        self.last_exits, self.last_time = exits, now
        sim_ms = self.system.eventq.cur_tick / 1e9
        self.bar.set_description_str(
            f"kvmcpu: {sim_ms:,.1f} ms simulated, {rate:,.0f} exits/s, "
            f"{now - self.start:,.1f} s wall"
        )

    def close(self) -> None:
        self.bar.close()


def cmd_run(args: argparse.Namespace) -> int:
    """``kvmcpu run``."""
    from .system import STATUS_VCPU_ERROR, System

    try:
        memory = parse_size(args.memory)
        quantum = parse_duration(args.quantum)
    except ConfigError as err:
        print(f"kvmcpu run: {err}", file=sys.stderr)
        return EXIT_USAGE
    if args.smp != 1:
        print(f"kvmcpu run: --smp {args.smp}: more than one CPU is not supported yet",
              file=sys.stderr)
        return EXIT_USAGE
    if args.backend not in ("auto", "kvm", "mock"):
        print(f"kvmcpu run: unknown backend {args.backend!r} (use auto, kvm or mock)",
              file=sys.stderr)
        return EXIT_USAGE
    if args.restore is None and not Path(args.image).is_file():
        print(f"kvmcpu run: {args.image}: no such file", file=sys.stderr)
        return EXIT_USAGE
    try:
        sink = _serial_sink(args.serial)
    except (ConfigError, OSError) as err:
        print(f"kvmcpu run: {err}", file=sys.stderr)
        return EXIT_USAGE
    fmt = {"elf": "elf64"}.get(args.fmt, args.fmt)
    system: Optional[System] = None
    progress: Optional[_Progress] = None
    try:
        if args.restore:
            system = System.restore(args.restore, backend=args.backend, serial=sink)
        else:
            system = System(memory=memory, backend=args.backend, serial=sink,
                            irqchip=args.irqchip, quantum=quantum)
            try:
                system.load(args.image, fmt=fmt, cmdline=args.append,
                            modules=[(m, m) for m in args.module])
            except GuestError as err:
                print(f"kvmcpu run: {err}", file=sys.stderr)
                return EXIT_USAGE
        if args.verbose:
            print(f"kvmcpu run: backend {system.backend.name} ({system.backend.reason})",
                  file=sys.stderr)
        show = args.progress if args.progress is not None else sys.stderr.isatty()
        if show:
            progress = _Progress(system)
            system.progress_hook = progress.update
        checkpoints = 0
        while True:
            result = system.run(max_ticks=args.max_ticks, max_seconds=args.max_seconds,
                                timeout=args.timeout)
            if result.cause != "checkpoint":
                break
            directory = Path(args.checkpoint_dir or "m5out") / f"cpt.{result.tick}"
            system.checkpoint(directory, overwrite=True)
            checkpoints += 1
            print(f"kvmcpu run: checkpoint written to {directory}", file=sys.stderr)
        if progress is not None:
            progress.close()
            progress = None
        if args.stats_file:
            system.stats.dump(args.stats_file)
        if args.stats_json:
            system.stats.dump_json(args.stats_json)
        if result.status in (124, 125) or args.verbose:
            print(f"kvmcpu run: {result.cause} at {result.tick / TICKS_PER_SECOND:.6f} s "
                  f"simulated ({result.host_seconds:.3f} s host)", file=sys.stderr)
        return result.status
    except VcpuRunError as err:
        if args.verbose:
            print(err, file=sys.stderr)
        else:
            print(f"kvmcpu run: {err.message}", file=sys.stderr)
        return STATUS_VCPU_ERROR
    finally:
        if progress is not None:
            progress.close()
        if system is not None:
            system.close()
        if sink is not None and hasattr(sink, "close") and sink != "stdout":
            sink.close()


def cmd_demo(args: argparse.Namespace) -> int:
    """``kvmcpu demo``: hello on the best backend, and what it showed."""
    from .system import System

    image = guest_path("hello.bin")
    with System(memory="64M", backend=args.backend) as system:
        system.load(image)
        result = system.run(max_seconds=10, timeout=120)
        out = system.serial.output.decode("latin-1")
        cpu = system.cpu.stats
        print(f"backend: {system.backend.name} ({system.backend.reason})")
        print(f"guest:   {image}")
        print("serial output:")
        for line in out.splitlines():
            print(f"  | {line}")
        print(f"result:  {result.cause}, status {result.status}, "
              f"{result.tick / TICKS_PER_SECOND * 1e3:.3f} ms simulated in "
              f"{result.host_seconds:.3f} s")
        print(f"stats:   {int(cpu.numVMExits.value)} VM exits, {int(cpu.numIO.value)} IO, "
              f"{int(cpu.numMMIO.value)} MMIO, {int(cpu.numHalt.value)} HLT")
        ok = "Hello from kvmcpu" in out
        return 0 if ok else 1
