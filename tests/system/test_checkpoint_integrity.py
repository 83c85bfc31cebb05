"""Checkpoints through the real ``kvmcpu`` entry point: an edited m5.cpt is refused
(status 2, naming the file), CPU state the backend refuses is the checkpoint's
fault (status 2, naming the field), and a run SIGKILLed while it writes a
checkpoint over an earlier one leaves the earlier one intact and restorable."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
from system_helpers import CHECKPOINT_AFTER, CHECKPOINT_BEFORE, guest

from kvmcpu.errors import CheckpointError
from kvmcpu.sim.checkpoint import CheckpointIn, reseal
from kvmcpu.system import System

REPO = Path(__file__).resolve().parents[2]
BACKENDS = [pytest.param("mock", id="mock"), pytest.param("kvm", marks=pytest.mark.kvm, id="kvm")]


def kvmcpu(*args: str, cwd: Path, pre: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m kvmcpu ARGS``; ``pre``: Python run first in the same process."""
    code = f"{pre}\nimport sys\nfrom kvmcpu import cli\nsys.exit(cli.main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=_env())


def _env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def write_checkpoint_of_guest(tmp_path: Path, memory: str = "16M", backend: str = "mock",
                              pre: str = "", extra: tuple[str, ...] = ()
                              ) -> subprocess.CompletedProcess[str]:
    return kvmcpu("run", guest("checkpoint.bin"), "--backend", backend, "--memory", memory,
                  "--checkpoint-dir", str(tmp_path / "D"), "--timeout", "60", "--no-progress",
                  *extra, cwd=tmp_path, pre=pre)


def only_checkpoint(tmp_path: Path) -> Path:
    (cpt,) = [p for p in (tmp_path / "D").iterdir() if p.name.startswith("cpt.")]
    return cpt


def restore(cpt: Path, backend: str = "mock") -> subprocess.CompletedProcess[str]:
    return kvmcpu("run", "--restore", str(cpt), "--backend", backend, "--timeout", "60",
                  "--no-progress", cwd=cpt.parent)


@pytest.fixture(scope="module")
def guest_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("guest")
    done = write_checkpoint_of_guest(tmp)
    assert done.returncode == 1, done.stderr
    assert done.stdout == (CHECKPOINT_BEFORE + CHECKPOINT_AFTER).decode()
    return only_checkpoint(tmp)


def edited(src: Path, dst: Path, pattern: str, repl: str) -> Path:
    shutil.copytree(src, dst)
    f = dst / "m5.cpt"
    text = f.read_text()
    new = re.sub(pattern, repl, text, count=1, flags=re.M)
    assert new != text
    f.write_text(new)
    return dst


# ----------------------------------------------------------------- item 3: m5.cpt covered
@pytest.mark.parametrize("pattern, repl", [
    (r"^rbx=5050$", "rbx=5040"),  # restored "fine" before: the guest printed sum=5040
    (r"^rip=(\d+)$", lambda m: f"rip={int(m.group(1)) + 1}"),
], ids=["rbx", "rip+1"])
def test_an_edited_m5cpt_is_refused_with_status_2(guest_checkpoint: Path, tmp_path: Path,
                                                  pattern: str, repl: object) -> None:
    bad = edited(guest_checkpoint, tmp_path / "bad", pattern, repl)  # type: ignore[arg-type]
    done = restore(bad)
    assert done.returncode == 2
    assert done.stdout == ""  # the guest did not run
    assert done.stderr == (f"kvmcpu run: checkpoint {bad}: m5.cpt was changed after it was "
                           f"written (its SHA-256 does not match its m5cpt_sha256 line; after "
                           f"a deliberate edit, kvmcpu.sim.checkpoint.reseal() accepts it)\n")


