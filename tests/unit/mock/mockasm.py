"""Assembled test snippets without requiring nasm at test time.

``asm(source, bits)`` returns the machine code of a nasm source. Results are
kept in ``asm_cache.json`` beside this file (committed), keyed by a hash of
the source, so the tests run on machines without nasm; when a snippet is new
and nasm is installed it is assembled and the cache updated, otherwise the
test is skipped.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Dict

import pytest

CACHE = Path(__file__).with_name("asm_cache.json")
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
        if nasm is None:
            pytest.skip("snippet not in asm_cache.json and nasm is not installed")
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
