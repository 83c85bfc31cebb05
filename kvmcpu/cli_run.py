"""``kvmcpu run`` and ``kvmcpu demo``: boot a guest image on a System.

``kvmcpu run --help`` shows :data:`RUN_DESCRIPTION` and :data:`RUN_EPILOG`
(plain text: the exit statuses, also in the README). A run ends in one of the
ways listed there and every ending writes the final stats to ``--stats-file``
and ``--stats-json``. SIGINT, SIGTERM and SIGHUP end the simulation at its next
safe point (:meth:`kvmcpu.system.System.request_stop`); a second one aborts at
once.
"""

from __future__ import annotations

import argparse
import os
import signal
import stat
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

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


RUN_DESCRIPTION = """\
Boot a guest image (flat, ELF64 or Multiboot) on a simulated PC with one KVM CPU,
or continue a checkpoint (--restore DIR/cpt.TICK). The machine of a checkpoint
(RAM size, devices, CPU state) comes from it, so IMAGE may be left out (it is
ignored when given), and --backend may differ from the one that wrote it.
Limits (--max-*, --timeout) count from the start of the command, across the
checkpoints the guest asks for. Every ending writes the final stats to
--stats-file and --stats-json. SIGINT (Ctrl-C), SIGTERM and SIGHUP end the
simulation at its next safe point (stats written); a second one aborts at once.
"""

RUN_EPILOG = """\
exit status:
  (v << 1) | 1  the guest wrote v to isa-debug-exit (port 0xf4), as QEMU: so a
                guest's "exit 0" there is status 1, the same as a runtime error
                (which prints a line on stderr; the guest's exit prints nothing)
  0             m5 exit with code 0, the guest halted with nothing left to run,
                powered off (ACPI S5: cause "power off") or, under --no-reboot,
                asked for a reset (0xcf9, the 8042's 0xfe: cause "reset")
  c             the guest's m5 exit code c (the shell keeps c % 256)
  124           the simulated-time limit (--max-ticks/--max-seconds) or --timeout
  125           the guest triple-faulted
  126           the vCPU stopped with an error KVM reports (internal error,
                failed entry, ...)
  129, 130, 143 stopped by SIGHUP, SIGINT (Ctrl-C) or SIGTERM (128 + the signal)
  1             a runtime error (one line on stderr; -v for the traceback)
  2             bad command line: a missing or unusable image, module or
                checkpoint, a bad size, duration, backend, --serial or --smp,
                an output that cannot be written, an impossible configuration
"""


