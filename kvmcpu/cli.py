"""The ``kvmcpu`` command (also ``python -m kvmcpu``).

Subcommands: ``info`` (backend, capabilities, CPUID, MSRs, perf counters,
host notes). ``run`` and ``demo`` are added as their layers land: each
subcommand is a ``_cmd_NAME(args) -> int`` function registered in
``build_parser``.

Exit status: 0 success, 1 runtime error (one line on stderr), 2 usage error
(argparse's message). ``-v`` shows the traceback of a runtime error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from typing import Callable, List

from . import __version__
from .errors import BackendUnavailableError, KvmCpuError

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2


def _cmd_info(args: argparse.Namespace) -> int:
    from . import info

    facts = info.gather(args.backend)
    if args.json:
        print(json.dumps(facts, indent=2, sort_keys=False, default=str))
    else:
        print(info.format_text(facts))
    if facts.get("backend") is None:
        print(f"kvmcpu info: backend {args.backend!r} is unavailable: {facts.get('error')}",
              file=sys.stderr)
        return EXIT_RUNTIME
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="kvmcpu",
        description="x86 guests on /dev/kvm from pure Python, modelled like gem5's KVM CPU.",
    )
    parser.add_argument("--version", action="version", version=f"kvmcpu {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log more, and show tracebacks of errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p_info = sub.add_parser("info", help="show the backend, its capabilities and host facts")
    p_info.add_argument("--backend", choices=("auto", "kvm", "mock"), default="auto",
                        help="which backend to open (default: auto)")
    p_info.add_argument("--json", action="store_true", help="print one JSON object")
    p_info.set_defaults(func=_cmd_info)

    from . import cli_run

    cli_run.add_parsers(sub)
    return parser


def main(argv: List[str] | None = None) -> int:
    """Entry point of the ``kvmcpu`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)  # exits with status 2 on usage errors
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="kvmcpu: %(levelname)s: %(name)s: %(message)s",
    )
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except BrokenPipeError:
        # The reader went away (``kvmcpu info | head``): not an error worth a message.
        # (Before OSError, which it is.)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_RUNTIME
    except (KvmCpuError, OSError) as err:
        if args.verbose:
            traceback.print_exc()
        if isinstance(err, BackendUnavailableError):
            print(f"kvmcpu {args.command}: {err}", file=sys.stderr)
        else:
            print(f"kvmcpu {args.command}: error: {err}", file=sys.stderr)
        return EXIT_RUNTIME
    except KeyboardInterrupt:
        print(f"kvmcpu {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
