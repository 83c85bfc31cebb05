"""16- and 32-bit code on both backends: directed programs exercising operand and
address sizes, prefixes, flags, string instructions and segment arithmetic in real
mode and flat 32-bit protected mode (on this host KVM runs them in its emulator).
Each program stores results in memory; memory and registers must match."""

from __future__ import annotations

from typing import Dict, Tuple

import pytest
from diffkit import host_mock, run_legacy
from mockasm import asm

from kvmcpu.backends.base import Backend

pytestmark = pytest.mark.kvm

BODY = """
    mov ax, 0x8001
    mov bx, 0x7fff
    add ax, bx              ; 16-bit add: CF, AF, ...
    pushf
    mov cx, 5
    mov dx, 0xfff0
    sub dx, cx
    pushf
    mov eax, 0x89abcdef
    mov ebx, 0x12345678
    imul eax, ebx
    mov [RES+0], eax
    pushf
    mov al, 0x7f
    inc al
    pushf
    mov ax, 0x1234
    rol ax, 4
    rcr ax, 3
    shl ax, 1
    mov [RES+4], ax
    pushf
    mov edx, 0
    mov eax, 1000007
    mov ecx, 13
    div ecx
    mov [RES+8], eax
    mov [RES+12], edx
    mov ax, 0x00ff
    mov cl, 0x10
    div cl
    mov [RES+16], ax
    movsx ebx, byte [RES+4]
    movzx ecx, word [RES+8]
    mov [RES+20], ebx
    mov [RES+24], ecx
    xchg bh, bl
    bswap ebx
    mov [RES+28], ebx
    mov esi, 0x55aa
    bt si, 3
    bts esi, 20
    btr si, 1
    mov [RES+32], esi
    pushf
    cld
    mov esi, RES            ; the whole register: `bts esi, 20` above set bit 20, and
    mov edi, RES+64         ; 32-bit code addresses strings with ESI/EDI and counts in ECX
    mov ecx, 9
    rep movsb
    mov al, 0xcc
    mov ecx, 3
    rep stosb
    mov esi, RES
    mov edi, RES+64
    mov ecx, 9
    repe cmpsb
    mov [RES+40], cx
    pushf
    cbw
    cwd
    mov [RES+44], ax
    mov [RES+46], dx
    lahf
    mov [RES+48], ah
    stc
    sbb eax, eax
    mov [RES+52], eax
    setc bl
    mov [RES+56], bl
    mov ax, 3
    mov bx, 4
    cmp ax, bx
    cmovl ax, bx
    mov [RES+58], ax
    out 0xe0, al
    hlt
"""


def _run(b: Backend, mode: str) -> Tuple[bytes, Dict[str, int], list]:  # type: ignore[type-arg]
    res = 0x3000
    code = asm(f"RES equ {res}\n" + BODY, 16 if mode == "real" else 32, 0x1000)
    with b.create_vm() as vm:
        ram = vm.add_ram(0, 0x10000)
        ram[0x1000:0x1000 + len(code)] = code
        v = vm.create_vcpu(0)
        try:
            if mode == "real":
                v.set_real_mode(0, 0x1000, sp=0x8000)
            else:
                v.set_protected_mode(0x1000, esp=0x8000)
            exits = []
            for _ in range(5):
                ex = v.run()
                exits.append((ex.kind, ex.fields()))
                if ex.kind != "io":
                    break
            r = v.get_regs()
            regs = {n: getattr(r, n) for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi",
                                               "rsp", "rip", "rflags")}
            return bytes(ram[res:res + 0x100]) + bytes(ram[0x7F00:0x8000]), regs, exits
        finally:
            v.close()


@pytest.mark.parametrize("mode", ["real", "prot"])
def test_legacy_program(kvm_backend: Backend, mode: str) -> None:
    with host_mock() as m:
        mine = _run(m, mode)
    theirs = _run(kvm_backend, mode)
    assert mine[2] == theirs[2]
    assert mine[1] == theirs[1]
    if mine[0] != theirs[0]:
        first = next(i for i in range(len(mine[0])) if mine[0][i] != theirs[0][i])
        pytest.fail(f"memory differs at +{first:#x}: mock {mine[0][first:first + 8].hex()} "
                    f"kvm {theirs[0][first:first + 8].hex()}")