def add_parsers(sub: Any) -> None:
    """Register ``run`` and ``demo`` on the subcommand parser."""
    p = sub.add_parser(
        "run", help="boot a guest image (Linux bzImage, Multiboot, ELF64 or flat)",
        description=RUN_DESCRIPTION, epilog=RUN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
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
                        "else is refused; default: auto)")
    p.add_argument("--append", default="", metavar="CMDLINE",
                   help="kernel command line, Linux bzImage or Multiboot (default: empty)")
    p.add_argument("--initrd", default=None, metavar="FILE",
                   help="initial ramdisk of a Linux bzImage kernel (default: none)")
    p.add_argument("--module", action="append", default=[], metavar="FILE",
                   help="Multiboot module (repeatable; the first can serve as initrd)")
    p.add_argument("--memory", default="128M", metavar="SIZE",
                   help="guest RAM, e.g. 512M or 2G (default: 128M); reserved lazily: "
                        "only the pages the guest touches take host memory")
    p.add_argument("--smp", type=int, default=1, metavar="N",
                   help="number of CPUs (default: 1), up to the backend's limit "
                        "(kvmcpu info shows it; 8 on the mock); the others wait for "
                        "INIT-SIPI-SIPI from cpu0")
    p.add_argument("--parallel", choices=("auto", "on", "off"), default="auto",
                   help="with --smp above 1 on KVM: each vCPU on a host thread of its own "
                        "(on) or all CPUs taking turns on one event queue (off); auto: "
                        "the System's default (see the README); the mock always takes "
                        "turns")
    p.add_argument("--sim-quantum", default=None, metavar="DURATION",
                   help="with --parallel: how far one CPU's simulated clock may run "
                        "ahead of another's before they meet, e.g. 1ms (gem5's "
                        "sim_quantum; default: the System's, see the README)")
    p.add_argument("--backend", default="auto", metavar="{auto,kvm,mock}",
                   help="the vCPU backend (default: auto: kvm when /dev/kvm works, else mock)")
    lim = p.add_mutually_exclusive_group()
    lim.add_argument("--max-ticks", type=int, default=None, metavar="T",
                     help="simulated-time limit in ticks (default: none)")
    lim.add_argument("--max-seconds", type=float, default=None, metavar="S",
                     help="simulated-time limit in seconds (default: none)")
    p.add_argument("--quantum", default="0", metavar="DURATION",
                   help="longest KVM entry in simulated time, e.g. 1ms (default: 0: "
                        "until the next event)")
    p.add_argument("--serial", default="stdio", metavar="{stdio,file:PATH,none}",
                   help="where COM1's output goes (default: stdio)")
    p.add_argument("--stats-file", default=None, metavar="FILE",
                   help="write gem5's stats.txt here at the end and on m5 dump-stats "
                        "(default: none)")
    p.add_argument("--stats-json", default=None, metavar="FILE",
                   help="write the final stats as JSON here (default: none)")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="where checkpoints the guest asks for (m5 checkpoint) go, "
                        "each as DIR/cpt.TICK (default: m5out)")
    p.add_argument("--checkpoint-compression", default="zlib", choices=("none", "zlib", "zstd"),
                   help="how checkpoints compress guest RAM; zero pages are never stored; "
                        "zstd needs the optional zstandard package (default: zlib)")
    p.add_argument("--restore", default=None, metavar="DIR",
                   help="continue this checkpoint (DIR/cpt.TICK) instead of booting IMAGE")
    p.add_argument("--timeout", type=float, default=None, metavar="S",
                   help="host (wall-clock) seconds limit (default: none)")
    add_gdb_arguments(p)
    p.add_argument("--irqchip", default="auto",
                   choices=("auto", "user", "kernel", "split", "on", "off"),
                   help="interrupt controllers (default: auto): auto and user use the user-space "
                        "local APIC, IOAPIC, 8259 and 8254 on every backend (simulated time); "
                        "kernel uses KVM's in-kernel irqchip and PIT (status 2 when the "
                        "backend has none); split uses KVM's local APICs with the user-space "
                        "IOAPIC, 8259 and 8254 (status 2 without KVM_CAP_SPLIT_IRQCHIP); off "
                        "and on are the old names of user and kernel")
    p.add_argument("--device", action="append", default=[], metavar="NAME[,KEY=VALUE...]",
                   help="add one of QEMU's test devices, spelt as QEMU's -device: "
                        "isa-debug-exit[,iobase=PORT,iosize=N] (replaces the one at 0xf4; "
                        "QEMU's defaults 0x501, 2), pc-testdev, pci-testdev[,addr=SLOT]; "
                        "repeatable (status 2 for an unknown device or key)")
    p.add_argument("--no-reboot", action="store_true",
                   help="a reset request (0xcf9, the keyboard controller's pulse) ends the "
                        "run with cause 'reset' and status 0, as QEMU's -no-reboot "
                        "(default: the machine resets and runs the image again)")
    p.add_argument("--emulation-fallback", default="on", choices=("on", "off", "burst"),
                   help="on KVM, run an instruction KVM's emulator refuses on the mock and "
                        "carry on (default: on; off: the run ends with status 126; burst: "
                        "also run all CPL0 code in bursts on the mock where KVM emulates it, "
                        "with a CPUID without the SIMD extensions neither runs)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default=None,
                      help="show progress on stderr (default: when stderr is a terminal)")
    prog.add_argument("--no-progress", dest="progress", action="store_false",
                      help="never show progress")
    p.set_defaults(func=cmd_run)

    d = sub.add_parser("demo", help="run the bundled hello guest on the best backend")
    d.add_argument("--backend", default="auto", help="auto, kvm or mock (default: auto)")
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


_FILE_KINDS = ((stat.S_ISDIR, "is a directory"), (stat.S_ISCHR, "is a character device"),
               (stat.S_ISBLK, "is a block device"), (stat.S_ISFIFO, "is a pipe (or FIFO)"),
               (stat.S_ISSOCK, "is a socket"))


