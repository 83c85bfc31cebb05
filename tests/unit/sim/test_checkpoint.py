"""Checkpoint directories: round trips, atomic writes, validation of damaged checkpoints."""

from __future__ import annotations

import gzip
import os
import warnings
from pathlib import Path

import pytest

from kvmcpu.errors import CheckpointError
from kvmcpu.sim import checkpoint as ckpt
from kvmcpu.sim.checkpoint import (
    CPT_FILE,
    CheckpointIn,
    CheckpointOut,
    UnknownCheckpointKeyWarning,
    encode_value,
    param_in,
    param_out,
    write_checkpoint,
)

RAM = bytes(range(256)) * 64 + b"\x00" * 8192 + os.urandom(1024)


def make_cp() -> CheckpointOut:
    cp = CheckpointOut()
    with cp.scope("Globals"):
        cp.param_out("curTick", 123456)
    with cp.scope("system.cpu0"):
        param_out(cp, "rax", 0xFFFF_FFFF_FFFF_FFFF)
        cp.param_out("halted", False)
        cp.param_out("ratio", 0.1)
        cp.param_out("name", "cpu zero")
        cp.param_out("fxsave", bytes(range(16)))
        cp.param_out("msrs", [0x10, 0xC0000080])
        with cp.subsection("xc"):
            cp.param_out("depth", -3)
    cp.section("system.empty")
    for comp in ("none", "zlib", "gzip"):
        cp.add_memory_image(f"ram_{comp}", RAM, comp)
    return cp


def test_round_trip(tmp_path: Path) -> None:
    target = write_checkpoint(tmp_path / "cpt.1", make_cp())
    assert (target / CPT_FILE).is_file()
    cp = CheckpointIn.load(target)
    assert cp.sections() == ["Globals", "system.cpu0", "system.cpu0.xc", "system.empty"]
    s = cp.section("system.cpu0")
    assert s.get_int("rax") == 2**64 - 1
    assert s.get_bool("halted") is False
    assert s.get_float("ratio") == 0.1
    assert s.get_str("name") == "cpu zero"
    assert s.get_bytes("fxsave", 16) == bytes(range(16))
    assert s.get_int_list("msrs", 2) == [0x10, 0xC0000080]
    with cp.scope("system.cpu0"), cp.subsection("xc"):
        assert param_in(cp, "depth", int) == -3
        assert cp.current.path == "system.cpu0.xc"
    assert cp.section("system.empty").keys() == []
    for comp in ("none", "zlib", "gzip"):
        assert cp.image_size(f"ram_{comp}") == len(RAM)
        assert cp.memory_image(f"ram_{comp}") == RAM
        buf = bytearray(len(RAM))
        cp.read_into(f"ram_{comp}", buf)
        assert buf == RAM
    assert sorted(cp.image_names()) == ["ram_gzip", "ram_none", "ram_zlib"]
    assert (target / "ram_gzip.pmem.gz").read_bytes()[:2] == b"\x1f\x8b"
    assert gzip.decompress((target / "ram_gzip.pmem.gz").read_bytes()) == RAM


def test_m5cpt_is_gem5_style_ini(tmp_path: Path) -> None:
    target = write_checkpoint(tmp_path / "c", make_cp())
    text = (target / CPT_FILE).read_text()
    assert "\n[Globals]\ncurTick=123456\n" in text
    assert "\n[system.cpu0]\nrax=18446744073709551615\nhalted=false\n" in text
    assert "msrs=16 3221225600\n" in text
    assert text.index("[Globals]") < text.index("[system.cpu0]") < text.index("[kvmcpu]")
    assert text.endswith("complete=true\n")
    assert "format_version=1\n" in text


def test_encode_value_rules() -> None:
    assert encode_value(True) == "true"
    assert encode_value([1, 2, 3]) == "1 2 3"
    assert encode_value(b"\xab") == "ab"
    with pytest.raises(ValueError):
        encode_value("two\nlines")
    with pytest.raises(ValueError):
        encode_value(["has space"])
    with pytest.raises(TypeError):
        encode_value({"a": 1})


