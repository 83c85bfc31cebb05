"""Checkpoints: written by ``kvmcpu run --checkpoint-dir`` when the guest asks (m5
checkpoint), continued by ``kvmcpu run --restore`` on the same or the other backend;
and System.restore refusing damaged checkpoints without leaking anything."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Callable, List

import pytest
from system_helpers import (
    CHECKPOINT_AFTER,
    CHECKPOINT_BEFORE,
    guest,
)

from kvmcpu import cli
from kvmcpu.backends.base import open_objects
from kvmcpu.errors import CheckpointError
from kvmcpu.sim.checkpoint import CheckpointIn, reseal
from kvmcpu.system import CAUSE_HALTED, System

PAIRS = [
    pytest.param("kvm", "kvm", marks=pytest.mark.kvm, id="kvm-kvm"),
    pytest.param("mock", "mock", id="mock-mock"),
    pytest.param("kvm", "mock", marks=pytest.mark.kvm, id="kvm-mock"),
    pytest.param("mock", "kvm", marks=pytest.mark.kvm, id="mock-kvm"),
]


def _checkpoints(directory: Path) -> List[Path]:
    return sorted(p for p in directory.glob("cpt.*") if p.is_dir())


@pytest.mark.parametrize("writer, reader", PAIRS)
def test_cli_checkpoint_then_restore(writer: str, reader: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # a stray default m5out/ lands here
    cpt_dir = tmp_path / "D"
    status = cli.main(["run", guest("checkpoint.bin"), "--backend", writer, "--memory", "16M",
                       "--checkpoint-dir", str(cpt_dir), "--timeout", "20", "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 1
    assert out == (CHECKPOINT_BEFORE + CHECKPOINT_AFTER).decode()
    (cpt,) = _checkpoints(cpt_dir)
    assert re.fullmatch(r"cpt\.\d+", cpt.name)
    assert f"checkpoint written to {cpt}" in err
    assert (cpt / "m5.cpt").is_file()

    # IMAGE is optional with --restore (and ignored when given).
    status = cli.main(["run", "--restore", str(cpt), "--backend", reader, "--timeout", "20",
                       "--no-progress"])
    out, err = capsys.readouterr()
    assert status == 1
    assert out == CHECKPOINT_AFTER.decode()
    assert err == ""


def test_cli_restore_with_image_says_it_is_ignored(tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    cpt = _small_checkpoint(tmp_path)
    status = cli.main(["run", "--restore", str(cpt), guest("hello.bin"), "--backend", "mock",
                       "--no-progress"])
    _, err = capsys.readouterr()
    assert status == 0  # the restored guest halts with interrupts off
    assert "hello.bin is not loaded" in err


def test_cli_restore_of_a_damaged_checkpoint_is_status_2(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cpt = _small_checkpoint(tmp_path)
    (cpt / "m5.cpt").write_text("garbage\n")
    status = cli.main(["run", "--restore", str(cpt), "--backend", "mock"])
    _, err = capsys.readouterr()
    assert status == 2
    assert err.startswith("kvmcpu run: checkpoint ") and len(err.splitlines()) == 1
    assert not open_objects


# --------------------------------------------------------------- System.restore failures
#: The guest: a few instructions, then cli; hlt (real mode at 0x7c00).
SMALL_GUEST = bytes.fromhex("b8 34 12 bb 78 56 fa f4")  # mov ax,0x1234; mov bx,0x5678; cli; hlt


def _small_checkpoint(tmp_path: Path) -> Path:
    with System(memory="1M", backend="mock") as system:
        system.load(SMALL_GUEST, fmt="flat")
        assert system.run(timeout=20).cause == CAUSE_HALTED
        return system.checkpoint(tmp_path / "cpt.small")


def _edit_cpt(pattern: str, replacement: str, *, seal: bool = True) -> Callable[[Path], None]:
    """An edit of m5.cpt; ``seal``: made deliberately (resealed), to test the checks
    after the digest; unsealed, the digest itself refuses it."""
    def edit(cpt: Path) -> None:
        path = cpt / "m5.cpt"
        text = path.read_text()
        new = re.sub(pattern, replacement, text, count=1, flags=re.M)
        assert new != text, pattern
        path.write_text(new)
        if seal:
            reseal(cpt)
    return edit


def _truncate_image(cpt: Path) -> None:
    (image,) = cpt.glob("*.pmem.chunks")
    with image.open("r+b") as f:
        f.truncate(f.seek(0, 2) - 1)


def _remove_image(cpt: Path) -> None:
    for image in cpt.glob("*.pmem.chunks"):
        image.unlink()


def _flip_image_byte(cpt: Path) -> None:
    (image,) = cpt.glob("*.pmem.chunks")
    data = bytearray(image.read_bytes())
    data[len(data) // 2] ^= 1
    image.write_bytes(bytes(data))


DAMAGE = {
    "garbage m5.cpt": lambda cpt: (cpt / "m5.cpt").write_text("garbage\n"),
    "empty m5.cpt": lambda cpt: (cpt / "m5.cpt").write_text(""),
    "no m5.cpt": lambda cpt: (cpt / "m5.cpt").unlink(),
    "truncated m5.cpt": _edit_cpt(r"^complete=true\n?", ""),
    "memory not a number": _edit_cpt(r"^memory=\d+", "memory=lots"),
    "memory zero": _edit_cpt(r"^memory=\d+", "memory=0"),
    "memory too small for the image": _edit_cpt(r"^memory=\d+", "memory=524288"),
    "two CPUs": _edit_cpt(r"^smp=1", "smp=2"),
    "bad irqchip": _edit_cpt(r"^irqchip=\w+", "irqchip=maybe"),
    "irqchip on, restored on the mock": _edit_cpt(r"^irqchip=\w+", "irqchip=on"),
    "regions moved": _edit_cpt(r"^regions=0$", "regions=4096"),
    "cpu section missing": _edit_cpt(r"^\[system\.cpu0\]$", "[system.cpuX]"),
    "uart key missing": _edit_cpt(r"^lsr=\d+\n", ""),
    "memory image truncated": _truncate_image,
    "memory image missing": _remove_image,
    "memory image byte flipped": _flip_image_byte,
    "rbx changed, not resealed": _edit_cpt(r"^rbx=(\d+)", r"rbx=1\1", seal=False),
    "a comment added, not resealed": _edit_cpt(r"^\[Globals\]", "# hi\n[Globals]", seal=False),
    "CR0 reserved bits set": _edit_cpt(r"^cr0=(\d+)", r"cr0=4294967296\1"),  # SET_SREGS refuses
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_restore_of_a_damaged_checkpoint(damage: str, tmp_path: Path) -> None:
    good = _small_checkpoint(tmp_path)
    bad = tmp_path / "bad"
    shutil.copytree(good, bad)
    DAMAGE[damage](bad)
    before = len(open_objects)
    with pytest.raises(CheckpointError):
        System.restore(bad, backend="mock")
    assert len(open_objects) == before  # no VM, vCPU or backend left open


def test_restore_of_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        System.restore(tmp_path / "nothing", backend="mock")


def test_restore_refuses_settings_that_come_from_the_checkpoint(tmp_path: Path) -> None:
    cpt = _small_checkpoint(tmp_path)
    with pytest.raises(TypeError, match="memory"):
        System.restore(cpt, backend="mock", memory="2M")


def test_restore_keeps_registers_and_tick(tmp_path: Path) -> None:
    cpt = _small_checkpoint(tmp_path)
    with System.restore(cpt, backend="mock") as system:
        assert system.eventq.cur_tick > 0
        tc = system.cpu.getContext()
        assert (tc.rax & 0xFFFF, tc.rbx & 0xFFFF) == (0x1234, 0x5678)
        assert system.run(timeout=20).cause == CAUSE_HALTED


def test_restore_validates_the_checkpoint_once(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cpt = _small_checkpoint(tmp_path)
    loads: List[Path] = []
    real = CheckpointIn.load.__func__  # type: ignore[attr-defined]

    def load(cls: type, directory: Path) -> CheckpointIn:
        loads.append(Path(directory))
        return real(cls, directory)  # type: ignore[no-any-return]

    monkeypatch.setattr(CheckpointIn, "load", classmethod(load))
    with System.restore(cpt, backend="mock") as system:
        assert system.cpu.getContext().rax & 0xFFFF == 0x1234
    assert loads == [cpt]
