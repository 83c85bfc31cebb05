"""Instruction semantics: ALU flags against known values, string instructions,
self-modifying code with the decode cache, modes and segment loads."""

from __future__ import annotations

import pytest

# (instruction, rax, rbx, flags in) -> (rax out, arithmetic flags out), as measured on the
# host CPU (tests/differential checks many more against silicon). Where the flags are the
# vendor's choice (AF after a shift), the expectation is per vendor profile.
ALU_CASES = [
    ("add al, bl", 0xFF, 0x01, 0, 0x00, 0x55),         # CF PF AF ZF
    ("add al, bl", 0x7F, 0x01, 0, 0x80, 0x890),        # OF SF AF
    ("sub al, bl", 0x00, 0x01, 0, 0xFF, 0x95),         # CF PF AF SF
    ("sub eax, ebx", 0x80000000, 1, 0, 0x7FFFFFFF, 0x814),  # OF AF PF
    ("adc al, bl", 0xFE, 0x01, 1, 0x00, 0x55),
    ("sbb al, bl", 0x00, 0x00, 1, 0xFF, 0x95),
    ("and eax, ebx", 0xF0, 0x0F, 0x8D5, 0x00, 0x44),
    ("xor rax, rbx", -1, 0, 0, -1, 0x84),
    ("neg al", 0x80, 0, 0, 0x80, 0x881),
    ("neg eax", 0, 0, 1, 0, 0x44),
    ("inc al", 0xFF, 0, 1, 0x00, 0x55),               # CF preserved
    ("dec ax", 0x8000, 0, 0, 0x7FFF, 0x814),
    ("shl al, 1", 0xC0, 0, 0, 0x80, {"amd": 0x91, "intel": 0x81}),
    ("sar al, 1", 0x81, 0, 0, 0xC0, {"amd": 0x95, "intel": 0x85}),
    ("rol al, 1", 0x80, 0, 0, 0x01, 0x801),
    ("bt eax, 3", 0x08, 0, 0, 0x08, 0x01),
    ("cmp eax, ebx", 5, 7, 0, 5, 0x91),
]


@pytest.mark.parametrize("insn,a,b,fin,want,wflags", ALU_CASES)
def test_alu_flags(m, insn, a, b, fin, want, wflags) -> None:  # type: ignore[no-untyped-def]
    m.long(f"{insn}\nhlt")
    r = m.regs()
    r.rax = a & (2**64 - 1)
    r.rbx = b
    r.rflags = 0x2 | fin
    m.vcpu.set_regs(r)
    assert m.run().kind == "hlt"
    r = m.regs()
    assert r.rax & 0xFFFFFFFF == want & 0xFFFFFFFF
    if isinstance(wflags, dict):
        wflags = wflags[m.backend.profile.name]
    assert r.rflags & 0x8D5 == wflags


def test_string_instructions(m) -> None:  # type: ignore[no-untyped-def]
    m.long("""
        cld
        lea rsi, [rel src]
        mov rdi, 0x300000
        mov ecx, 11
        rep movsb
        mov rdi, 0x300100
        mov eax, 0x41424344
        mov ecx, 4
        rep stosd
        mov rsi, 0x300000
        lea rdi, [rel src]
        mov ecx, 11
        repe cmpsb               ; equal all the way
        mov r8, rcx
        mov rdi, 0x300000
        mov al, 'w'
        mov ecx, 11
        repne scasb
        mov r9, rcx
        std
        mov rsi, 0x30000a
        lodsb
        mov r10, rax
        mov r11, rsi
        cld
        ; overlapping forward copy replicates the first byte
        mov rsi, 0x300200
        mov byte [rsi], 0x5a
        lea rdi, [rsi+1]
        mov ecx, 15
        rep movsb
        hlt
    src: db "hello world"
    """)
    assert m.run().kind == "hlt"
    assert m.ram[0x300000:0x30000B] == b"hello world"
    assert m.ram[0x300100:0x300110] == b"DCBA" * 4
    r = m.regs()
    assert r.r8 == 0 and r.rflags & 0x400 == 0
    assert r.r9 == 11 - 7
    assert r.r10 & 0xFF == ord("d") and r.r11 == 0x300009
    assert m.ram[0x300200:0x300210] == b"\x5a" * 16


def test_rep_movsb_large_and_interrupted(m) -> None:  # type: ignore[no-untyped-def]
    m.ram[0x200000:0x300000] = bytes(range(256)) * 4096
    m.long("""
        mov rsi, 0x200000
        mov rdi, 0x300000
        mov ecx, 0x100000
        rep movsb
        hlt
    """)
    assert m.run().kind == "hlt"
    assert m.ram[0x300000:0x400000] == m.ram[0x200000:0x300000]


def test_self_modifying_code(m) -> None:  # type: ignore[no-untyped-def]
    m.long("""
        mov ecx, 3
    again:
        call patchme
        out 0x80, al
        inc byte [rel patchme + 1]   ; change the immediate of the mov below
        dec ecx
        jnz again
        mov byte [rel next], 0xf4     ; overwrite the next instruction with HLT
    next:
        nop
        out 0x81, al
    patchme:
        mov al, 0x10
        ret
    """)
    got = [bytes(m.run().data) for _ in range(3)]
    assert got == [b"\x10", b"\x11", b"\x12"]
    assert m.run().kind == "hlt"


