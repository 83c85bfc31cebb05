"""Shared machinery of the differential tests.

* ``run_native(body, regs, flags, buf)`` runs machine code on the host CPU at
  CPL3 (an executable anonymous mapping called through ctypes): silicon as the
  reference, no /dev/kvm needed. Only for code that cannot fault.
* ``run_backend(backend, body, regs, flags, buf, cpl)`` runs the same body in a
  fresh VM of a backend in 64-bit long mode, ending with OUT (IOPL=3 so it also
  works at CPL3), and returns the registers, flags and scratch buffer.
* ``run_native32(body, regs, flags)`` runs 32-bit code on the host CPU: a far
  return to Linux's 32-bit user code segment (0x23, compatibility mode) on a stack
  and register block below 4 GiB (MAP_32BIT), and back to 0x33. Silicon for the
  instructions 64-bit mode does not have (DAA/DAS/AAA/AAS/AAM/AAD, ...) and for
  16/32-bit operand forms. Registers EAX..EDI but ESP; only code that cannot fault.
* ``compare(...)`` reports the differences register by register.
"""

from __future__ import annotations

import ctypes
import mmap
import platform
import random
from typing import Dict, List, Optional, Tuple

from kvmcpu.backends.base import Backend
from kvmcpu.backends.exits import IoExit