def test_a_changed_memory_image_byte_is_refused_naming_the_file(guest_checkpoint: Path,
                                                                tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    shutil.copytree(guest_checkpoint, bad)
    (image,) = bad.glob("*.pmem.chunks")
    data = bytearray(image.read_bytes())
    data[-40] ^= 0x01
    image.write_bytes(bytes(data))
    done = restore(bad)
    assert done.returncode == 2
    assert f"image system.physmem.region0 ({image.name}): SHA-256 of the file" in done.stderr


# ----------------------------------------------------------------- item 15: refused CPU state
@pytest.mark.parametrize("backend", BACKENDS)
def test_cpu_state_the_backend_refuses_is_the_checkpoints_fault(
        guest_checkpoint: Path, tmp_path: Path, backend: str) -> None:
    # A flipped cr0 digit (long mode without paging), made deliberately (resealed).
    text = (guest_checkpoint / "m5.cpt").read_text()
    assert "\ncr0=2147483665\n" in text
    bad = edited(guest_checkpoint, tmp_path / "bad", r"^cr0=2147483665$", "cr0=1147483665")
    reseal(bad)
    done = restore(bad, backend)
    assert done.returncode == 2, done.stderr
    assert done.stderr == (f"kvmcpu run: checkpoint {bad}: the CPU state in "
                           f"[system.cpu0.xc.0] is refused by the {backend} backend: "
                           f"KVM_SET_SREGS (EFER.LMA without CR0.PG): Invalid argument\n")


# ----------------------------------------------------------------- item 13: the path named
def test_checkpoint_into_an_unwritable_place_names_that_place(tmp_path: Path) -> None:
    with System(memory="1M", backend="mock") as system:
        system.load(bytes.fromhex("fa f4"), fmt="flat")  # cli; hlt
        system.run(timeout=20)
        with pytest.raises(CheckpointError) as info:
            system.checkpoint("/proc/x")
    message = str(info.value)
    assert message.startswith("cannot write checkpoint /proc/x: creating a directory in /proc: ")
    assert ".tmp-" not in message and ".x." not in message


def test_checkpoint_under_a_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with System(memory="1M", backend="mock") as system:
        system.load(bytes.fromhex("fa f4"), fmt="flat")
        system.run(timeout=20)
        with pytest.raises(CheckpointError) as info:
            system.checkpoint(tmp_path / "f" / "sub" / "cpt.1")
    assert str(info.value) == (f"cannot write checkpoint {tmp_path}/f/sub/cpt.1: "
                               f"{tmp_path}/f is not a directory")
    assert (tmp_path / "f").read_text() == "x"


# ----------------------------------------------------------------- SIGKILL while writing
#: Python run in the writer before the CLI: SIGKILL itself at one point of the write.
KILL_HOOKS = {
    # after the first record of the RAM image is written (the file is half-written)
    "image": """
import os, signal
from kvmcpu.sim import memimage
real = memimage._HashingWriter.write
def write(self, data):
    real(self, data)
    if self.size > memimage._HEADER.size:
        self.f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
memimage._HashingWriter.write = write
""",
    # m5.cpt written and fsync'ed in the temporary directory, not yet moved into place
    "m5.cpt": """
import os, signal
from kvmcpu.sim import checkpoint
real = checkpoint._fsync_dir
def fsync_dir(path):
    real(path)
    if path.name.startswith(".cpt."):
        os.kill(os.getpid(), signal.SIGKILL)
checkpoint._fsync_dir = fsync_dir
""",
    # the new checkpoint swapped into place, the old one not deleted yet
    "swap": """
import os, signal
from kvmcpu.sim import checkpoint
real = checkpoint._exchange
def exchange(a, b):
    assert real(a, b)
    os.kill(os.getpid(), signal.SIGKILL)
checkpoint._exchange = exchange
""",
}


@pytest.mark.parametrize("when", list(KILL_HOOKS))
def test_sigkill_during_a_checkpoint_write_keeps_the_previous_one(tmp_path: Path,
                                                                  when: str) -> None:
    first = write_checkpoint_of_guest(tmp_path, memory="16M")
    assert first.returncode == 1, first.stderr
    cpt = only_checkpoint(tmp_path)
    before = {p.name: p.read_bytes() for p in cpt.iterdir()}

    # The same guest with more RAM: the same tick, so the same cpt.TICK, overwritten.
    killed = write_checkpoint_of_guest(tmp_path, memory="32M", pre=KILL_HOOKS[when])
    assert killed.returncode == -signal.SIGKILL
    assert killed.stdout == CHECKPOINT_BEFORE.decode()  # it died at the checkpoint
    left: List[str] = sorted(p.name for p in (tmp_path / "D").iterdir())
    assert left[-1] == cpt.name and all(n.startswith(f".{cpt.name}.tmp-") for n in left[:-1])

    loaded = CheckpointIn.load(cpt)  # verifies every file
    memory = loaded.section("system").get_int("memory")
    if when == "swap":
        assert memory == 32 << 20  # the new one was complete when it took the place
    else:
        assert memory == 16 << 20
        assert {p.name: p.read_bytes() for p in cpt.iterdir()} == before
    done = restore(cpt)
    assert (done.returncode, done.stdout, done.stderr) == (1, CHECKPOINT_AFTER.decode(), "")

    # The next write over it works, leftovers or not.
    again = write_checkpoint_of_guest(tmp_path, memory="16M")
    assert again.returncode == 1, again.stderr
    assert CheckpointIn.load(cpt).section("system").get_int("memory") == 16 << 20


# ----------------------------------------------------------------- item 4: --checkpoint-compression
@pytest.mark.parametrize("compression", ["none", "zlib", "zstd"])
def test_checkpoint_compression_choices_restore(tmp_path: Path, compression: str) -> None:
    if compression == "zstd":
        pytest.importorskip("zstandard")
    done = write_checkpoint_of_guest(tmp_path, memory="64M",
                                     extra=("--checkpoint-compression", compression))
    assert done.returncode == 1, done.stderr
    cpt = only_checkpoint(tmp_path)
    loaded = CheckpointIn.load(cpt)
    name = "system.physmem.region0"
    assert loaded.image_size(name) == 64 << 20
    # The guest touched a few pages of its 64 MiB: only those are stored.
    assert loaded.image_data_size(name) < 64 << 10
    assert (cpt / f"{name}.pmem.chunks").stat().st_size < 64 << 10
    assert f"image.{name}.compression={compression}\n" in (cpt / "m5.cpt").read_text()
    done = restore(cpt)
    assert (done.returncode, done.stdout) == (1, CHECKPOINT_AFTER.decode())


def test_zstd_without_its_package_is_refused_up_front(tmp_path: Path) -> None:
    done = write_checkpoint_of_guest(tmp_path, extra=("--checkpoint-compression", "zstd"),
                                     pre="import sys; sys.modules['zstandard'] = None")
    assert done.returncode == 2
    assert done.stdout == ""  # refused before the guest ran
    assert done.stderr == ("kvmcpu run: --checkpoint-compression: checkpoint compression "
                           "'zstd' needs the optional 'zstandard' package (pip install "
                           "'kvmcpu[zstd]'); use 'zlib' or 'none'\n")