def test_refuses_overwrite_and_replaces_with_flag(tmp_path: Path) -> None:
    target = tmp_path / "cpt"
    write_checkpoint(target, make_cp())
    with pytest.raises(CheckpointError, match="already exists"):
        write_checkpoint(target, make_cp())
    cp2 = CheckpointOut()
    with cp2.scope("Globals"):
        cp2.param_out("curTick", 1)
    write_checkpoint(target, cp2, overwrite=True)
    loaded = CheckpointIn.load(target)
    assert loaded.section("Globals").get_int("curTick") == 1
    assert loaded.image_names() == []
    assert not (target / "ram_none.pmem").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["cpt"]  # no temporaries left


def test_refuses_to_overwrite_a_non_checkpoint(tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("x")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        write_checkpoint(precious, make_cp(), overwrite=True)
    assert (precious / "thesis.tex").read_text() == "x"


def test_interrupted_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = ckpt._write_image

    def failing(path: Path, data: memoryview, compression: str) -> dict[str, str]:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real(path, data, compression)

    monkeypatch.setattr(ckpt, "_write_image", failing)
    with pytest.raises(CheckpointError, match="No space left"):
        write_checkpoint(tmp_path / "cpt", make_cp())
    assert list(tmp_path.iterdir()) == []
    # An old checkpoint survives a failed overwrite untouched.
    monkeypatch.setattr(ckpt, "_write_image", real)
    write_checkpoint(tmp_path / "cpt", make_cp())
    calls.clear()
    monkeypatch.setattr(ckpt, "_write_image", failing)
    with pytest.raises(CheckpointError):
        write_checkpoint(tmp_path / "cpt", make_cp(), overwrite=True)
    assert CheckpointIn.load(tmp_path / "cpt").memory_image("ram_none") == RAM
    assert [p.name for p in tmp_path.iterdir()] == ["cpt"]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "cpt", make_cp())


def edit_cpt(path: Path, old: str, new: str) -> None:
    f = path / CPT_FILE
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("image", ["ram_none.pmem", "ram_zlib.pmem.zlib", "ram_gzip.pmem.gz"])
def test_truncated_image(saved: Path, image: str) -> None:
    f = saved / image
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"image ram_\w+ .*truncated"):
        CheckpointIn.load(saved)


@pytest.mark.parametrize("image", ["ram_none.pmem", "ram_zlib.pmem.zlib", "ram_gzip.pmem.gz"])
def test_flipped_byte(saved: Path, image: str) -> None:
    f = saved / image
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="SHA-256"):
        CheckpointIn.load(saved)


def test_flipped_byte_with_matching_stored_digest_is_caught_by_raw_digest(saved: Path) -> None:
    # Someone "repairs" the stored digest: the digest of the raw bytes still catches it.
    f = saved / "ram_none.pmem"
    data = bytearray(f.read_bytes())
    data[5] ^= 1
    f.write_bytes(bytes(data))
    import hashlib

    text = (saved / CPT_FILE).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("image.ram_none.stored_sha256="))
    edit_cpt(saved, line, "image.ram_none.stored_sha256=" + hashlib.sha256(data).hexdigest())
    with pytest.raises(CheckpointError, match="SHA-256 of the image"):
        CheckpointIn.load(saved)


def test_missing_image_file(saved: Path) -> None:
    (saved / "ram_zlib.pmem.zlib").unlink()
    with pytest.raises(CheckpointError, match="ram_zlib.*missing"):
        CheckpointIn.load(saved)


def test_missing_section(saved: Path) -> None:
    edit_cpt(saved, "[system.cpu0.xc]\ndepth=-3\n", "")
    with pytest.raises(CheckpointError, match=r"section \[system.cpu0.xc\] is missing"):
        CheckpointIn.load(saved)


def test_wrong_version(saved: Path) -> None:
    edit_cpt(saved, "format_version=1", "format_version=2")
    with pytest.raises(CheckpointError, match="format version 2 is not supported"):
        CheckpointIn.load(saved)


def test_truncated_m5cpt(saved: Path) -> None:
    f = saved / CPT_FILE
    text = f.read_text()
    f.write_text(text[: text.index("complete=true")])
    with pytest.raises(CheckpointError, match="incomplete"):
        CheckpointIn.load(saved)
    f.write_text(text[: text.index("[kvmcpu]")])
    with pytest.raises(CheckpointError, match="manifest"):
        CheckpointIn.load(saved)


