"""ThreadContext: lossless uapi conversions, modes, checkpoints, diff and dump."""

from __future__ import annotations

import ctypes
import random
import struct
from pathlib import Path
from typing import Any, Callable, Dict, List, Tuple, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kvmcpu import uapi
from kvmcpu.cpu.thread import (
    FXSAVE_SIZE,
    GPR_NAMES,
    MSR_IA32_TSC,
    SEGMENT_FIELDS,
    SEGMENT_NAMES,
    CpuidEntry,
    CpuMode,
    Segment,
    ThreadContext,
    VcpuEvents,
)
from kvmcpu.errors import CheckpointError
from kvmcpu.sim.checkpoint import CheckpointIn, CheckpointOut, reseal, write_checkpoint

S = TypeVar("S", bound=ctypes.Structure)
BOUNDED = settings(max_examples=50, deadline=None)

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFF_FFFF)
u64 = st.integers(0, 2**64 - 1)


def raw(obj: Any) -> bytes:
    return ctypes.string_at(ctypes.addressof(obj), ctypes.sizeof(obj))


def random_struct(cls: type, draw_bytes: bytes, zero: Tuple[Tuple[int, int], ...] = ()) -> Any:
    """A ``cls`` filled with the given bytes, with padding ranges zeroed."""
    obj = cls()
    data = bytearray(draw_bytes[: ctypes.sizeof(cls)].ljust(ctypes.sizeof(cls), b"\0"))
    for start, end in zero:
        data[start:end] = bytes(end - start)
    ctypes.memmove(ctypes.addressof(obj), bytes(data), len(data))
    return obj


def padding_ranges(cls: type) -> Tuple[Tuple[int, int], ...]:
    """Byte ranges of fields named pad*/padding/reserved (recursively) in ``cls``."""
    out: List[Tuple[int, int]] = []

    def walk(c: Any, base: int) -> None:
        for name, ftype, *_ in c._fields_:
            off = getattr(c, name).offset + base
            if name.startswith("pad") or name == "reserved":
                out.append((off, off + ctypes.sizeof(ftype)))
            elif isinstance(ftype, type) and issubclass(ftype, ctypes.Structure):
                walk(ftype, off)
            elif hasattr(ftype, "_type_") and isinstance(ftype._type_, type) and issubclass(
                    ftype._type_, ctypes.Structure):
                for i in range(ftype._length_):
                    walk(ftype._type_, off + i * ctypes.sizeof(ftype._type_))

    walk(cls, 0)
    return tuple(out)


def struct_bytes(cls: type) -> st.SearchStrategy[Any]:
    pads = padding_ranges(cls)
    return st.binary(min_size=ctypes.sizeof(cls), max_size=ctypes.sizeof(cls)).map(
        lambda b: random_struct(cls, b, pads))


# -- round trips through the uapi structs ----------------------------------------------
@BOUNDED
@given(struct_bytes(uapi.kvm_regs))
def test_regs_round_trip(regs: uapi.kvm_regs) -> None:
    tc = ThreadContext().load_regs(regs)
    assert raw(tc.to_regs()) == raw(regs)
    assert tc.rip == regs.rip and tc.r15 == regs.r15


def sregs_strategy() -> st.SearchStrategy[Any]:
    def build(b: bytes) -> Any:
        s = random_struct(uapi.kvm_sregs, b, padding_ranges(uapi.kvm_sregs))
        return s

    return st.binary(min_size=ctypes.sizeof(uapi.kvm_sregs),
                     max_size=ctypes.sizeof(uapi.kvm_sregs)).map(build)


@BOUNDED
@given(sregs_strategy())
def test_sregs_round_trip(sregs: uapi.kvm_sregs) -> None:
    tc = ThreadContext().load_sregs(sregs)
    assert raw(tc.to_sregs()) == raw(sregs)
    assert tc.cs.base == sregs.cs.base and tc.efer == sregs.efer
    assert tc.interrupt_bitmap[3] == sregs.interrupt_bitmap[3]