def _input_file_problem(path: str) -> Optional[str]:
    """Why ``path`` cannot be read as an image or module file (None: it can)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as err:
        return str(err.strerror or err).lower()
    for test, what in _FILE_KINDS:
        if test(mode):
            return f"{what}, not a file (an image must be a regular file: save it to one)"
    if not os.access(path, os.R_OK):
        return "permission denied"
    return None


def _check_output_file(path: str, option: str) -> None:
    """``path`` can be written (created, or replaced) without touching it now."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a directory")
    parent = target.parent
    if not parent.is_dir():
        raise UsageError(f"{option} {path}: No such file or directory")
    try:
        if target.exists() and not target.is_file():
            # A device or a FIFO (/dev/stdout) is written in place; opening a FIFO
            # here would wait for its reader.
            if not os.access(target, os.W_OK):
                raise PermissionError(13, "Permission denied")
            return
        if target.exists():
            open(target, "ab").close()  # noqa: SIM115 - writes nothing
        # The dump goes to a temporary file beside it, renamed over it.
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise UsageError(f"{option} {path}: {err.strerror or err}") from err


def _check_output_dir(path: str, option: str) -> None:
    """``path`` is, or can be made, a directory we can create entries in."""
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise UsageError(f"{option} {path}: exists and is not a directory")
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{option} {path}: {probe} is not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".kvmcpu-probe-", dir=probe))
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot create a directory in {probe}: "
                         f"{err.strerror or err}") from err


def _check_restore(path: str) -> None:
    from .sim.checkpoint import CPT_FILE

    where = Path(path)
    if not where.exists():
        raise UsageError(f"--restore {path}: no such checkpoint directory")
    if not where.is_dir():
        raise UsageError(f"--restore {path}: not a checkpoint (a checkpoint is a directory "
                         f"holding {CPT_FILE}, e.g. m5out/cpt.TICK)")
    if (where / CPT_FILE).is_file():
        return
    inside = sorted((c for c in where.glob("cpt.*") if (c / CPT_FILE).is_file()),
                    key=lambda c: (len(c.name), c.name))
    if inside:
        shown = ", ".join(str(c) for c in inside[:5]) + (", ..." if len(inside) > 5 else "")
        raise UsageError(f"--restore {path}: not a checkpoint (no {CPT_FILE}), but it holds "
                         f"{len(inside)}: {shown}; restore one of those")
    raise UsageError(f"--restore {path}: not a checkpoint directory (no {CPT_FILE} in it)")


#: --parallel -> System(parallel=...).
_PARALLEL = {"auto": None, "on": True, "off": False}


def _burst_params(mode: str) -> Optional[Dict[str, Any]]:
    """The CPU parameters of ``--emulation-fallback burst`` (None for on/off)."""
    if mode != "burst":
        return None
    from .cpu.kvm.hybrid import BURST_INSTRUCTIONS

    return {"emulationFallbackBurst": BURST_INSTRUCTIONS}


