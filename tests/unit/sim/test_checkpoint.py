"""Checkpoint directories: round trips, atomic writes, validation of damaged checkpoints."""

from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from kvmcpu.errors import CheckpointError
from kvmcpu.sim import checkpoint as ckpt
from kvmcpu.sim import memimage
from kvmcpu.sim.checkpoint import (
    CPT_FILE,
    CheckpointIn,
    CheckpointOut,
    UnknownCheckpointKeyWarning,
    encode_value,
    param_in,
    param_out,
    reseal,
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
    for comp in ("none", "zlib"):
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
    for comp in ("none", "zlib"):
        assert cp.image_size(f"ram_{comp}") == len(RAM)
        assert cp.memory_image(f"ram_{comp}") == RAM
        buf = bytearray(b"\xff" * len(RAM))  # the zero pages not stored are zeroed
        cp.read_into(f"ram_{comp}", buf)
        assert buf == RAM
        # The 8 KiB of zero pages are not stored; the partial last page is.
        assert cp.image_data_size(f"ram_{comp}") == len(RAM) - 8192
    assert sorted(cp.image_names()) == ["ram_none", "ram_zlib"]
    none = (target / "ram_none.pmem.chunks").stat().st_size
    zlib_size = (target / "ram_zlib.pmem.chunks").stat().st_size
    assert none < len(RAM) - 8192 + 200  # raw records: data plus a few headers
    assert zlib_size < none // 2  # the repeated 0..255 compresses


def test_m5cpt_is_gem5_style_ini(tmp_path: Path) -> None:
    target = write_checkpoint(tmp_path / "c", make_cp())
    text = (target / CPT_FILE).read_text()
    assert "\n[Globals]\ncurTick=123456\n" in text
    assert "\n[system.cpu0]\nrax=18446744073709551615\nhalted=false\n" in text
    assert "msrs=16 3221225600\n" in text
    assert text.index("[Globals]") < text.index("[system.cpu0]") < text.index("[kvmcpu]")
    body, _, last = text.rstrip("\n").rpartition("\n")
    assert body.endswith("\ncomplete=true")
    assert last == "m5cpt_sha256=" + hashlib.sha256((body + "\n").encode()).hexdigest()
    assert "format_version=2\n" in text


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
    assert not (target / "ram_none.pmem.chunks").exists()
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
    real = memimage.write_image

    def failing(path: Path, *args: Any) -> Dict[str, str]:
        calls.append(path)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(path))
        return real(path, *args)

    monkeypatch.setattr(memimage, "write_image", failing)
    with pytest.raises(CheckpointError) as info:
        write_checkpoint(tmp_path / "cpt", make_cp())
    # The message names the checkpoint the caller asked for, not the temporary directory.
    assert str(info.value) == (f"cannot write checkpoint {tmp_path / 'cpt'}: writing "
                               f"ram_zlib.pmem.chunks: No space left on device")
    assert list(tmp_path.iterdir()) == []
    # An old checkpoint survives a failed overwrite untouched.
    monkeypatch.setattr(memimage, "write_image", real)
    write_checkpoint(tmp_path / "cpt", make_cp())
    calls.clear()
    monkeypatch.setattr(memimage, "write_image", failing)
    with pytest.raises(CheckpointError):
        write_checkpoint(tmp_path / "cpt", make_cp(), overwrite=True)
    assert CheckpointIn.load(tmp_path / "cpt").memory_image("ram_none") == RAM
    assert [p.name for p in tmp_path.iterdir()] == ["cpt"]


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return write_checkpoint(tmp_path / "cpt", make_cp())


def edit_cpt(path: Path, old: str, new: str, *, seal: bool = True) -> None:
    """Edit m5.cpt; ``seal``: accept the edit (reseal), to test what is checked next."""
    f = path / CPT_FILE
    text = f.read_text()
    assert old in text
    f.write_text(text.replace(old, new, 1))
    if seal:
        reseal(path)


IMAGES = ["ram_none.pmem.chunks", "ram_zlib.pmem.chunks"]


@pytest.mark.parametrize("image", IMAGES)
def test_truncated_image(saved: Path, image: str) -> None:
    f = saved / image
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"image ram_\w+ .*truncated"):
        CheckpointIn.load(saved)


@pytest.mark.parametrize("image", IMAGES)
def test_flipped_byte(saved: Path, image: str) -> None:
    f = saved / image
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"\({image}\): SHA-256 of the file"):
        CheckpointIn.load(saved)


def test_repaired_image_digest_is_caught_by_the_m5cpt_digest(saved: Path) -> None:
    # Someone "repairs" the image's digest in m5.cpt: m5.cpt's own digest catches it.
    f = saved / "ram_none.pmem.chunks"
    data = bytearray(f.read_bytes())
    data[100] ^= 1
    f.write_bytes(bytes(data))
    text = (saved / CPT_FILE).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("image.ram_none.stored_sha256="))
    edit_cpt(saved, line, "image.ram_none.stored_sha256=" + hashlib.sha256(data).hexdigest(),
             seal=False)
    with pytest.raises(CheckpointError, match="m5.cpt was changed after it was written"):
        CheckpointIn.load(saved)