@BOUNDED
@given(struct_bytes(uapi.kvm_fpu))
def test_fpu_round_trip(fpu: uapi.kvm_fpu) -> None:
    tc = ThreadContext().load_fpu(fpu)
    assert raw(tc.to_fpu()) == raw(fpu)
    assert tc.mxcsr == fpu.mxcsr and tc.fcw == fpu.fcw
    assert tc.xmm(15) == int.from_bytes(bytes(fpu.xmm[15]), "little")


@BOUNDED
@given(st.integers(0, 2**64).map(lambda seed: random.Random(seed).randbytes(4096)))
def test_xsave_round_trip_sets_x87_sse_bits(data: bytes) -> None:
    xs = uapi.kvm_xsave()
    ctypes.memmove(ctypes.addressof(xs), data, 4096)
    tc = ThreadContext().load_xsave(xs)
    out = raw(tc.to_xsave())
    bv_in = struct.unpack_from("<Q", data, 512)[0]
    assert struct.unpack_from("<Q", out, 512)[0] == bv_in | 3
    assert out[:512] == data[:512] and out[520:] == data[520:]
    tc2 = ThreadContext().load_xsave(tc.to_xsave())
    assert tc2.to_xsave().region[:] == tc.to_xsave().region[:]
    assert tc2.fxsave == tc.fxsave


def test_xsave_defaults_and_fpu_agree() -> None:
    tc = ThreadContext()
    tc.mxcsr = 0x1F81
    tc.set_xmm(2, 0x1122334455667788_99AABBCCDDEEFF00)
    xs = tc.to_xsave()
    assert struct.unpack_from("<Q", raw(xs), 512)[0] & 3 == 3
    assert struct.unpack_from("<I", raw(xs), 24)[0] == 0x1F81
    fpu = tc.to_fpu()
    assert fpu.mxcsr == 0x1F81 and bytes(fpu.xmm[2])[0] == 0x00 and bytes(fpu.xmm[2])[15] == 0x11
    assert ThreadContext().load_fpu(fpu).diff(tc) == []


def test_xsave2_buffer_sizes() -> None:
    tc = ThreadContext()
    tc.xsave_tail = tc.xsave_tail + bytes(4096)  # an AMX-sized area from KVM_GET_XSAVE2
    buf = tc.to_xsave()
    assert ctypes.sizeof(buf) == 8192
    assert ThreadContext().load_xsave(buf).xsave_tail == tc.xsave_tail
    with pytest.raises(ValueError):
        ThreadContext().load_xsave((ctypes.c_uint8 * 100)())


@BOUNDED
@given(st.dictionaries(u32.filter(lambda i: i != MSR_IA32_TSC), u64, max_size=40), u64)
def test_msrs_round_trip(msrs: Dict[int, int], tsc: int) -> None:
    tc = ThreadContext(msrs=dict(msrs), tsc=tsc)
    buf = tc.to_msrs()
    assert buf.nmsrs == len(msrs) + 1
    back = ThreadContext().load_msrs(buf)
    assert back.msrs == msrs and back.tsc == tsc
    assert ThreadContext().load_msrs(tc.to_msrs(include_tsc=False)).tsc == 0
    # only the entries KVM_GET_MSRS reported are taken
    partial = ThreadContext().load_msrs(buf, count=0)
    assert partial.msrs == {} and partial.tsc == 0


@BOUNDED
@given(st.dictionaries(u32, u64, max_size=16))
def test_xcrs_round_trip(xcrs: Dict[int, int]) -> None:
    tc = ThreadContext(xcrs=dict(xcrs))
    x = tc.to_xcrs()
    assert x.nr_xcrs == len(xcrs)
    assert ThreadContext().load_xcrs(x).xcrs == xcrs


def test_xcrs_limits() -> None:
    with pytest.raises(ValueError):
        ThreadContext(xcrs={i: 0 for i in range(17)}).to_xcrs()
    x = uapi.kvm_xcrs()
    x.nr_xcrs = 17
    with pytest.raises(ValueError):
        ThreadContext().load_xcrs(x)
    assert ThreadContext().xcr0 == 1


