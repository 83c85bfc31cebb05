"""Checkpoints: a directory holding ``m5.cpt`` and memory images (gem5 ``sim/serialize.hh``).

``m5.cpt`` is an ini file as gem5 writes it: one ``[section]`` per object path
(``[system.cpu0]``) followed by ``key=value`` lines, lists space-separated,
booleans ``true``/``false``, byte strings in hex. The ``[Globals]`` section
comes first; the ``[kvmcpu]`` manifest comes last and holds the format version,
the list of sections, and for every memory image its file, raw size,
compression and the SHA-256 of the stored file, then ``complete=true``; the
file's last line, ``m5cpt_sha256=``, is the SHA-256 of every byte of ``m5.cpt``
before it. So every file of a checkpoint is covered by a digest: a byte changed
anywhere is a :class:`CheckpointError` naming the file. (A deliberate hand edit
of ``m5.cpt`` is accepted after :func:`reseal`.)

Memory images are sparse and compressed (``zlib`` by default; ``none``, or
``zstd`` with the optional ``zstandard`` package): only non-zero pages are
stored, in records of at most 1 MiB written and read one at a time, so memory
use is bounded whatever the RAM size. The file format is in
:mod:`kvmcpu.sim.memimage`.

Writing is atomic: everything goes to a hidden temporary sibling directory,
every file and the directory are fsync'ed, and only then is it moved into
place; an existing checkpoint being overwritten is swapped out in one step
(``renameat2(RENAME_EXCHANGE)``) and then deleted. An interrupted write (even
SIGKILL) leaves the previous checkpoint, or nothing, at the target path, and at
worst a hidden ``.NAME.tmp-*`` sibling.

Loading validates the whole checkpoint (digest of ``m5.cpt``, syntax, version,
sections, every image file's size and digest) before anything is handed to an
object. Unknown keys and sections are accepted, as gem5 accepts them, but
reported: see :meth:`CheckpointIn.unused_keys` and
:class:`UnknownCheckpointKeyWarning`. Format version 1 (whole-RAM images, no
digest of ``m5.cpt``) is not read.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import os
import re
import shutil
import tempfile
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Set, Tuple, TypeVar, Union

from kvmcpu.errors import CheckpointError
from kvmcpu.sim import memimage
from kvmcpu.sim.memimage import Extents

__all__ = [
    "FORMAT_VERSION",
    "CPT_FILE",
    "GLOBALS_SECTION",
    "MANIFEST_SECTION",
    "COMPRESSIONS",
    "DEFAULT_COMPRESSION",
    "reseal",
    "UnknownCheckpointKeyWarning",
    "CheckpointOut",
    "CheckpointIn",
    "SectionOut",
    "SectionIn",
    "write_checkpoint",
    "param_out",
    "param_in",
    "encode_value",
]

#: The checkpoint format this code writes and reads.
FORMAT_VERSION = 2
#: The ini file inside a checkpoint directory (gem5's name).
CPT_FILE = "m5.cpt"
#: gem5's section for simulator-wide values (curTick).
GLOBALS_SECTION = "Globals"
#: The manifest section: version, sections, images and digests.
MANIFEST_SECTION = "kvmcpu"
#: Memory image compressions (``zstd`` needs the optional ``zstandard`` package).
COMPRESSIONS = tuple(memimage.CODECS)
#: What memory images are compressed with unless asked otherwise (gem5 gzips its pmem).
DEFAULT_COMPRESSION = "zlib"
#: The last line of m5.cpt: the SHA-256 of every byte before it.
DIGEST_KEY = "m5cpt_sha256"

_CHUNK = 1 << 22
_IMAGE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_SECTION_NAME = re.compile(r"^[^\[\]\s]+$")

Buffer = Union[bytes, bytearray, memoryview]
Scalar = Union[bool, int, float, str]
Value = Union[Scalar, bytes, bytearray, memoryview, Enum, Sequence[Scalar]]
T = TypeVar("T", bool, int, float, str, bytes)


class UnknownCheckpointKeyWarning(UserWarning):
    """A checkpoint holds keys or sections that nothing read (gem5 ignores them too)."""


def encode_value(value: object) -> str:
    """The ``m5.cpt`` text of ``value`` (bool, int, float, str, bytes, Enum or a list of them)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return encode_value(value.value)
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        if "\n" in value or "\r" in value:
            raise ValueError(f"checkpoint strings cannot hold newlines: {value!r}")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        parts = []
        for item in value:
            if isinstance(item, str) and (not item or any(c.isspace() for c in item)):
                raise ValueError(f"list items cannot be empty or hold spaces: {item!r}")
            if isinstance(item, (list, tuple, bytes, bytearray, memoryview)):
                raise ValueError(f"nested values cannot go in a checkpoint list: {item!r}")
            parts.append(encode_value(item))
        return " ".join(parts)
    raise TypeError(f"cannot store a {type(value).__name__} in a checkpoint: {value!r}")