@pytest.mark.parametrize("mode", ["real", "prot"])
def test_random_legacy_programs(kvm_backend: Backend, mode: str) -> None:
    """Random register-only 8/16/32-bit programs (fixed seeds) in real and protected mode."""
    import random

    from x86enc import legacy_program

    with host_mock() as m:
        for seed in range(25):
            rng = random.Random(seed * 31 + len(mode))
            body = b"".join(legacy_program(rng, 12, 16 if mode == "real" else 32))
            regs = {n: rng.getrandbits(32) for n in ("rax", "rbx", "rcx", "rdx", "rsi",
                                                     "rdi", "rbp")}
            flags = rng.getrandbits(12) & 0x8D5
            a = run_legacy(kvm_backend, body, mode, regs, flags)
            b = run_legacy(m, body, mode, regs, flags)
            assert a == b, f"{mode} {body.hex()}"


ADDRESSING = """
    mov ax, 0x0300
    mov ds, ax
    mov ax, 0x0400
    mov es, ax
    mov ax, 0x0500
    mov ss, ax
    mov sp, 0x0f00
    mov bx, 0x10
    mov si, 0x20
    mov di, 0x30
    mov bp, 0x40
    mov cx, 0x1111
    mov [bx+si], cx          ; DS:0x30
    mov [bx+di+2], cx        ; DS:0x42
    mov [bp+si+4], cx        ; SS:0x64
    mov [bp+di-6], cx        ; SS:0x6a
    mov [si+0x100], cx       ; DS:0x120
    mov [di+0x1234], cx      ; DS:0x1264
    mov [bp+8], cx           ; SS:0x48
    mov [bx], cx             ; DS:0x10
    mov [es:bx+si+1], cx     ; ES:0x31
    mov [cs:0x2000], cx      ; CS:0x2000
    mov [ss:bx+0x7f], cx     ; SS:0x8f
    mov ebx, 0x200
    mov esi, 3
    mov [ebx+esi*4+8], cx    ; 32-bit addressing in real mode: DS:0x214
    mov [ebp+esi*2], cx      ; SS:0x46 (EBP base -> SS)
    lea ax, [bx+si+0x55]
    lea dx, [bp+di-1]
    mov [0x500], ax
    mov [0x502], dx
    mov si, 0x10
    lodsw
    mov [0x504], ax
    mov di, 0x50
    mov ax, 0xabcd
    stosw                    ; ES:0x50
    out 0xe0, al
    hlt
"""


def test_real_mode_addressing(kvm_backend: Backend) -> None:
    """16-bit ModRM forms, default segments (BP -> SS), overrides and 32-bit addressing
    in real mode: the memory written must match KVM's emulator byte for byte."""
    code = asm(ADDRESSING, 16, 0x1000)

    def go(b: Backend) -> Tuple[bytes, Dict[str, int]]:
        with b.create_vm() as vm:
            ram = vm.add_ram(0, 0x10000)
            ram[0x1000:0x1000 + len(code)] = code
            v = vm.create_vcpu(0)
            try:
                v.set_real_mode(0, 0x1000, sp=0x8000)
                for _ in range(3):
                    if v.run().kind != "io":
                        break
                r = v.get_regs()
                return bytes(ram[0x2000:0x7000]), {n: getattr(r, n) for n in (
                    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip")}
            finally:
                v.close()

    with host_mock() as m:
        mine = go(m)
    theirs = go(kvm_backend)
    assert mine[1] == theirs[1]
    diff = [hex(0x2000 + i) for i in range(len(mine[0])) if mine[0][i] != theirs[0][i]]
    assert not diff, f"memory differs at {diff[:8]}"