@BOUNDED
@given(struct_bytes(uapi.kvm_vcpu_events))
def test_events_round_trip(ev: uapi.kvm_vcpu_events) -> None:
    tc = ThreadContext().load_events(ev)
    assert raw(tc.to_events()) == raw(ev)
    assert tc.events.nmi_pending == ev.nmi.pending
    assert tc.events.exception_payload == ev.exception_payload


@BOUNDED
@given(st.lists(st.tuples(u32, u32, u32, u32, u32, u32, u32), max_size=30))
def test_cpuid_round_trip(entries: List[Tuple[int, ...]]) -> None:
    tc = ThreadContext(cpuid=[CpuidEntry(*e) for e in entries])
    buf = tc.to_cpuid2()
    assert buf.nent == len(entries)
    assert ThreadContext().load_cpuid(buf).cpuid == tc.cpuid
    as_list = [buf.entries[i] for i in range(buf.nent)]
    assert ThreadContext().load_cpuid(as_list).cpuid == tc.cpuid


@BOUNDED
@given(struct_bytes(uapi.kvm_debugregs), st.binary(min_size=1024, max_size=1024), u32)
def test_debugregs_lapic_mp_state(dr: uapi.kvm_debugregs, lapic: bytes, mp: int) -> None:
    tc = ThreadContext().load_debugregs(dr)
    assert raw(tc.to_debugregs()) == raw(dr)
    ls = uapi.kvm_lapic_state()
    ctypes.memmove(ctypes.addressof(ls), lapic, 1024)
    assert raw(ThreadContext().load_lapic(ls).to_lapic()) == lapic
    assert ThreadContext().load_mp_state(uapi.kvm_mp_state(mp)).to_mp_state().mp_state == mp


def test_lapic_absent() -> None:
    with pytest.raises(ValueError, match="no LAPIC"):
        ThreadContext().to_lapic()


def test_segment_and_events_helpers() -> None:
    seg = Segment(*range(1, 13))
    assert Segment.from_kvm(seg.to_kvm()) == seg
    ev = VcpuEvents(nmi_pending=1, sipi_vector=0x10, smi_inside_nmi=1)
    k = ev.to_kvm()
    assert (k.nmi.pending, k.sipi_vector, k.smi.smm_inside_nmi) == (1, 0x10, 1)
    assert VcpuEvents.from_kvm(k) == ev


# -- a whole random context ---------------------------------------------------------------
def contexts() -> st.SearchStrategy[ThreadContext]:
    seg = st.builds(Segment, u64, u32, u16, u8, u8, u8, u8, u8, u8, u8, u8, u8)
    return st.builds(
        lambda gprs, segs, crs, fx, tail, msrs, events, cpuid, lapic, tsc: _make(
            gprs, segs, crs, fx, tail, msrs, events, cpuid, lapic, tsc),
        st.lists(u64, min_size=18, max_size=18),
        st.lists(seg, min_size=8, max_size=8),
        st.lists(u64, min_size=7, max_size=7),
        st.binary(min_size=512, max_size=512),
        st.binary(min_size=0, max_size=64).map(lambda b: b + bytes(3584 - len(b))),
        st.dictionaries(u32.filter(lambda i: i != MSR_IA32_TSC), u64, max_size=8),
        st.lists(u8, min_size=21, max_size=21),
        st.lists(st.tuples(u32, u32, u32, u32, u32, u32, u32), max_size=4),
        st.sampled_from([b"", bytes(range(256)) * 4]),
        u64,
    )


def _make(gprs: List[int], segs: List[Segment], crs: List[int], fx: bytes, tail: bytes,
          msrs: Dict[int, int], events: List[int], cpuid: List[Tuple[int, ...]], lapic: bytes,
          tsc: int) -> ThreadContext:
    tc = ThreadContext()
    for name, v in zip((*GPR_NAMES, "rip", "rflags"), gprs):
        setattr(tc, name, v)
    for name, s in zip(SEGMENT_NAMES, segs):
        setattr(tc, name, s)
    for name, v in zip(("cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apic_base"), crs):
        setattr(tc, name, v)
    tc.fxsave, tc.xsave_tail, tc.msrs, tc.tsc, tc.lapic = fx, tail, msrs, tsc, lapic
    tc.events = VcpuEvents(*events)
    tc.cpuid = [CpuidEntry(*e) for e in cpuid]
    tc.xcrs = {0: 7}
    tc.interrupt_bitmap = (1, 2, 3, 2**64 - 1)
    tc.debug_db = (4, 5, 6, 7)
    return tc


