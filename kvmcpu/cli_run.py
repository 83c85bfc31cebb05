"""``kvmcpu run`` and ``kvmcpu demo``: boot a guest image on a System.

Exit status of ``kvmcpu run`` (also in ``kvmcpu run --help`` and the README):

====  ==================================================================
N     the guest wrote v to isa-debug-exit (port 0xf4): N = (v << 1) | 1
0     the guest ended with m5 exit (code 0), or halted with nothing left to run
c     the guest's m5 exit code c (taken modulo 256 by the shell)
124   the simulated-time limit (--max-ticks/--max-seconds) or --timeout was reached
125   the guest triple-faulted
126   the vCPU stopped with an error KVM reports (internal error, failed entry, ...)
1     any other error (one line on stderr; ``-v`` for the traceback)
2     bad command line: a missing or unloadable image, module or checkpoint, a bad
      size, duration, backend, --serial or --smp, an impossible configuration
====  ==================================================================

With ``--restore DIR`` the machine (RAM size, devices, CPU state) comes from the
checkpoint, so IMAGE may be left out (and is ignored when given); ``--backend``
may differ from the backend that wrote it. Limits (``--max-*``, ``--timeout``)
count from the start of the command, across checkpoints the guest asks for.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

if TYPE_CHECKING:  # imported lazily at run time: `kvmcpu info` does not need them
    from .system import RunResult, System

EXIT_USAGE = 2
EXIT_RUNTIME = 1

#: Picoseconds per simulated second (kvmcpu.sim.eventq.TICKS_PER_SECOND, without the import).
_TICKS_PER_SECOND = 10**12
_DURATION_UNITS = (("ps", 1), ("ns", 10**3), ("us", 10**6), ("ms", 10**9), ("s", 10**12))


class UsageError(Exception):
    """A command-line value is unusable (status 2)."""


def parse_duration(text: str) -> int:
    """A simulated duration like "1ms", "250us", "2s", "1000000ns" or plain ticks -> ticks.

    Raises:
        ConfigError: naming the bad value.
    """
    t = text.strip().lower()
    for suffix, unit in _DURATION_UNITS:
        if t.endswith(suffix) and not (suffix == "s" and t[-2:-1] in ("p", "n", "u", "m")):
            try:
                value = float(t[: -len(suffix)])
            except ValueError:
                break
            if value < 0 or value != value or value == float("inf"):
                break
            return int(value * unit)
    else:
        if t.isdigit():
            return int(t)
    from .errors import ConfigError

    raise ConfigError(f"bad duration {text!r} (use e.g. 1ms, 250us, 2s or a tick count)")


def guest_path(name: str) -> Path:
    """A bundled guest image (package data: :func:`kvmcpu.guests.path`).

    Raises:
        GuestError: no bundled guest of that name.
    """
    from . import guests

    return guests.path(name)


def _serial_sink(spec: str) -> Any:
    if spec == "stdio":
        return "stdout"
    if spec == "none":
        return None
    if spec.startswith("file:"):
        path = spec[5:]
        if not path:
            raise UsageError("--serial file: needs a path (file:PATH)")
        try:
            return open(path, "wb")  # noqa: SIM115 - closed by cmd_run
        except OSError as err:
            raise UsageError(f"--serial {spec}: {err.strerror or err}") from err
    raise UsageError(f"bad --serial {spec!r} (use stdio, file:PATH or none)")


def add_parsers(sub: Any) -> None:
    """Register ``run`` and ``demo`` on the subcommand parser."""
    p = sub.add_parser(
        "run", help="boot a guest image (Linux bzImage, Multiboot, ELF64 or flat)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="log more, and show tracebacks of errors")
    p.add_argument("image", nargs="?", default=None,
                   help="the guest image (optional with --restore)")
    p.add_argument("--kernel", default=None, metavar="FILE",
                   help="the guest image, as QEMU's -kernel (instead of IMAGE)")
    p.add_argument("--format", dest="fmt", default="auto",
                   choices=("auto", "bzimage", "flat", "elf", "multiboot"),
                   help="image format (auto: a Linux bzImage (HdrS), else Multiboot, else an "
                        "ELF kernel, else flat only for a file named *.bin or *.img; anything "
                        "else is refused)")
    p.add_argument("--append", default="", metavar="CMDLINE",
                   help="kernel command line (Linux bzImage or Multiboot)")
    p.add_argument("--initrd", default=None, metavar="FILE",
                   help="initial ramdisk of a Linux bzImage kernel")
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
    p.add_argument("--stats-file", default=None,
                   help="write gem5 stats.txt here at the end (and on m5 dump-stats)")
    p.add_argument("--stats-json", default=None, help="write the stats as JSON here")
    p.add_argument("--checkpoint-dir", default=None,
                   help="where checkpoints requested by the guest (m5 checkpoint) go "
                        "(default m5out; each is DIR/cpt.TICK)")
    p.add_argument("--restore", default=None, metavar="DIR",
                   help="continue from this checkpoint instead of booting IMAGE")
    p.add_argument("--timeout", type=float, default=None, help="host (wall-clock) seconds limit")
    p.add_argument("--irqchip", default="auto", choices=("auto", "on", "off"),
                   help="interrupt controller: auto and off use the userspace 8259/8254 on "
                        "every backend, on uses KVM's in-kernel irqchip (status 2 when the "
                        "backend has none)")
    p.add_argument("--emulation-fallback", default="on", choices=("on", "off"),
                   help="on KVM, run an instruction KVM's emulator refuses on the mock and "
                        "carry on (default on; off: the run ends with status 126)")
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


def _check_args(args: argparse.Namespace) -> Optional[int]:
    """Validate what needs no System; returns the memory size in bytes.

    Raises:
        UsageError: with the message for stderr.
    """
    from .errors import ConfigError
    from .hostmem import PAGE_SIZE
    from .mem.physmem import parse_size

    if args.smp != 1:
        why = "more than one CPU is not supported yet" if args.smp > 1 else "must be 1"
        raise UsageError(f"--smp {args.smp}: {why}")
    if args.backend not in ("auto", "kvm", "mock"):
        raise UsageError(f"unknown backend {args.backend!r} (use auto, kvm or mock)")
    try:
        args.quantum_ticks = parse_duration(args.quantum)
    except ConfigError as err:
        raise UsageError(f"--quantum: {err}") from err
    if args.max_ticks is not None and args.max_ticks < 0:
        raise UsageError(f"--max-ticks {args.max_ticks}: must not be negative")
    if args.max_seconds is not None and not 0 <= args.max_seconds < float("inf"):
        raise UsageError(f"--max-seconds {args.max_seconds}: must be a non-negative number")
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        raise UsageError(f"--timeout {args.timeout}: must be a positive number of seconds")
    if args.restore is not None:
        if not Path(args.restore).is_dir():
            raise UsageError(f"--restore {args.restore}: no such checkpoint directory")
        return None
    if args.kernel is not None:
        if args.image is not None:
            raise UsageError(f"give the image as IMAGE or with --kernel, not both "
                             f"({args.image}, --kernel {args.kernel})")
        args.image = args.kernel
    if args.image is None:
        raise UsageError("an IMAGE is required (or --restore DIR)")
    if args.initrd is not None and not Path(args.initrd).is_file():
        raise UsageError(f"--initrd {args.initrd}: no such file")
    if not Path(args.image).is_file():
        raise UsageError(f"{args.image}: no such file")
    for m in args.module:
        if not Path(m).is_file():
            raise UsageError(f"--module {m}: no such file")
    try:
        memory = parse_size(args.memory)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    if memory <= 0 or memory % PAGE_SIZE:
        raise UsageError(f"--memory {args.memory}: must be a positive multiple of "
                         f"{PAGE_SIZE} bytes")
    return memory


def _truncate(path: Optional[str], option: str) -> None:
    """Start an output file empty, as gem5 starts stats.txt (dumps then append)."""
    if path:
        try:
            open(path, "w").close()  # noqa: SIM115
        except OSError as err:
            raise UsageError(f"{option} {path}: {err.strerror or err}") from err


def _build(args: argparse.Namespace, memory: Optional[int], sink: Any) -> System:
    """The System to run: restored from --restore, or booting IMAGE.

    Raises:
        UsageError: the configuration or the image is unusable.
    """
    from .errors import CheckpointError, ConfigError, GuestError
    from .system import System

    if args.restore is not None:
        if args.image is not None:
            print(f"kvmcpu run: --restore given: {args.image} is not loaded", file=sys.stderr)
        try:
            return System.restore(args.restore, backend=args.backend, serial=sink,
                                  stats_file=args.stats_file,
                                  emulation_fallback=args.emulation_fallback == "on")
        except CheckpointError as err:
            raise UsageError(str(err)) from err
    try:
        system = System(memory=memory if memory is not None else "128M", backend=args.backend,
                        serial=sink, irqchip=args.irqchip, quantum=args.quantum_ticks,
                        stats_file=args.stats_file,
                        emulation_fallback=args.emulation_fallback == "on")
    except ConfigError as err:
        raise UsageError(str(err)) from err
    try:
        system.load(args.image, fmt=args.fmt, cmdline=args.append,
                    modules=[(m, m) for m in args.module], initrd=args.initrd)
    except GuestError as err:  # ConfigError included: a loader option that does not apply
        system.close()
        raise UsageError(str(err)) from err
    except BaseException:
        system.close()
        raise
    return system


def _run_to_end(system: System, args: argparse.Namespace) -> RunResult:
    """Run until the guest stops for good, writing the checkpoints it asks for."""
    from .system import CAUSE_CHECKPOINT

    limit = args.max_ticks
    if limit is None and args.max_seconds is not None:
        limit = int(args.max_seconds * _TICKS_PER_SECOND)
    deadline = None if args.timeout is None else time.monotonic() + args.timeout
    first_tick = system.eventq.cur_tick
    while True:
        max_ticks = None if limit is None else max(0, limit - (system.eventq.cur_tick
                                                               - first_tick))
        timeout = None if deadline is None else max(1e-6, deadline - time.monotonic())
        result = system.run(max_ticks=max_ticks, timeout=timeout)
        if result.cause != CAUSE_CHECKPOINT:
            return result
        directory = Path(args.checkpoint_dir or "m5out") / f"cpt.{result.tick}"
        system.checkpoint(directory, overwrite=True)
        print(f"kvmcpu run: checkpoint written to {directory}", file=sys.stderr)


def cmd_run(args: argparse.Namespace) -> int:
    """``kvmcpu run``."""
    try:
        memory = _check_args(args)
        _truncate(args.stats_file, "--stats-file")
        _truncate(args.stats_json, "--stats-json")
        sink = _serial_sink(args.serial)
    except UsageError as err:
        print(f"kvmcpu run: {err}", file=sys.stderr)
        return EXIT_USAGE
    system: Optional[System] = None
    progress: Optional[_Progress] = None
    try:
        try:
            system = _build(args, memory, sink)
        except UsageError as err:
            print(f"kvmcpu run: {err}", file=sys.stderr)
            return EXIT_USAGE
        return _run_and_report(system, args)
    finally:
        if progress is not None:
            progress.close()
        if system is not None:
            system.close()
        if sink is not None and sink != "stdout":
            sink.close()


def _run_and_report(system: System, args: argparse.Namespace) -> int:
    from .errors import VcpuRunError
    from .system import STATUS_TIMEOUT, STATUS_TRIPLE_FAULT, STATUS_VCPU_ERROR

    if args.verbose:
        print(f"kvmcpu run: backend {system.backend.name} ({system.backend.reason})",
              file=sys.stderr)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = _Progress(system) if show else None
    try:
        if progress is not None:
            system.progress_hook = progress.update
        try:
            result = _run_to_end(system, args)
        except VcpuRunError as err:
            if progress is not None:
                progress.close()
                progress = None
            print(err if args.verbose else f"kvmcpu run: {err.message}", file=sys.stderr)
            return STATUS_VCPU_ERROR
    finally:
        if progress is not None:
            progress.close()
    if args.stats_file:
        system.stats.dump(args.stats_file)
    if args.stats_json:
        system.stats.dump_json(args.stats_json)
    if result.status in (STATUS_TIMEOUT, STATUS_TRIPLE_FAULT) or args.verbose:
        print(f"kvmcpu run: {result.cause} at {result.tick / _TICKS_PER_SECOND:.6f} s "
              f"simulated ({result.host_seconds:.3f} s host), status {result.status}",
              file=sys.stderr)
    return result.status


def cmd_demo(args: argparse.Namespace) -> int:
    """``kvmcpu demo``: hello on the best backend, and what it showed."""
    from .system import System

    if args.backend not in ("auto", "kvm", "mock"):
        print(f"kvmcpu demo: unknown backend {args.backend!r} (use auto, kvm or mock)",
              file=sys.stderr)
        return EXIT_USAGE
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
              f"{result.tick / _TICKS_PER_SECOND * 1e3:.3f} ms simulated in "
              f"{result.host_seconds:.3f} s")
        print(f"stats:   {int(cpu.numVMExits.value)} VM exits, {int(cpu.numIO.value)} IO, "
              f"{int(cpu.numMMIO.value)} MMIO, {int(cpu.numHalt.value)} HLT")
        ok = "Hello from kvmcpu" in out
        return 0 if ok else 1
