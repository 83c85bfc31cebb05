"""Files that are either the old version or the new one, never half of each.

:func:`write_atomically` writes a new version of a file next to it under a
temporary name and renames it over the old one, as editors and databases do:
a process killed (SIGKILL, a crash) in the middle of a write leaves the old
file as it was (its temporary file is deleted by the next write, once that
process is gone). Stats dumps use it; anything else that rewrites a user's
file can.
"""

from __future__ import annotations

import os
import shutil
import stat as stat_mode
from typing import Union

__all__ = ["write_atomically", "temporary_name"]


def temporary_name(target: str) -> str:
    """The temporary file :func:`write_atomically` uses for ``target`` (same directory)."""
    directory, name = os.path.split(target)
    return os.path.join(directory, f".{name}.{os.getpid()}.tmp")


def write_atomically(path: Union[str, "os.PathLike[str]"], text: str, *,
                     append: bool = False) -> None:
    """Write ``text`` to ``path`` (after its current contents with ``append``) so that
    the file is always either the old one or the new one, whole.

    The new contents are written to a temporary file in the same directory,
    flushed to disk, and renamed over ``path`` (``os.replace``); the file keeps its
    permissions. A path that is not a regular file (``/dev/stdout``, a FIFO)
    is written in place. A symbolic link is followed (the file it names is replaced).

    Raises:
        OSError: the file or the temporary file cannot be written (the old file
            is then unchanged and the temporary file removed).
    """
    given = os.fspath(path)
    try:
        st = os.stat(given)
    except FileNotFoundError:
        st = None
    data = text.encode("utf-8")
    if st is not None and not stat_mode.S_ISREG(st.st_mode):
        with open(given, "ab" if append else "wb") as out:
            out.write(data)
        return
    target = os.path.realpath(given)
    tmp = temporary_name(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666 if st is None
                 else stat_mode.S_IMODE(st.st_mode))
    try:
        with os.fdopen(fd, "wb") as f:
            if append and st is not None:
                with open(target, "rb") as old:
                    shutil.copyfileobj(old, f, 1 << 20)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, target)
        _remove_stale(target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _remove_stale(target: str) -> None:
    """Delete temporary files of ``target`` left by processes that no longer exist
    (killed during a write); those of a live process are its own business."""
    directory, name = os.path.split(target)
    prefix = f".{name}."
    try:
        entries = os.listdir(directory or ".")
    except OSError:
        return
    for entry in entries:
        middle = entry[len(prefix):-len(".tmp")]
        if not (entry.startswith(prefix) and entry.endswith(".tmp") and middle.isdigit()):
            continue
        pid = int(middle)
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, entry))
            except OSError:
                pass
        except OSError:
            pass  # alive (EPERM: someone else's)