@BOUNDED
@given(contexts())
def test_checkpoint_round_trip(tmp_path_factory: pytest.TempPathFactory, tc: ThreadContext) -> None:
    cp = CheckpointOut()
    with cp.scope("system.cpu0.xc.0"):
        tc.serialize(cp)
    directory = tmp_path_factory.mktemp("cpt") / "c"
    write_checkpoint(directory, cp)
    loaded = CheckpointIn.load(directory)
    back = ThreadContext()
    with loaded.scope("system.cpu0.xc.0"):
        back.unserialize(loaded)
    assert back == tc and back.diff(tc) == []
    assert loaded.unused_keys() == []


@BOUNDED
@given(contexts())
def test_copy_is_deep_and_equal(tc: ThreadContext) -> None:
    c = tc.copy()
    assert c == tc and c.cs is not tc.cs and c.msrs is not tc.msrs
    c.cs.base ^= 1
    c.msrs[1] = 1 if tc.msrs.get(1) != 1 else 2
    assert tc != c
    assert "cs.base" in " ".join(tc.diff(c))


def test_unserialize_is_all_or_nothing(tmp_path: Path) -> None:
    tc = ThreadContext(rax=1)
    cp = CheckpointOut()
    with cp.scope("xc"):
        tc.serialize(cp)
    write_checkpoint(tmp_path / "c", cp)
    f = tmp_path / "c" / "m5.cpt"
    f.write_text(f.read_text().replace("\ncpuid=\n", "\ncpuid=1 2 3\n"))
    reseal(tmp_path / "c")  # a deliberate edit
    loaded = CheckpointIn.load(tmp_path / "c")
    target = ThreadContext(rax=99)
    with loaded.scope("xc"), pytest.raises(CheckpointError, match=r"\[xc\] cpuid"):
        target.unserialize(loaded)
    assert target.rax == 99
    f.write_text(f.read_text().replace("\nrbx=0\n", "\n"))
    reseal(tmp_path / "c")
    loaded = CheckpointIn.load(tmp_path / "c")
    with loaded.scope("xc"), pytest.raises(CheckpointError, match=r"\[xc\] rbx: missing"):
        target.unserialize(loaded)


# -- modes, diff, dump --------------------------------------------------------------------
def long_mode(tc: ThreadContext) -> ThreadContext:
    tc.cr0 = 0x80000011
    tc.efer = 0x500
    tc.cs = Segment(base=0x1000, selector=0x8, type=11, l=1, dpl=0)
    tc.ss = Segment(selector=0x10, dpl=0)
    return tc


@pytest.mark.parametrize(
    "setup, mode, cpl, linear",
    [
        (lambda tc: tc, CpuMode.REAL, 0, 0xFFFFFFF0),
        (lambda tc: setattr(tc, "rip", 0x12345) or tc, CpuMode.REAL, 0, 0xFFFF2345),
        (lambda tc: long_mode(tc), CpuMode.LONG, 0, 0xFFF0),
        (lambda tc: (long_mode(tc), setattr(tc, "rip", 2**64 - 16),
                     setattr(tc.ss, "dpl", 3))[0], CpuMode.LONG, 3, 2**64 - 16),
        (lambda tc: (long_mode(tc), setattr(tc.cs, "l", 0), setattr(tc.cs, "db", 1))[0],
         CpuMode.COMPATIBILITY, 0, 0x1000 + 0xFFF0),
        (lambda tc: (setattr(tc, "cr0", 0x11), setattr(tc.cs, "db", 1),
                     setattr(tc.cs, "base", 0), setattr(tc, "rip", 0x100000))[0],
         CpuMode.PROTECTED, 0, 0x100000),
        (lambda tc: (setattr(tc, "cr0", 0x11), setattr(tc.cs, "base", 0x20000),
                     setattr(tc, "rip", 0x1_0010))[0], CpuMode.PROTECTED, 0, 0x20010),
        (lambda tc: (setattr(tc, "cr0", 0x11), setattr(tc, "rflags", 0x20002))[0],
         CpuMode.VM86, 3, 0xFFFFFFF0),
    ],
)
def test_modes(setup: Callable[[ThreadContext], ThreadContext], mode: CpuMode, cpl: int,
               linear: int) -> None:
    tc = ThreadContext()
    tc = setup(tc) or tc
    assert tc.mode() is mode
    assert tc.cpl() == cpl
    assert tc.linear_rip() == linear