@pytest.mark.parametrize("old, new", [
    ("rax=18446744073709551615", "rax=18446744073709551614"),  # one digit
    ("[system.cpu0]", "[system.cpu1]"),
    ("complete=true", "complete=True"),
])
def test_any_edit_of_m5cpt_is_refused(saved: Path, old: str, new: str) -> None:
    edit_cpt(saved, old, new, seal=False)
    with pytest.raises(CheckpointError, match=rf"checkpoint {saved}: m5.cpt was changed"):
        CheckpointIn.load(saved)


def test_an_edited_digest_line_is_refused(saved: Path) -> None:
    f = saved / CPT_FILE
    text = f.read_text()
    f.write_text(text[:-3] + ("0" if text[-3] != "0" else "1") + text[-2:])
    with pytest.raises(CheckpointError, match="m5.cpt was changed"):
        CheckpointIn.load(saved)


def test_missing_image_file(saved: Path) -> None:
    (saved / "ram_zlib.pmem.chunks").unlink()
    with pytest.raises(CheckpointError, match="ram_zlib.*missing"):
        CheckpointIn.load(saved)


def test_missing_section(saved: Path) -> None:
    edit_cpt(saved, "[system.cpu0.xc]\ndepth=-3\n", "")
    with pytest.raises(CheckpointError, match=r"section \[system.cpu0.xc\] is missing"):
        CheckpointIn.load(saved)


def test_wrong_version(saved: Path) -> None:
    edit_cpt(saved, "format_version=2", "format_version=3")
    with pytest.raises(CheckpointError, match="format version 3 is not supported"):
        CheckpointIn.load(saved)


def test_format_version_1_is_refused_by_name(saved: Path) -> None:
    # Version 1 (whole-RAM images, no m5.cpt digest) had no digest line.
    f = saved / CPT_FILE
    body = f.read_text().rstrip("\n").rpartition("\n")[0] + "\n"
    f.write_text(body.replace("format_version=2", "format_version=1"))
    with pytest.raises(CheckpointError, match=r"format version 1 is not supported \(this "
                                              r"kvmcpu reads version 2\)"):
        CheckpointIn.load(saved)


def test_truncated_m5cpt(saved: Path) -> None:
    f = saved / CPT_FILE
    text = f.read_text()
    f.write_text(text[: text.index("complete=true")])
    with pytest.raises(CheckpointError, match="incomplete"):
        CheckpointIn.load(saved)
    f.write_text(text[: text.index("[kvmcpu]")])
    with pytest.raises(CheckpointError, match="incomplete"):
        CheckpointIn.load(saved)
    body = text.rstrip("\n").rpartition("\n")[0] + "\n"
    f.write_text(ckpt._seal(body[: body.index("[kvmcpu]")]))
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


def test_hand_edited_value_is_accepted_only_once_resealed(saved: Path) -> None:
    edit_cpt(saved, "rax=18446744073709551615", "rax=0x10", seal=False)
    with pytest.raises(CheckpointError, match="reseal"):
        CheckpointIn.load(saved)
    reseal(saved)
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
    edit_cpt(saved, "format_version=2\n", "format_version=2\nsigned_by=nobody\n")
    with pytest.warns(UnknownCheckpointKeyWarning, match="signed_by"):
        CheckpointIn.load(saved)


def test_image_file_may_not_escape(saved: Path) -> None:
    edit_cpt(saved, "image.ram_none.file=ram_none.pmem.chunks", "image.ram_none.file=../x")
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