def _check_key(key: str) -> None:
    if (
        not key
        or "=" in key
        or key != key.strip()
        or key[0] in "[#;"
        or any(c in key for c in "\r\n")
    ):
        raise ValueError(f"invalid checkpoint key {key!r}")


def _check_section(path: str) -> None:
    if not _SECTION_NAME.match(path):
        raise ValueError(f"invalid checkpoint section name {path!r}")


class SectionOut:
    """One ``[path]`` section being written."""

    __slots__ = ("path", "values")

    def __init__(self, path: str) -> None:
        _check_section(path)
        self.path = path
        self.values: Dict[str, str] = {}

    def param_out(self, key: str, value: Value) -> None:
        """Store ``value`` under ``key`` (gem5 ``paramOut``/SERIALIZE_SCALAR)."""
        _check_key(key)
        self.values[key] = encode_value(value)

    set = param_out


class _Scoped:
    """The current-section stack shared by CheckpointOut and CheckpointIn."""

    def __init__(self) -> None:
        self._scope: List[str] = []

    @property
    def current_path(self) -> str:
        """The section the scoped calls go to."""
        if not self._scope:
            raise CheckpointError("no checkpoint section is in scope (use scope())")
        return self._scope[-1]

    @contextlib.contextmanager
    def scope(self, path: str) -> Iterator[str]:
        """Make ``path`` (absolute) the current section for the ``with`` block."""
        _check_section(path)
        self._scope.append(path)
        try:
            yield path
        finally:
            self._scope.pop()

    @contextlib.contextmanager
    def subsection(self, name: str) -> Iterator[str]:
        """Enter ``<current>.<name>`` (gem5 ``ScopedCheckpointSection``)."""
        path = f"{self.current_path}.{name}" if self._scope else name
        with self.scope(path):
            yield path


class CheckpointOut(_Scoped):
    """Collects sections and memory images; :func:`write_checkpoint` stores them."""

    def __init__(self, compression: str = DEFAULT_COMPRESSION) -> None:
        super().__init__()
        memimage.check_codec(compression)
        #: The compression of images added without one.
        self.compression = compression
        self._sections: Dict[str, SectionOut] = {}
        self._images: Dict[str, Tuple[memoryview, str, Optional[Extents]]] = {}

    def section(self, path: str) -> SectionOut:
        """The section ``path``, created (empty) on first use."""
        sec = self._sections.get(path)
        if sec is None:
            sec = self._sections[path] = SectionOut(path)
        return sec

    @contextlib.contextmanager
    def scope(self, path: str) -> Iterator[str]:
        self.section(path)  # an object that writes nothing still gets its section, as gem5
        with super().scope(path) as p:
            yield p

    def param_out(self, key: str, value: Value) -> None:
        """Store ``value`` under ``key`` in the current section."""
        self.section(self.current_path).param_out(key, value)

    def sections(self) -> List[str]:
        """The section paths, in the order they were created."""
        return list(self._sections)

    def add_memory_image(self, name: str, buffer: Buffer, compression: Optional[str] = None,
                         *, extents: Optional[Extents] = None) -> None:
        """Add a memory image (not copied: the buffer must not change until written).

        Only its non-zero pages are stored.

        Args:
            name: file-name-safe identifier (``system.physmem.ram0``).
            buffer: the bytes (any buffer, e.g. an mmap of guest RAM).
            compression: ``none``, ``zlib`` or ``zstd`` (default: :attr:`compression`).
            extents: where ``buffer`` may hold non-zero bytes, as
                :meth:`kvmcpu.hostmem.HostMemory.data_extents` says; only there is
                it read (default: everywhere).

        Raises:
            ValueError: a bad name or compression, or a name added twice.
            CheckpointError: ``zstd`` without the ``zstandard`` package.
        """
        if not _IMAGE_NAME.match(name) or ".." in name:
            raise ValueError(f"invalid memory image name {name!r}")
        compression = self.compression if compression is None else compression
        memimage.check_codec(compression)
        if name in self._images:
            raise ValueError(f"memory image {name!r} added twice")
        self._images[name] = (memoryview(buffer).cast("B"), compression, extents)

    def images(self) -> List[str]:
        """The memory image names."""
        return list(self._images)

    def _image(self, name: str) -> Tuple[memoryview, str, Optional[Extents]]:
        return self._images[name]