def test_host_write_invalidates_translations(m) -> None:  # type: ignore[no-untyped-def]
    m.long("mov al, 1\nout 0x80, al\nhlt")
    assert bytes(m.run().data) == b"\x01"
    assert m.run().kind == "hlt"
    m.ram[0x100001:0x100002] = b"\x07"   # the host patches the immediate
    m.vcpu.set_long_mode(0x100000, rsp=0x200000)
    assert bytes(m.run().data) == b"\x07"


def test_protected_mode_segments_and_far_jump(m) -> None:  # type: ignore[no-untyped-def]
    m.prot("""
        lgdt [gdtr]
        mov ax, 0x18
        mov ds, ax              ; based data segment: base 0x1000
        mov eax, [0x10]         ; reads linear 0x1010
        out 0x80, eax
        jmp 0x08:next
    next:
        mov ax, 0x10
        mov ds, ax
        mov ebx, [0x1010]
        out 0x84, eax
        mov ax, 0x28
        mov es, ax              ; beyond the GDT limit: #GP -> no IDT -> triple fault
        hlt
    align 8
    gdt: dq 0
         dq 0x00CF9B000000FFFF  ; 0x08 code
         dq 0x00CF93000000FFFF  ; 0x10 data
         dq 0x00CF93001000FFFF  ; 0x18 data, base 0x1000
    gdtr: dw 4*8-1
          dd gdt
    """)
    m.ram[0x1010:0x1014] = b"\x78\x56\x34\x12"
    ex = m.run()
    assert (ex.port, bytes(ex.data)) == (0x80, b"\x78\x56\x34\x12")
    ex = m.run()
    assert ex.port == 0x84
    s = m.vcpu.get_sregs()
    assert s.cs.selector == 0x08 and s.ds.selector == 0x10 and s.ds.base == 0
    assert m.run().kind == "shutdown"


def test_real_mode_far_call_and_retf(m) -> None:  # type: ignore[no-untyped-def]
    m.real("""
        call 0x0100:(target - 0x1000)
        out 0x81, al
        hlt
    target:
        mov al, 0x33
        out 0x80, al
        retf
    """)
    ex = m.run()
    assert (ex.port, bytes(ex.data)) == (0x80, b"\x33")
    assert m.vcpu.get_sregs().cs.base == 0x1000
    ex = m.run()
    assert ex.port == 0x81 and m.vcpu.get_sregs().cs.selector == 0


def test_syscall_sysret_and_cpl3(m) -> None:  # type: ignore[no-untyped-def]
    m.long("""
        mov ecx, 0xC0000081      ; STAR: kernel CS 0x08, user base 0x10 (CS 0x23, SS 0x1b)
        xor eax, eax
        mov edx, 0x00100008
        wrmsr
        mov ecx, 0xC0000082      ; LSTAR
        lea rax, [rel kernel]
        mov rdx, rax
        shr rdx, 32
        wrmsr
        lea rcx, [rel user]
        mov r11d, 0x202
        o64 sysret
    user:
        mov r12, 0x1234
        syscall
        hlt
    kernel:
        mov r13, rcx
        out 0x80, al
        hlt
    """)
    ex = m.run()
    assert ex.port == 0x80
    s = m.vcpu.get_sregs()
    r = m.regs()
    assert s.cs.selector == 0x08 and s.cs.dpl == 0 and r.r12 == 0x1234
    assert r.r11 & 0x200 and r.r13 > 0x100000


def test_cpuid_msrs_and_tsc(m) -> None:  # type: ignore[no-untyped-def]
    m.vcpu.set_cpuid2(m.backend.get_supported_cpuid())
    m.long("""
        xor eax, eax
        cpuid
        mov r8, rbx
        mov ecx, 0xC0000080
        rdmsr
        mov r9, rax
        rdtsc
        mov r10, rax
        mov ecx, 0x12345
        rdmsr                    ; unknown MSR: #GP, no IDT: shutdown
    """)
    assert m.run().kind == "shutdown"
    r = m.regs()
    assert r.r8.to_bytes(4, "little") == {"amd": b"Auth", "intel": b"Genu"}[
        m.backend.profile.name]  # CPUID leaf 0 EBX of the vendor profile
    assert r.r9 == 0x501
    assert r.r10 == 6  # TSC = cycles retired before RDTSC
    assert m.vcpu.get_msrs([0xC0000080, 0x12345, 0x10]) == {0xC0000080: 0x501}
    assert m.vcpu.set_msrs([(0xC0000082, 5), (0x12345, 1), (0xC0000081, 1)]) == 1


def test_decimal_adjust_16bit(m) -> None:  # type: ignore[no-untyped-def]
    m.real("""
        mov al, 0x79
        add al, 0x35
        daa                     ; 79 + 35 = 114 (BCD)
        mov [0x600], al
        setc [0x601]
        mov al, 0x35
        sub al, 0x47
        das                     ; 35 - 47 = -12 -> 88 with borrow
        mov [0x602], al
        setc [0x603]
        mov ax, 0x0009
        add al, 8
        aaa                     ; 9 + 8 = 17 -> AH=1, AL=7
        mov [0x604], ax
        mov al, 63
        aam                     ; AH=6, AL=3
        mov [0x606], ax
        aad                     ; back to 63
        mov [0x608], ax
        stc
        salc
        mov [0x60a], al
        hlt
    """)
    assert m.run().kind == "hlt"
    assert m.ram[0x600:0x60B] == bytes([0x14, 1, 0x88, 1, 0x07, 0x01, 0x03, 0x06, 63, 0,
                                        0xFF])
