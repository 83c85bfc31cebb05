"""The bootable guests that ship with kvmcpu, and :func:`path` to find them.

Each is a small kernel built from the nasm source beside it (``NAME.asm``,
rebuilt by ``guests/build.py`` in the source tree) and installed with the
package, so ``System.load(kvmcpu.guests.path("hello"))`` works from any
directory and any installation::

    hello       Multiboot kernel: enters long mode, prints over the UART, reads
                fw_cfg, exits through isa-debug-exit (what ``kvmcpu demo`` boots)
    hello64     the same as a plain ELF64 kernel
    sieve3      Multiboot: a compute kernel (primes), ``n=`` on the command line
    irq         Multiboot: PIT interrupts through the 8259
    checkpoint  Multiboot: takes an m5 checkpoint and checks its state after restore
    debugme     ELF64 with a symbol table (linked by ld): a loop calling compute(i),
                to try PC events and ``kvmcpu run --gdb`` on

The test fixtures (tiny flat images for the backend tests) are not part of the
package; they live in ``guests/`` of the source tree.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import List

from ..errors import ConfigError

__all__ = ["names", "path"]


def names() -> List[str]:
    """The bundled guests' names (``path(name)`` finds each), sorted."""
    return sorted(Path(str(entry.name)).stem for entry in resources.files(__name__).iterdir()
                  if str(entry.name).endswith(".bin"))


def path(name: str) -> Path:
    """The file of the bundled guest ``name`` ("hello" or "hello.bin").

    Raises:
        ConfigError: no bundled guest of that name (the message lists them).
        TypeError: ``name`` is not a string.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    stem = name[:-4] if name.endswith(".bin") else name
    if stem not in names():
        raise ConfigError(f"no bundled guest {name!r} (there are: {', '.join(names())})")
    found = resources.files(__name__) / f"{stem}.bin"
    if not isinstance(found, Path):  # e.g. imported from a zip archive
        raise ConfigError(f"bundled guest {name!r} is not a file on disk ({found})")
    return found