REG_NAMES = ("rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
             "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
#: Compared registers: everything but RSP and R15 (the scratch pointer differs).
COMPARED = tuple(n for n in REG_NAMES if n not in ("rsp", "r15"))
ARITH_FLAGS = 0x8D5  # CF PF AF ZF SF OF
FLAGS_COMPARED = ARITH_FLAGS | 0x400  # + DF

_HEAD = bytes.fromhex(
    "5355415441554156415757488b8780000000509d488b07488b4f08488b5710488b5f18488b6f28488b7730"
    "4c8b47404c8b4f484c8b57504c8b5f584c8b67604c8b6f684c8b77704c8b7f78488b7f38")
_TAIL = bytes.fromhex(
    "57488b7c24088f473848890748894f084889571048895f1848896f28488977304c8947404c894f484c8957"
    "504c895f584c8967604c896f684c8977704c897f789c8f87800000005f415f415e415d415c5d5bc3")

#: run_native32's stub (assembled from the nasm source in the docstring of run_native32):
#: 64-bit entry -> compatibility mode, load the registers, [body], store them, back.
_HEAD32 = bytes.fromhex(
    "53554154415541564157488967408c5f488c474a4889fc6a23488d05030000005048cb668cd08ed88ec0"
    "578b4720509d8b078b4f048b57088b5f0c8b6f148b77188b7f1c")
_TAIL32 = bytes.fromhex(
    "9c877c24048907894f04895708895f0c896f14897718588947205889471c6a33e8000000005883c006"
    "50cb89ff8e5f488e474a488b6740415f415e415d415c5d5bc3")
REG32 = ("eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi")
_MAP_32BIT = 0x40  # <sys/mman.h> on x86-64: map below 4 GiB

CODE_GPA = 0x10000
BUF_GPA = 0x20000
STACK_TOP = 0x30000
PAGE_TABLES = 0x40000
RAM = 0x100000
DONE_PORT = 0xE0


def random_inputs(rng: "random.Random") -> Tuple[Dict[str, int], int, bytes]:
    """Registers (a fifth from edge values, the rest 8/16/32/64 random bits), the
    arithmetic flags and a 256-byte scratch buffer for a random program."""
    pool = [0, 1, 0xFFFFFFFFFFFFFFFF, 0x8000000000000000, 0x7FFFFFFF, 0x80000000]
    regs = {n: rng.choice(pool) if rng.random() < 0.2 else rng.getrandbits(rng.choice(
        [8, 16, 32, 64])) for n in REG_NAMES}
    flags = rng.getrandbits(12) & 0x8D5
    buf = bytes(rng.getrandbits(8) for _ in range(256))
    return regs, flags, buf


def host_mock() -> Backend:
    """A mock backend imitating the host CPU's vendor whatever KVMCPU_MOCK_VENDOR says
    (the differential tests compare with this very CPU, natively or through KVM)."""
    from kvmcpu.backends.mock import MockBackend
    from kvmcpu.backends.mock.vendor import FALLBACK, host_vendor

    return MockBackend(vendor=host_vendor() or FALLBACK)


def native_available() -> Optional[str]:
    """None when host code can be executed natively, else why not."""
    from kvmcpu.backends.mock.vendor import host_vendor

    if platform.machine() not in ("x86_64", "AMD64"):
        return f"host is {platform.machine()}, not x86-64"
    if host_vendor() is None:
        return "the host CPU is neither Intel nor AMD: the mock has no profile of its silicon"
    try:
        m = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    except (OSError, AttributeError) as err:
        return f"no executable mapping: {err}"
    m.close()
    return None


def run_native(body: bytes, regs: Dict[str, int], flags: int, buf: bytes
               ) -> Tuple[Dict[str, int], int, bytes]:
    """Run ``body`` on the host CPU with the given registers; R15 points at a copy of buf."""
    code = _HEAD + body + _TAIL
    size = (len(code) + 4095) // 4096 * 4096
    m = mmap.mmap(-1, size, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    try:
        m.write(code)
        data = (ctypes.c_ubyte * len(buf)).from_buffer_copy(buf)
        vals = [regs.get(n, 0) for n in REG_NAMES] + [flags]
        vals[15] = ctypes.addressof(data)
        block = (ctypes.c_uint64 * 17)(*vals)
        # Lifetime: fn points into m; both die at the end of this function.
        anchor = ctypes.c_char.from_buffer(m)
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(ctypes.addressof(anchor))
        fn(ctypes.addressof(block))
        del fn, anchor
        out = {n: int(block[i]) for i, n in enumerate(REG_NAMES)}
        return out, int(block[16]), bytes(data)
    finally:
        m.close()


def run_native32(body: bytes, regs: Dict[str, int], flags: int) -> Tuple[Dict[str, int], int]:
    """Run 32-bit ``body`` natively in compatibility mode; returns (registers, eflags).

    The stub, in nasm (bits 64 entry, rdi = the register block, below 4 GiB)::

        push rbx/rbp/r12-r15; mov [rdi+0x40], rsp; mov [rdi+0x48], ds; mov [rdi+0x4a], es
        mov rsp, rdi; push 0x23; lea rax, [rel compat]; push rax; o64 retf
      compat (bits 32): mov ax, ss; mov ds, ax; mov es, ax; push edi
        mov eax, [edi+0x20]; push eax; popfd; mov eax/ecx/edx/ebx/ebp/esi/edi, [edi+...]
        <body>
        pushfd; xchg edi, [esp+4]; mov [edi+...], eax/ecx/edx/ebx/ebp/esi
        pop eax; mov [edi+0x20], eax; pop eax; mov [edi+0x1c], eax
        push 0x33; call next; next: pop eax; add eax, ret64-next; push eax; retf
      ret64 (bits 64): mov edi, edi; mov ds/es, [rdi+0x48/0x4a]; mov rsp, [rdi+0x40]
        pop r15-r12/rbp/rbx; ret
    """
    code = _HEAD32 + body + _TAIL32
    m = mmap.mmap(-1, 0x2000, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _MAP_32BIT,
                  prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
    try:
        m.write(code)
        # Lifetime: anchor, blk and fn view m; all are dropped before m.close().
        anchor = ctypes.c_char.from_buffer(m)
        base = ctypes.addressof(anchor)
        if base + 0x2000 > 1 << 32:
            raise OSError("MAP_32BIT gave a mapping above 4 GiB")
        blk = (ctypes.c_uint32 * 20).from_buffer(m, 0x1800)
        for i, n in enumerate(REG32):
            if n != "esp":
                blk[i] = regs.get(n, 0) & 0xFFFFFFFF
        blk[8] = (flags & 0x8D5) | 2
        fn = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(base)
        fn(base + 0x1800)
        out = {n: int(blk[i]) for i, n in enumerate(REG32) if n != "esp"}
        fl = int(blk[8])
        del fn, blk, anchor
        return out, fl
    finally:
        m.close()


def run_backend(backend: Backend, body: bytes, regs: Dict[str, int], flags: int, buf: bytes,
                *, cpl: int = 3, budget: Optional[int] = None
                ) -> Tuple[Dict[str, int], int, bytes, List[Tuple[str, Dict[str, object]]]]:
    """Run ``body`` + OUT in long mode on ``backend``; returns (regs, rflags, buf, exit
    snapshots as (kind, fields))."""
    code = body + b"\xe6" + bytes([DONE_PORT])  # out DONE_PORT, al
    with backend.create_vm() as vm:
        ram = vm.add_ram(0, RAM)
        ram[CODE_GPA:CODE_GPA + len(code)] = code
        ram[BUF_GPA:BUF_GPA + len(buf)] = buf
        vcpu = vm.create_vcpu(0)
        try:
            vcpu.set_long_mode(CODE_GPA, rsp=STACK_TOP, cpl=cpl, page_tables=PAGE_TABLES)
            r = vcpu.get_regs()
            for n in REG_NAMES:
                setattr(r, n, regs.get(n, 0))
            r.rsp = STACK_TOP
            r.r15 = BUF_GPA
            r.rip = CODE_GPA
            r.rflags = flags | 0x2 | (3 << 12)  # IOPL=3: OUT works at CPL3
            vcpu.set_regs(r)
            if budget is not None and hasattr(vcpu, "set_budget"):
                vcpu.set_budget(budget)
            # Snapshots, not Exit objects: their data views die with the run page.
            exits: List[Tuple[str, Dict[str, object]]] = []
            for _ in range(4):
                ex = vcpu.run()
                exits.append((ex.kind, ex.fields()))
                if isinstance(ex, IoExit) and ex.port == DONE_PORT:
                    vcpu.immediate_exit = True  # half entry: completes the OUT on KVM
                    vcpu.run()
                    vcpu.immediate_exit = False
                    break
            out = vcpu.get_regs()
            res = {n: int(getattr(out, n)) for n in REG_NAMES}
            return res, int(out.rflags), bytes(ram[BUF_GPA:BUF_GPA + len(buf)]), exits
        finally:
            vcpu.close()


def compare(a: Tuple[Dict[str, int], int, bytes], b: Tuple[Dict[str, int], int, bytes],
            flag_mask: int = FLAGS_COMPARED) -> List[str]:
    """Differences between two (regs, flags, buf) results."""
    diffs = []
    for n in COMPARED:
        if a[0][n] != b[0][n]:
            diffs.append(f"{n}: {a[0][n]:#x} != {b[0][n]:#x}")
    if (a[1] ^ b[1]) & flag_mask:
        diffs.append(f"rflags: {a[1] & flag_mask:#x} != {b[1] & flag_mask:#x} "
                     f"(xor {(a[1] ^ b[1]) & flag_mask:#x})")
    if a[2] != b[2]:
        first = next(i for i in range(len(a[2])) if a[2][i] != b[2][i])
        diffs.append(f"buffer differs from byte {first}")
    return diffs


def run_legacy(b: Backend, body: bytes, mode: str, regs: Dict[str, int], flags: int
               ) -> Tuple[Dict[str, int], List[Tuple[str, Dict[str, object]]]]:
    """Run 16-bit (``mode`` "real") or flat 32-bit ("prot") ``body`` + OUT 0xe0 on a
    backend with the given registers and flags; returns (rax..rip and "flags" = the
    arithmetic flags, exit snapshots)."""
    code = body + b"\xe6\xe0"  # out 0xe0, al
    with b.create_vm() as vm:
        ram = vm.add_ram(0, 0x10000)
        ram[0x1000:0x1000 + len(code)] = code
        v = vm.create_vcpu(0)
        try:
            if mode == "real":
                v.set_real_mode(0, 0x1000, sp=0x8000)
            else:
                v.set_protected_mode(0x1000, esp=0x8000)
            r = v.get_regs()
            for n, val in regs.items():
                setattr(r, n, val)
            r.rflags = 0x2 | flags
            v.set_regs(r)
            exits = []
            for _ in range(3):
                ex = v.run()
                exits.append((ex.kind, ex.fields()))
                if ex.kind == "io":
                    v.immediate_exit = True
                    v.run()
                    v.immediate_exit = False
                    break
            out = v.get_regs()
            got = {n: getattr(out, n) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi",
                                                "rbp", "rsp", "rip")}
            got["flags"] = out.rflags & 0x8D5
            return got, exits
        finally:
            v.close()