def test_power_on_state_matches_kvm_reset() -> None:
    tc = ThreadContext()
    assert (tc.cs.selector, tc.cs.base, tc.rip, tc.rflags) == (0xF000, 0xFFFF0000, 0xFFF0, 2)
    assert tc.cr0 == 0x60000010 and tc.mxcsr == 0x1F80 and tc.fcw == 0x37F
    assert tc.xstate_bv == 3 and len(tc.fxsave) == FXSAVE_SIZE
    assert len(tc.fxsave + tc.xsave_tail) == 4096


def test_diff_messages() -> None:
    a, b = ThreadContext(), ThreadContext()
    assert a.diff(b) == [] and a == b
    b.rax = 2
    a.rax = 1
    b.ss.dpl = 3
    b.set_xmm(0, 5)
    b.mxcsr = 0x1FA0
    b.msrs[0xC0000080] = 0x500
    a.xcrs[0] = 7
    b.events.nmi_pending = 1
    b.cpuid = [CpuidEntry(1, 0, 0, 0x306A9, 0, 0, 0)]
    a.cpuid = [CpuidEntry(1, 0, 0, 0x306A8, 0, 0, 0), CpuidEntry(7, 0, 1, 0, 0, 0, 0)]
    b.lapic = bytes(1024)
    d = a.diff(b)
    assert "rax: 0x1 != 0x2" in d
    assert "ss.dpl: 0x0 != 0x3" in d
    assert "xmm0: 0x0 != 0x5" in d
    assert "mxcsr: 0x1f80 != 0x1fa0" in d
    assert "msr 0xc0000080: (absent) != 0x500" in d
    assert "xcr 0x0: 0x7 != 0x1" in d
    assert "events.nmi_pending: 0x0 != 0x1" in d
    assert "cpuid 0x1.0x0 eax: 0x306a8 != 0x306a9" in d
    assert "cpuid 0x7.0x0: present != absent" in d
    assert "lapic: 0 bytes != 1024 bytes" in d
    assert len(d) == 10


def test_dump_gem5_style() -> None:
    tc = long_mode(ThreadContext(rax=0xDEADBEEF, rip=0x401000))
    tc.msrs[0xC0000080] = 0x500
    text = tc.dump()
    assert text.startswith("KVM register state:\n\trax: 0xdeadbeef\n")
    assert "\tcs: @0x1000+ffff [sel: 0x8, type: 0xb]\n" in text
    assert "\t\tpres.: 1, dpl: 0, db: 0, s: 1, l: 1, g: 0, avl: 0, unus.: 0\n" in text
    assert "\tcr0: 0x80000011\n" in text
    assert "\tmxcsr: 0x1f80" in text
    assert "Mode: long, CPL 0, linear rip 0x401000" in text
    assert "\t0xc0000080: 0x500\n" in text
    assert tc.dumpIntRegs().count("\n") == 19


def test_field_names_match_uapi() -> None:
    assert tuple(n for n, *_ in uapi.kvm_regs._fields_) == (*GPR_NAMES, "rip", "rflags")
    assert tuple(n for n, *_ in uapi.kvm_segment._fields_)[:-1] == SEGMENT_FIELDS
    assert tuple(n for n, *_ in uapi.kvm_sregs._fields_)[:8] == SEGMENT_NAMES