def test_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a directory"):
        CheckpointIn.load(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no m5.cpt"):
        CheckpointIn.load(tmp_path)


def test_syntax_errors_name_the_line(saved: Path) -> None:
    edit_cpt(saved, "halted=false\n", "halted=false\ngarbage line\n")
    with pytest.raises(CheckpointError, match="line 9: expected key=value"):
        CheckpointIn.load(saved)


def test_duplicate_key_rejected(saved: Path) -> None:
    edit_cpt(saved, "halted=false\n", "halted=false\nhalted=true\n")
    with pytest.raises(CheckpointError, match=r"\[system.cpu0\] halted: appears twice"):
        CheckpointIn.load(saved)


def test_typed_getter_errors_name_section_and_key(saved: Path) -> None:
    cp = CheckpointIn.load(saved)
    s = cp.section("system.cpu0")
    with pytest.raises(CheckpointError, match=r"\[system.cpu0\] rbx: missing"):
        s.get_int("rbx")
    with pytest.raises(CheckpointError, match=r"\[system.cpu0\] name: cannot parse"):
        s.get_int("name")
    with pytest.raises(CheckpointError, match=r"\[system.cpu0\] name: cannot parse .* as bool"):
        s.get_bool("name")
    with pytest.raises(CheckpointError, match=r"\[system.cpu0\] fxsave: expected 512 bytes"):
        s.get_bytes("fxsave", 512)
    with pytest.raises(CheckpointError, match=r"\[system.cpu0\] msrs: expected 3 values"):
        s.get_int_list("msrs", 3)
    with pytest.raises(CheckpointError, match=r"section \[system.gpu\] is missing"):
        cp.section("system.gpu")
    with pytest.raises(CheckpointError, match="no memory image 'rom'"):
        cp.memory_image("rom")
    with pytest.raises(CheckpointError, match="destination holds 3"):
        cp.read_into("ram_none", bytearray(3))


def test_hand_edited_value_is_accepted(saved: Path) -> None:
    edit_cpt(saved, "rax=18446744073709551615", "rax=0x10")
    assert CheckpointIn.load(saved).section("system.cpu0").get_int("rax") == 16


def test_unknown_keys_are_accepted_with_a_warning(saved: Path) -> None:
    # Decision (documented in kvmcpu.sim.checkpoint): accept, as gem5 does, but warn.
    edit_cpt(saved, "halted=false\n", "halted=false\nfuture_feature=1\n")
    cp = CheckpointIn.load(saved)
    s = cp.section("system.cpu0")
    for key in ("rax", "halted", "ratio", "name", "fxsave", "msrs"):
        s.raw(key)
    unused = [u for u in cp.unused_keys() if u[0] == "system.cpu0"]
    assert unused == [("system.cpu0", "future_feature")]
    with pytest.warns(UnknownCheckpointKeyWarning, match="future_feature"):
        cp.warn_unused()


def test_unknown_manifest_key_warns_at_load(saved: Path) -> None:
    edit_cpt(saved, "format_version=1\n", "format_version=1\nsigned_by=nobody\n")
    with pytest.warns(UnknownCheckpointKeyWarning, match="signed_by"):
        CheckpointIn.load(saved)


def test_image_file_may_not_escape(saved: Path) -> None:
    edit_cpt(saved, "image.ram_none.file=ram_none.pmem", "image.ram_none.file=../x")
    with pytest.raises(CheckpointError, match="bad file name"):
        CheckpointIn.load(saved)


def test_reserved_and_invalid_names() -> None:
    cp = CheckpointOut()
    with pytest.raises(ValueError):
        cp.add_memory_image("../etc", b"x")
    with pytest.raises(ValueError):
        cp.add_memory_image("ram", b"x", "lz4")
    cp.add_memory_image("ram", b"x")
    with pytest.raises(ValueError):
        cp.add_memory_image("ram", b"x")
    with pytest.raises(ValueError):
        cp.section("bad section")
    with pytest.raises(ValueError):
        cp.section("ok").param_out("k=v", 1)
    with pytest.raises(CheckpointError):
        cp.param_out("no_scope", 1)
    cp.section("kvmcpu")
    with pytest.raises(CheckpointError, match="reserved"):
        write_checkpoint("/nonexistent/never", cp)


def test_no_warning_for_clean_checkpoint(saved: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CheckpointIn.load(saved)