# --------------------------------------------------------------- sparse, compressed images
def test_zero_pages_are_not_stored_and_gaps_are_zeroed(tmp_path: Path) -> None:
    ram = bytearray(64 << 20)
    pages = [0, 1, 2, 1000, (64 << 20) // 4096 - 1]
    for p in pages:
        ram[p * 4096 : p * 4096 + 13] = b"page %8d" % p
    for comp in ("none", "zlib"):
        cp = CheckpointOut(comp)
        cp.add_memory_image("ram", ram)
        target = write_checkpoint(tmp_path / comp, cp)
        loaded = CheckpointIn.load(target)
        assert loaded.image_data_size("ram") == len(pages) * 4096
        size = (target / "ram.pmem.chunks").stat().st_size
        assert size < (len(pages) * 4096 + 300 if comp == "none" else 1000)
        dirty = bytearray(b"\xaa" * len(ram))
        loaded.read_into("ram", dirty)
        assert dirty == ram


def test_extents_limit_what_is_read_and_what_is_zeroed(tmp_path: Path) -> None:
    ram = bytearray(1 << 20)
    ram[8192:8200] = b"in range"
    ram[65536:65544] = b"ignored!"  # outside the extents: taken as zero
    seen: List[Tuple[int, int]] = []

    def extents(start: int, length: int) -> Iterator[Tuple[int, int]]:
        seen.append((start, length))
        yield 4096, 8192

    cp = CheckpointOut()
    cp.add_memory_image("ram", ram, extents=extents)
    loaded = CheckpointIn.load(write_checkpoint(tmp_path / "c", cp))
    assert seen == [(0, 1 << 20)]
    assert loaded.memory_image("ram") == bytes(8192) + b"in range" + bytes((1 << 20) - 8200)
    # Restoring into a buffer that has data only where its extents say: only there
    # are zero pages written.
    dest = bytearray(b"\x55" * (1 << 20))
    loaded.read_into("ram", dest, extents=lambda start, length: [(0, 4096)])
    assert dest[:4096] == bytes(4096)
    assert dest[8192:8200] == b"in range"
    assert dest[4096:8192] == b"\x55" * 4096  # not data by its extents: left alone


def test_the_image_file_changed_after_load_is_noticed(saved: Path) -> None:
    cp = CheckpointIn.load(saved)
    f = saved / "ram_none.pmem.chunks"
    data = bytearray(f.read_bytes())
    data[200] ^= 1
    f.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="changed since the checkpoint was loaded"):
        cp.read_into("ram_none", bytearray(len(RAM)))


def test_a_malformed_record_is_refused_even_with_a_matching_digest(saved: Path) -> None:
    # The digest only proves the file is what was written; the reader checks the
    # structure too (a record reaching past the image's end).
    f = saved / "ram_none.pmem.chunks"
    data = bytearray(f.read_bytes())
    data[memimage._HEADER.size : memimage._HEADER.size + 8] = (1 << 40).to_bytes(8, "little")
    f.write_bytes(bytes(data))
    text = (saved / CPT_FILE).read_text()
    line = next(ln for ln in text.splitlines() if ln.startswith("image.ram_none.stored_sha256="))
    edit_cpt(saved, line, "image.ram_none.stored_sha256=" + hashlib.sha256(data).hexdigest())
    cp = CheckpointIn.load(saved)
    with pytest.raises(CheckpointError, match="record 0 at 0x10000000000.*malformed"):
        cp.read_into("ram_none", bytearray(len(RAM)))


def test_unknown_compression_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="unknown checkpoint compression 'gzip'"):
        CheckpointOut("gzip")
    with pytest.raises(ValueError, match="use one of none, zlib, zstd"):
        CheckpointOut().add_memory_image("ram", b"x", "lz4")


def test_zstd_without_zstandard_is_refused_clearly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(memimage, "_zstandard", lambda: None)
    with pytest.raises(CheckpointError, match=r"needs the optional 'zstandard' package "
                                              r"\(pip install 'kvmcpu\[zstd\]'\)"):
        CheckpointOut("zstd")


def test_zstd_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("zstandard")
    cp = CheckpointOut("zstd")
    cp.add_memory_image("ram", RAM)
    loaded = CheckpointIn.load(write_checkpoint(tmp_path / "z", cp))
    assert loaded.memory_image("ram") == RAM
    assert (tmp_path / "z" / "ram.pmem.chunks").read_bytes()[24:25] == b"\x02"  # the codec byte


def test_overwrite_swaps_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # With renameat2(RENAME_EXCHANGE) the target path never stops naming a checkpoint.
    target = write_checkpoint(tmp_path / "cpt", make_cp())
    real = ckpt._exchange
    states: List[bool] = []

    def exchange(a: Path, b: Path) -> bool:
        done = real(a, b)
        states.append(done)
        CheckpointIn.load(b)  # a complete checkpoint right after the swap
        return done

    monkeypatch.setattr(ckpt, "_exchange", exchange)
    write_checkpoint(target, make_cp(), overwrite=True)
    assert states == [True]
    assert [p.name for p in tmp_path.iterdir()] == ["cpt"]


def test_unsorted_overlapping_unaligned_extents_store_each_page_once(tmp_path: Path) -> None:
    ram = bytearray(os.urandom(16 * 4096))
    cp = CheckpointOut("none")
    cp.add_memory_image("ram", ram, extents=lambda start, length: [
        (9 * 4096 + 5, 100), (100, 3 * 4096), (2 * 4096, 4096), (8 * 4096, 2 * 4096)])
    loaded = CheckpointIn.load(write_checkpoint(tmp_path / "c", cp))
    want = bytearray(len(ram))
    for page in (0, 1, 2, 3, 8, 9):
        want[page * 4096 : (page + 1) * 4096] = ram[page * 4096 : (page + 1) * 4096]
    assert loaded.image_data_size("ram") == 6 * 4096
    assert loaded.memory_image("ram") == want
