"""Assembled test snippets without requiring nasm at test time.

``asm(source, bits)`` returns the machine code of a nasm source. Results are
kept in ``asm_cache.json`` beside this file (committed), keyed by a hash of
the source, so the tests run on machines without nasm. A snippet missing from
the cache (new or changed) fails the test: a test run never writes into the
checkout. To add it, run the tests once with nasm installed and
``KVMCPU_UPDATE_ASM_CACHE=1``, and commit the updated cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict

import pytest

CACHE = Path(__file__).with_name("asm_cache.json")
#: Set to 1 to let asm() assemble missing snippets with nasm and add them to CACHE.
UPDATE_VAR = "KVMCPU_UPDATE_ASM_CACHE"
_lock = threading.Lock()
_cache: Dict[str, str] = {}
_loaded = False


def _load() -> None:
    global _loaded
    if not _loaded:
        if CACHE.exists():
            _cache.update(json.loads(CACHE.read_text()))
        _loaded = True


def asm(source: str, bits: int = 64, org: int = 0) -> bytes:
    """Machine code for ``source`` assembled as ``bits``-bit code at ``org``."""
    text = f"bits {bits}\norg {org:#x}\n{source}\n"
    key = hashlib.sha256(text.encode()).hexdigest()[:24]
    with _lock:
        _load()
        if key in _cache:
            return bytes.fromhex(_cache[key])
        nasm = shutil.which("nasm")
        if os.environ.get(UPDATE_VAR, "") in ("", "0") or nasm is None:
            pytest.fail(f"snippet {key} is not in {CACHE.name} (new or changed): run the "
                        f"tests with nasm installed and {UPDATE_VAR}=1, then commit the cache"
                        + ("" if nasm else " (nasm is not installed here)"))
        with tempfile.TemporaryDirectory() as d:
            src = Path(d) / "a.asm"
            out = Path(d) / "a.bin"
            src.write_text(text)
            subprocess.run([nasm, "-f", "bin", "-o", str(out), str(src)], check=True,
                           capture_output=True)
            code = out.read_bytes()
        _cache[key] = code.hex()
        CACHE.write_text(json.dumps(_cache, indent=0, sort_keys=True) + "\n")
        return code