def _check_args(args: argparse.Namespace) -> Optional[int]:
    """Validate what needs no System; returns the memory size in bytes.

    Raises:
        UsageError: with the message for stderr.
    """
    from .errors import ConfigError
    from .hostmem import PAGE_SIZE
    from .mem.physmem import parse_size

    if args.smp < 1:
        raise UsageError(f"--smp {args.smp}: must be at least 1")
    if args.backend not in ("auto", "kvm", "mock"):
        raise UsageError(f"unknown backend {args.backend!r} (use auto, kvm or mock)")
    try:
        args.quantum_ticks = parse_duration(args.quantum)
    except ConfigError as err:
        raise UsageError(f"--quantum: {err}") from err
    args.sim_quantum_kw = {}
    if args.sim_quantum is not None:
        try:
            ticks = parse_duration(args.sim_quantum)
        except ConfigError as err:
            raise UsageError(f"--sim-quantum: {err}") from err
        if ticks <= 0:
            raise UsageError(f"--sim-quantum {args.sim_quantum}: must be positive")
        args.sim_quantum_kw = {"sim_quantum": ticks}
    if args.max_ticks is not None and args.max_ticks < 0:
        raise UsageError(f"--max-ticks {args.max_ticks}: must not be negative")
    if args.max_seconds is not None and not 0 <= args.max_seconds < float("inf"):
        raise UsageError(f"--max-seconds {args.max_seconds}: must be a finite number of "
                         f"seconds >= 0 (leave it out for no limit)")
    if args.timeout is not None and not 0 < args.timeout < float("inf"):
        raise UsageError(f"--timeout {args.timeout}: must be a positive number of seconds "
                         f"(finite; leave it out for no limit)")
    from .errors import CheckpointError
    from .sim.memimage import check_codec

    try:
        check_codec(args.checkpoint_compression)
    except CheckpointError as err:
        raise UsageError(f"--checkpoint-compression: {err}") from err
    for path, option in ((args.stats_file, "--stats-file"), (args.stats_json, "--stats-json")):
        if path:
            _check_output_file(path, option)
    if args.checkpoint_dir is not None:
        _check_output_dir(args.checkpoint_dir, "--checkpoint-dir")
    _check_gdb_args(args)
    if args.restore is not None:
        _check_restore(args.restore)
        return None
    if args.kernel is not None:
        if args.image is not None:
            raise UsageError(f"give the image as IMAGE or with --kernel, not both "
                             f"({args.image}, --kernel {args.kernel})")
        args.image = args.kernel
    if args.image is None:
        raise UsageError("an IMAGE is required (or --restore DIR)")
    if args.initrd is not None:
        problem = _input_file_problem(args.initrd)
        if problem:
            raise UsageError(f"--initrd {args.initrd}: {problem}")
    problem = _input_file_problem(args.image)
    if problem:
        raise UsageError(f"{args.image}: {problem}")
    for m in args.module:
        problem = _input_file_problem(m)
        if problem:
            raise UsageError(f"--module {m}: {problem}")
    try:
        memory = parse_size(args.memory)
    except ConfigError as err:
        raise UsageError(str(err)) from err
    if memory <= 0 or memory % PAGE_SIZE:
        raise UsageError(f"--memory {args.memory}: must be a positive multiple of "
                         f"{PAGE_SIZE} bytes")
    return memory