def param_out(cp: CheckpointOut, key: str, value: Value) -> None:
    """gem5's SERIALIZE_SCALAR: store ``value`` under ``key`` in the current section."""
    cp.param_out(key, value)


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _render(cp: CheckpointOut, manifest: Dict[str, str]) -> str:
    lines = [f"## checkpoint generated by kvmcpu (format {FORMAT_VERSION})"]
    order = [GLOBALS_SECTION] if GLOBALS_SECTION in cp.sections() else []
    order += [p for p in cp.sections() if p not in (GLOBALS_SECTION, MANIFEST_SECTION)]
    for path in order:
        lines.append("")
        lines.append(f"[{path}]")
        for key, text in cp.section(path).values.items():
            lines.append(f"{key}={text}")
    lines.append("")
    lines.append(f"[{MANIFEST_SECTION}]")
    manifest = dict(manifest)
    manifest["sections"] = encode_value(order)
    for key, text in manifest.items():
        lines.append(f"{key}={text}")
    lines.append("complete=true")
    return _seal("\n".join(lines) + "\n")


def _seal(text: str) -> str:
    """``text`` followed by its digest line."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return f"{text}{DIGEST_KEY}={digest}\n"


def reseal(directory: Union[str, os.PathLike[str]]) -> None:
    """Accept a deliberate hand edit of ``directory/m5.cpt``: recompute its digest line.

    gem5 users edit ``m5.cpt`` by hand; kvmcpu refuses an edited file (its digest
    no longer matches) until this is called. Memory images are not touched:
    their digests stay checked.

    Raises:
        CheckpointError: there is no m5.cpt, or it is not a sealed kvmcpu m5.cpt.
    """
    path = Path(directory) / CPT_FILE
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise CheckpointError(f"checkpoint {directory}: cannot read {CPT_FILE}: {err}") from err
    body, _digest = _split_digest(text)
    if body is None:
        raise CheckpointError(f"checkpoint {directory}: {CPT_FILE} has no {DIGEST_KEY} line")
    _atomic_write_text(path, _seal(body))


def _split_digest(text: str) -> Tuple[Optional[str], str]:
    """(everything before the digest line, the digest), or (None, "") without one."""
    body, sep, last = text.rstrip("\n").rpartition("\n")
    if not sep or not last.startswith(DIGEST_KEY + "="):
        return None, ""
    return body + "\n", last[len(DIGEST_KEY) + 1 :].strip()


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2); False where unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                          ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def write_checkpoint(directory: Union[str, os.PathLike[str]], cp: CheckpointOut,
                     *, overwrite: bool = False) -> Path:
    """Write ``cp`` as a checkpoint directory, atomically.

    Args:
        directory: the checkpoint directory to create.
        cp: sections and memory images.
        overwrite: replace an existing checkpoint at ``directory`` (atomically).

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: the directory exists (without ``overwrite``), is not a
            checkpoint, or writing failed (then nothing is left behind); the
            message names ``directory``, not the temporary one.
    """
    if MANIFEST_SECTION in cp.sections():
        raise CheckpointError(f"section [{MANIFEST_SECTION}] is reserved for the manifest")
    target = Path(directory)
    if target.exists() or target.is_symlink():
        if not overwrite:
            raise CheckpointError(f"checkpoint {target} already exists (pass overwrite=True)")
        if not target.is_dir() or (any(target.iterdir()) and not (target / CPT_FILE).exists()):
            raise CheckpointError(f"refusing to overwrite {target}: it is not a checkpoint")
    parent = target.parent
    for above in (parent, *parent.parents):
        if above.exists():
            if not above.is_dir():
                raise CheckpointError(f"cannot write checkpoint {target}: {above} is not a "
                                      f"directory")
            break
    step = f"creating {parent}"
    tmp: Optional[Path] = None
    try:
        parent.mkdir(parents=True, exist_ok=True)
        step = f"creating a directory in {parent}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=parent))
        manifest: Dict[str, str] = {"format_version": str(FORMAT_VERSION)}
        names = cp.images()
        manifest["images"] = encode_value(names)
        for name in names:
            data, compression, extents = cp._image(name)
            file = name + memimage.IMAGE_SUFFIX
            step = f"writing {file}"
            info = memimage.write_image(tmp / file, data, compression, extents)
            for key, text in info.items():
                manifest[f"image.{name}.{key}"] = text
        step = f"writing {CPT_FILE}"
        with open(tmp / CPT_FILE, "w", encoding="utf-8", newline="\n") as f:
            f.write(_render(cp, manifest))
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(tmp)
        step = "moving it into place"
        if target.exists() and _exchange(tmp, target):
            _fsync_dir(parent)
            shutil.rmtree(tmp, ignore_errors=True)  # now the old checkpoint
        elif target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=parent))
            os.rmdir(old)
            os.rename(target, old)
            os.rename(tmp, target)
            _fsync_dir(parent)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
            _fsync_dir(parent)
    except BaseException as err:
        if tmp is not None and tmp.exists() and tmp != target:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError):
            why = err.strerror or str(err)
            raise CheckpointError(f"cannot write checkpoint {target}: {step}: {why}") from err
        if isinstance(err, ValueError):
            raise CheckpointError(f"cannot write checkpoint {target}: {err}") from err
        raise
    return target


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------
class SectionIn:
    """One section of a loaded checkpoint, with typed getters.

    Every getter raises :class:`CheckpointError` naming the section and key when
    the key is missing or its value does not parse.
    """

    __slots__ = ("path", "_values", "_used", "_where")

    def __init__(self, path: str, values: Dict[str, str], where: str) -> None:
        self.path = path
        self._values = values
        self._used: Set[str] = set()
        self._where = where

    def _error(self, key: str, problem: str) -> CheckpointError:
        return CheckpointError(f"checkpoint {self._where}: [{self.path}] {key}: {problem}")

    def keys(self) -> List[str]:
        """The keys of this section, in file order."""
        return list(self._values)

    def has(self, key: str) -> bool:
        """True when ``key`` is present."""
        return key in self._values

    def raw(self, key: str) -> str:
        """The unparsed text of ``key``."""
        try:
            text = self._values[key]
        except KeyError:
            raise self._error(key, "missing") from None
        self._used.add(key)
        return text

    def _parse(self, key: str, text: str, kind: type) -> Any:
        try:
            if kind is bool:
                if text not in ("true", "false"):
                    raise ValueError(f"not a boolean: {text!r}")
                return text == "true"
            if kind is int:
                try:
                    return int(text, 10)
                except ValueError:
                    return int(text, 0)
            if kind is float:
                return float(text)
            if kind is bytes:
                return bytes.fromhex(text)
            if kind is str:
                return text
        except ValueError as err:
            raise self._error(key, f"cannot parse {text!r} as {kind.__name__}: {err}") from None
        raise TypeError(f"unsupported checkpoint value type {kind!r}")

    def get(self, key: str, kind: type[T]) -> T:
        """The value of ``key`` parsed as ``kind`` (bool, int, float, str or bytes)."""
        value: T = self._parse(key, self.raw(key), kind)
        return value

    def get_int(self, key: str) -> int:
        """``key`` as an int (decimal, or 0x-prefixed)."""
        return self.get(key, int)

    def get_bool(self, key: str) -> bool:
        """``key`` as a bool (``true``/``false``)."""
        return self.get(key, bool)

    def get_float(self, key: str) -> float:
        """``key`` as a float."""
        return self.get(key, float)

    def get_str(self, key: str) -> str:
        """``key`` as a string."""
        return self.get(key, str)

    def get_bytes(self, key: str, size: int | None = None) -> bytes:
        """``key`` as bytes (hex in the file); ``size`` checks the length."""
        value = self.get(key, bytes)
        if size is not None and len(value) != size:
            raise self._error(key, f"expected {size} bytes, found {len(value)}")
        return value

    def get_list(self, key: str, kind: type[T], size: int | None = None) -> List[T]:
        """``key`` as a space-separated list of ``kind``; ``size`` checks the length."""
        text = self.raw(key)
        items = [self._parse(key, part, kind) for part in text.split()]
        if size is not None and len(items) != size:
            raise self._error(key, f"expected {size} values, found {len(items)}")
        return items

    def get_int_list(self, key: str, size: int | None = None) -> List[int]:
        """``key`` as a list of ints."""
        return self.get_list(key, int, size)

    def unused(self) -> List[str]:
        """Keys nobody read."""
        return [k for k in self._values if k not in self._used]


def _parse_ini(text: str, where: str) -> Dict[str, Dict[str, str]]:
    sections: Dict[str, Dict[str, str]] = {}
    current: Dict[str, str] | None = None
    current_name = ""
    for lineno, line in enumerate(text.split("\n"), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or stripped.startswith(";"):
            continue
        if stripped.startswith("["):
            if not stripped.endswith("]") or len(stripped) < 3:
                raise CheckpointError(f"checkpoint {where}: line {lineno}: bad section header")
            current_name = stripped[1:-1]
            if current_name in sections:
                raise CheckpointError(
                    f"checkpoint {where}: line {lineno}: section [{current_name}] appears twice"
                )
            current = sections[current_name] = {}
            continue
        key, eq, value = line.partition("=")
        if not eq or current is None:
            raise CheckpointError(
                f"checkpoint {where}: line {lineno}: expected key=value inside a section"
            )
        key = key.strip()
        if key in current:
            raise CheckpointError(
                f"checkpoint {where}: [{current_name}] {key}: appears twice (line {lineno})"
            )
        current[key] = value
    return sections


class CheckpointIn(_Scoped):
    """A loaded, validated checkpoint. Create it with :meth:`load`."""

    def __init__(self, directory: Path, sections: Dict[str, Dict[str, str]],
                 images: Dict[str, Dict[str, str]]) -> None:
        super().__init__()
        self.directory = directory
        where = str(directory)
        self._sections = {p: SectionIn(p, v, where) for p, v in sections.items()}
        self._opened: Set[str] = set()
        self._images = images
        self.version = FORMAT_VERSION

    # -- loading and validation ----------------------------------------------------
    @classmethod
    def load(cls, directory: Union[str, os.PathLike[str]]) -> CheckpointIn:
        """Read and validate the checkpoint at ``directory``.

        Everything is checked before this returns: the digest of ``m5.cpt``,
        the ini syntax, the format version, that every listed section is
        present, and for every memory image its file's size and digest.

        Raises:
            CheckpointError: naming the first problem found (and the file).
        """
        path = Path(directory)
        cpt = path / CPT_FILE
        if not path.is_dir():
            raise CheckpointError(f"checkpoint {path}: not a directory")
        try:
            text = cpt.read_bytes().decode("utf-8")
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {path}: no {CPT_FILE}") from None
        except (OSError, UnicodeDecodeError) as err:
            raise CheckpointError(f"checkpoint {path}: cannot read {CPT_FILE}: {err}") from err
        body, digest = _split_digest(text)
        if body is None:
            found = re.search(r"^format_version=(\d+)\s*$", text, re.M)
            if found and int(found.group(1)) != FORMAT_VERSION:
                raise CheckpointError(
                    f"checkpoint {path}: format version {found.group(1)} is not supported "
                    f"(this kvmcpu reads version {FORMAT_VERSION})"
                )
            raise CheckpointError(f"checkpoint {path}: {CPT_FILE} is incomplete (truncated?): "
                                  f"its last line is not {DIGEST_KEY}=")
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != digest:
            raise CheckpointError(
                f"checkpoint {path}: {CPT_FILE} was changed after it was written (its SHA-256 "
                f"does not match its {DIGEST_KEY} line; after a deliberate edit, "
                f"kvmcpu.sim.checkpoint.reseal() accepts it)"
            )
        text = body
        sections = _parse_ini(text, str(path))
        manifest_values = sections.pop(MANIFEST_SECTION, None)
        if manifest_values is None:
            raise CheckpointError(f"checkpoint {path}: no [{MANIFEST_SECTION}] manifest section")
        manifest = SectionIn(MANIFEST_SECTION, manifest_values, str(path))
        version = manifest.get_int("format_version")
        if version != FORMAT_VERSION:
            raise CheckpointError(
                f"checkpoint {path}: format version {version} is not supported "
                f"(this kvmcpu reads version {FORMAT_VERSION})"
            )
        if not manifest.has("complete") or manifest.get_bool("complete") is not True:
            raise CheckpointError(f"checkpoint {path}: {CPT_FILE} is incomplete (truncated?)")
        for name in manifest.get_list("sections", str):
            if name not in sections:
                raise CheckpointError(f"checkpoint {path}: section [{name}] is missing")
        images: Dict[str, Dict[str, str]] = {}
        for name in manifest.get_list("images", str):
            prefix = f"image.{name}."
            info = {
                "file": manifest.get_str(prefix + "file"),
                "size": str(manifest.get_int(prefix + "size")),
                "compression": manifest.get_str(prefix + "compression"),
                "data_size": str(manifest.get_int(prefix + "data_size")),
                "stored_size": str(manifest.get_int(prefix + "stored_size")),
                "stored_sha256": manifest.get_str(prefix + "stored_sha256"),
            }
            images[name] = info
            cls._verify_image(path, name, info)
        unknown = manifest.unused()
        if unknown:
            warnings.warn(
                f"checkpoint {path}: unknown manifest keys ignored: {', '.join(unknown)}",
                UnknownCheckpointKeyWarning,
                stacklevel=2,
            )
        return cls(path, sections, images)

    @staticmethod
    def _image_path(directory: Path, name: str, info: Dict[str, str]) -> Path:
        file = info["file"]
        if "/" in file or "\\" in file or file in (".", "..") or not file:
            raise CheckpointError(f"checkpoint {directory}: image {name}: bad file name {file!r}")
        if info["compression"] not in COMPRESSIONS:
            raise CheckpointError(
                f"checkpoint {directory}: image {name}: unknown compression "
                f"{info['compression']!r}"
            )
        return directory / file

    @classmethod
    def _verify_image(cls, directory: Path, name: str, info: Dict[str, str]) -> None:
        file = cls._image_path(directory, name, info)
        where = f"checkpoint {directory}: image {name} ({info['file']})"
        try:
            stored = file.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{where}: file is missing") from None
        if stored != int(info["stored_size"]):
            raise CheckpointError(
                f"{where}: file is {stored} bytes, manifest says {info['stored_size']} (truncated?)"
            )
        sha = hashlib.sha256()
        with open(file, "rb") as f:
            for chunk in iter(lambda: f.read(_CHUNK), b""):
                sha.update(chunk)
        if sha.hexdigest() != info["stored_sha256"]:
            raise CheckpointError(f"{where}: SHA-256 of the file does not match the manifest "
                                  f"(the file was changed after it was written)")
        if int(info["data_size"]) > int(info["size"]):
            raise CheckpointError(f"{where}: holds more data than its size")

    # -- sections ------------------------------------------------------------------
    def sections(self) -> List[str]:
        """Section paths, in file order (the manifest excluded)."""
        return list(self._sections)

    def has_section(self, path: str) -> bool:
        """True when the checkpoint has section ``path``."""
        return path in self._sections

    def section(self, path: str) -> SectionIn:
        """The section ``path``.

        Raises:
            CheckpointError: there is no such section.
        """
        try:
            sec = self._sections[path]
        except KeyError:
            raise CheckpointError(
                f"checkpoint {self.directory}: section [{path}] is missing"
            ) from None
        self._opened.add(path)
        return sec

    def unopened_sections(self) -> List[str]:
        """Sections nobody asked for (objects that no longer exist, or unknown extras)."""
        return [p for p in self._sections if p not in self._opened]

    @property
    def current(self) -> SectionIn:
        """The section in scope (see :meth:`scope`)."""
        return self.section(self.current_path)

    def param_in(self, key: str, kind: type[T]) -> T:
        """The value of ``key`` in the current section, parsed as ``kind``."""
        return self.current.get(key, kind)

    def unused_keys(self) -> List[Tuple[str, str]]:
        """``(section, key)`` pairs nobody read; sections never opened list every key."""
        return [(p, k) for p, s in self._sections.items() for k in s.unused()]

    def warn_unused(self) -> List[Tuple[str, str]]:
        """Warn (:class:`UnknownCheckpointKeyWarning`) about unread keys; returns them."""
        unused = self.unused_keys()
        if unused:
            shown = ", ".join(f"[{p}] {k}" for p, k in unused[:10])
            more = f" and {len(unused) - 10} more" if len(unused) > 10 else ""
            warnings.warn(
                f"checkpoint {self.directory}: unknown keys ignored: {shown}{more}",
                UnknownCheckpointKeyWarning,
                stacklevel=2,
            )
        return unused

    # -- memory images -------------------------------------------------------------
    def image_names(self) -> List[str]:
        """The memory image names."""
        return list(self._images)

    def image_size(self, name: str) -> int:
        """The raw (uncompressed) size of image ``name``."""
        return int(self._image_info(name)["size"])

    def _image_info(self, name: str) -> Dict[str, str]:
        try:
            return self._images[name]
        except KeyError:
            raise CheckpointError(
                f"checkpoint {self.directory}: no memory image {name!r} "
                f"(has: {', '.join(self._images) or 'none'})"
            ) from None

    def memory_image(self, name: str) -> bytes:
        """The raw bytes of memory image ``name`` (digest checked again)."""
        buf = bytearray(self.image_size(name))
        self.read_into(name, buf)
        return bytes(buf)

    def image_data_size(self, name: str) -> int:
        """How many bytes of image ``name`` are stored (its non-zero pages)."""
        return int(self._image_info(name)["data_size"])

    def read_into(self, name: str, buffer: Buffer, *,
                  extents: Optional[Extents] = None) -> None:
        """Fill ``buffer`` (exactly the image's size) with memory image ``name``.

        Args:
            name: the image.
            buffer: the writable destination.
            extents: where ``buffer`` may already hold non-zero bytes
                (:meth:`kvmcpu.hostmem.HostMemory.data_extents`): only there are
                the image's zero pages written (default: everywhere).

        Raises:
            CheckpointError: size mismatch, or the file changed since :meth:`load`
                (then the buffer's contents are undefined).
        """
        info = self._image_info(name)
        view = memoryview(buffer).cast("B")
        where = f"checkpoint {self.directory}: image {name} ({info['file']})"
        if view.readonly:
            raise CheckpointError(f"{where}: the destination buffer is read-only")
        if view.nbytes != int(info["size"]):
            raise CheckpointError(
                f"{where}: is {info['size']} bytes, the destination holds {view.nbytes}"
            )
        file = self._image_path(self.directory, name, info)
        memimage.read_image(file, info, view, where, extents)


def param_in(cp: CheckpointIn, key: str, kind: type[T]) -> T:
    """gem5's UNSERIALIZE_SCALAR: ``key`` of the current section parsed as ``kind``."""
    return cp.param_in(key, kind)