def _build(args: argparse.Namespace, memory: Optional[int], sink: Any) -> System:
    """The System to run: restored from --restore, or booting IMAGE.

    Raises:
        UsageError: the configuration or the image is unusable.
    """
    from .errors import CheckpointError, ConfigError, GuestError
    from .sim.checkpoint import UnknownCheckpointKeyWarning
    from .system import System

    if args.restore is not None:
        if args.image is not None:
            print(f"kvmcpu run: --restore given: {args.image} is not loaded", file=sys.stderr)
        caught: List[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", UnknownCheckpointKeyWarning)
                return System.restore(args.restore, backend=args.backend, serial=sink,
                                      stats_file=args.stats_file, no_reboot=args.no_reboot,
                                      parallel=_PARALLEL[args.parallel],
                                      emulation_fallback=args.emulation_fallback != "off",
                                      **args.sim_quantum_kw)
        except CheckpointError as err:
            raise UsageError(str(err)) from err
        finally:
            # One line each, without the warnings module's source path.
            for w in caught:
                if issubclass(w.category, UnknownCheckpointKeyWarning):
                    print(f"kvmcpu run: warning: {w.message}", file=sys.stderr)
                else:
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    from .devices.testdevs import device_spec

    for text in args.device:
        try:
            device_spec(text)
        except ConfigError as err:
            raise UsageError(f"--device {text}: {err}") from err
    try:
        system = System(memory=memory if memory is not None else "128M", backend=args.backend,
                        serial=sink, irqchip=args.irqchip, quantum=args.quantum_ticks,
                        smp=args.smp, parallel=_PARALLEL[args.parallel],
                        stats_file=args.stats_file, no_reboot=args.no_reboot,
                        devices=args.device,
                        emulation_fallback=args.emulation_fallback != "off",
                        cpu_params=_burst_params(args.emulation_fallback),
                        **args.sim_quantum_kw)
    except ConfigError as err:
        raise UsageError(f"--memory {args.memory}: {err}" if "guest RAM" in str(err)
                         else f"--smp {args.smp}: {err}" if "smp=" in str(err)
                         else f"--parallel {args.parallel}: {err}" if "parallel=" in str(err)
                         else str(err)) from err
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


def _check_kvm_ram(system: System, args: argparse.Namespace) -> None:
    """Refuse guest RAM whose KVM bookkeeping the host cannot hold, before KVM allocates
    it at the first run (on a shadow-paging host that much kernel memory takes minutes
    to allocate, and could set off the OOM killer).

    Raises:
        UsageError: naming the guest RAM, the kernel memory and what is available.
    """
    from .hostmem import PAGE_SIZE
    from .mem.physmem import (
        KVM_SHADOW_BYTES_PER_PAGE,
        format_size,
        host_meminfo,
        kvm_shadow_paging,
    )

    if system.backend.name != "kvm" or not kvm_shadow_paging():
        return
    ram = system.physmem.ram_size
    need = ram // PAGE_SIZE * KVM_SHADOW_BYTES_PER_PAGE
    avail = host_meminfo().get("MemAvailable")
    if avail is not None and need > avail // 2:
        given = f"--memory {args.memory}" if args.restore is None else f"--restore {args.restore}"
        raise UsageError(
            f"{given}: guest RAM of {format_size(ram)} needs {format_size(need)} of kernel "
            f"memory for KVM's page bookkeeping on this host (shadow paging: "
            f"kvm.tdp_mmu=N), more than half of the {format_size(avail)} available "
            f"(the mock backend has no such cost)")


def add_gdb_arguments(p: argparse.ArgumentParser) -> None:
    """``--gdb [HOST:]PORT``, ``-S`` and ``--gdb-allow-remote`` (see kvmcpu.gdb)."""
    g = p.add_argument_group("debugging (GDB remote stub)")
    g.add_argument("--gdb", default=None, metavar="[HOST:]PORT",
                   help="serve the GDB remote protocol (loopback: 127.0.0.1 unless HOST)")
    g.add_argument("-S", dest="gdb_wait", action="store_true",
                   help="with --gdb: wait for the debugger before the first instruction")
    g.add_argument("--gdb-allow-remote", action="store_true",
                   help="let --gdb listen on an address that is not loopback (warns)")


def _run_under_gdb(system: System, args: argparse.Namespace) -> RunResult:
    from .gdb import run_under_gdb

    return run_under_gdb(system, args.gdb, wait=args.gdb_wait,
                         allow_remote=args.gdb_allow_remote, timeout=args.timeout)


def _check_gdb_args(args: argparse.Namespace) -> None:
    from .gdb.stub import is_loopback, parse_address

    if args.gdb is None:
        if args.gdb_wait or args.gdb_allow_remote:
            raise UsageError("-S and --gdb-allow-remote need --gdb [HOST:]PORT")
        return
    try:
        host, _ = parse_address(args.gdb)
    except ValueError as err:
        raise UsageError(f"--gdb {err}") from err
    if not is_loopback(host) and not args.gdb_allow_remote:
        raise UsageError(f"--gdb {args.gdb}: {host} is not a loopback address; the stub "
                         "gives full control of the guest (--gdb-allow-remote to allow it)")


def _run_to_end(system: System, args: argparse.Namespace) -> RunResult:
    """Run until the guest stops for good, writing the checkpoints it asks for."""
    from .system import CAUSE_CHECKPOINT

    if getattr(args, "gdb", None) is not None:
        return _run_under_gdb(system, args)

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
        system.checkpoint(directory, overwrite=True, compression=args.checkpoint_compression)
        print(f"kvmcpu run: checkpoint written to {directory}", file=sys.stderr)


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


class _Aborted(BaseException):
    """A second stop signal: leave at once (no stats)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


class _StopOnSignals:
    """SIGINT, SIGTERM and SIGHUP while ``kvmcpu run`` runs: the first asks the
    System to stop at its next safe point (gem5: the handler only sets a flag the
    loop checks), a second raises :class:`_Aborted`."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None
        self.system: Optional[System] = None
        self._old: Dict[int, Any] = {}

    def __enter__(self) -> _StopOnSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in _STOP_SIGNALS:
                self._old[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, old in self._old.items():
            signal.signal(signum, old)
        self._old.clear()

    def attach(self, system: System) -> None:
        from .system import CAUSE_INTERRUPTED

        self.system = system
        system.expect_stop_requests = True
        if self.signum is not None:  # it came while the System was being built
            system.request_stop(CAUSE_INTERRUPTED, self.signum)

    def _handle(self, signum: int, frame: object) -> None:
        from .system import CAUSE_INTERRUPTED

        if self.signum is not None:
            raise _Aborted(signum)
        self.signum = signum
        if self.system is not None:
            self.system.request_stop(CAUSE_INTERRUPTED, signum)


def cmd_run(args: argparse.Namespace) -> int:
    """``kvmcpu run``."""
    try:
        memory = _check_args(args)
        sink = _serial_sink(args.serial)
    except UsageError as err:
        print(f"kvmcpu run: {err}", file=sys.stderr)
        return EXIT_USAGE
    system: Optional[System] = None
    try:
        with _StopOnSignals() as stop:
            try:
                system = _build(args, memory, sink)
                _check_kvm_ram(system, args)
            except UsageError as err:
                print(f"kvmcpu run: {err}", file=sys.stderr)
                return EXIT_USAGE
            stop.attach(system)
            return _run_and_report(system, args)
    except _Aborted as abort:
        print(f"kvmcpu run: aborted ({signal.Signals(abort.signum).name})", file=sys.stderr)
        return 128 + abort.signum
    finally:
        if system is not None:
            system.close()
        if sink is not None and sink != "stdout":
            sink.close()


def _write_stats(system: System, args: argparse.Namespace) -> bool:
    """The final stats to --stats-file and --stats-json; False (and a message) on failure."""
    ok = True
    for path, option, dump in ((args.stats_file, "--stats-file", system.stats.dump),
                               (args.stats_json, "--stats-json", system.stats.dump_json)):
        if not path:
            continue
        try:
            dump(path)
        except OSError as err:
            print(f"kvmcpu run: error: {option} {path}: {err.strerror or err}", file=sys.stderr)
            ok = False
    return ok


def _run_and_report(system: System, args: argparse.Namespace) -> int:
    """Run, then write the final stats whatever ended the run."""
    from .errors import KvmCpuError, VcpuRunError
    from .system import (
        CAUSE_INTERRUPTED,
        STATUS_TIMEOUT,
        STATUS_TRIPLE_FAULT,
        STATUS_VCPU_ERROR,
    )

    if args.verbose:
        print(f"kvmcpu run: backend {system.backend.name} ({system.backend.reason})",
              file=sys.stderr)
    for path in (args.stats_file, args.stats_json):
        if path:  # this run's stats replace an earlier file, once there are some
            system.stats.start_file(path)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    progress = _Progress(system) if show else None
    result: Optional[RunResult] = None
    try:
        if progress is not None:
            system.progress_hook = progress.update
        try:
            result = _run_to_end(system, args)
        finally:
            if progress is not None:
                progress.close()
                system.progress_hook = None
    except VcpuRunError as err:
        print(err if args.verbose else f"kvmcpu run: {err.message}", file=sys.stderr)
        status = STATUS_VCPU_ERROR
    except Exception as err:  # noqa: BLE001 - KVM, OS or a device's own error: stats first
        if args.verbose:
            traceback.print_exc()
        what = str(err) if isinstance(err, (KvmCpuError, OSError)) else (
            f"{type(err).__name__}: {err} (a Python error inside the simulation; "
            f"-v for the traceback)")
        print(f"kvmcpu run: error: {what}", file=sys.stderr)
        status = EXIT_RUNTIME
    else:
        status = result.status
    if not _write_stats(system, args):
        status = EXIT_RUNTIME
    if result is not None and (args.verbose or result.status in (STATUS_TIMEOUT,
                                                                  STATUS_TRIPLE_FAULT)
                               or result.cause == CAUSE_INTERRUPTED):
        cause = result.cause
        if cause == CAUSE_INTERRUPTED and result.code > 0:
            cause += f" by {signal.Signals(result.code).name}"
        print(f"kvmcpu run: {cause} at {result.tick / _TICKS_PER_SECOND:.6f} s "
              f"simulated ({result.host_seconds:.3f} s host), status {result.status}",
              file=sys.stderr)
    return status


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
