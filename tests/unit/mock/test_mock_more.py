"""More paths: user-mode interrupts with a TSS stack switch, 1 GiB pages, REP string
instructions against MMIO and ports, NX and user/supervisor faults."""

from __future__ import annotations

import struct

from test_mock_events import LONG_IDT


def test_cpl3_interrupt_switches_to_rsp0_and_back(m) -> None:  # type: ignore[no-untyped-def]
    m.long(LONG_IDT + """
        GATE 0x80, handler
        mov word [rel idt + 0x80*16 + 4], 0xEE00   ; DPL3 so user code may INT 0x80
        lidt [rel idtr]
        ; 64-bit TSS at 0x7000 with RSP0 = 0x6f000; GDT entry 0x28 (16 bytes)
        mov rax, 0x6f000
        mov [0x7004], rax
        sgdt [rel gdtr_save]
        mov rbx, [rel gdtr_save + 2]
        mov rax, 0x0000890070000067  ; present, type 9 (available TSS), base 0x7000
        mov [rbx + 0x28], rax
        mov qword [rbx + 0x30], 0
        mov word [rel gdtr_save], 0x37
        lgdt [rel gdtr_save]
        mov ax, 0x28
        ltr ax
        ; iretq to CPL3
        push 0x23               ; SS
        push 0x1f0000           ; RSP
        push 0x3202             ; RFLAGS (IOPL3, IF)
        push 0x1b               ; CS
        lea rax, [rel user]
        push rax
        iretq
    user:
        mov r8, rsp
        int 0x80
        mov r10, rsp
        out 0x81, al
    spin: jmp spin
    handler:
        mov r9, rsp             ; on the RSP0 stack
        mov r11, [rsp + 8]      ; saved CS
        mov r12, [rsp + 24]     ; saved RSP
        out 0x80, al
        iretq
    gdtr_save: dw 0
               dq 0
    """)
    ex = m.run()
    assert ex.port == 0x80
    r = m.regs()
    s = m.vcpu.get_sregs()
    assert s.cs.selector & 3 == 0 and r.r9 == 0x6F000 - 40
    assert r.r11 == 0x1B and r.r12 == 0x1F0000
    ex = m.run()
    assert ex.port == 0x81
    r = m.regs()
    assert r.r10 == r.r8 == 0x1F0000 and m.vcpu.get_sregs().cs.selector == 0x1B


def test_one_gib_page(m) -> None:  # type: ignore[no-untyped-def]
    ram = m.ram
    ram[0x20000:0x20008] = struct.pack("<Q", 0x21000 | 3)
    ram[0x21000:0x21008] = struct.pack("<Q", 0x0 | 0x83)          # 0..1 GiB
    ram[0x21008:0x21010] = struct.pack("<Q", 0x0 | 0x83)          # 1..2 GiB -> alias of 0
    m.long("""
        mov dword [0x5000], 0xfeedbeef
        mov eax, [0x40005000]
        out 0x80, eax
        hlt
    """, at=0x1000, rsp=0x8000)
    s = m.vcpu.get_sregs()
    s.cr3 = 0x20000
    m.vcpu.set_sregs(s)
    ex = m.run()
    assert bytes(ex.data) == struct.pack("<I", 0xFEEDBEEF)
    assert struct.unpack("<Q", ram[0x21008:0x21010])[0] & 0x20


def test_rep_stos_to_mmio_and_rep_ins() -> None:
    from mockrig import Machine

    m = Machine(0x10000)
    try:
        m.real("""
            mov ax, 0x2000
            mov es, ax
            xor di, di
            mov al, 0x5a
            mov cx, 3
            rep stosb               ; three MMIO write exits, RIP stays until the last
            mov ax, 0
            mov es, ax
            mov di, 0x500
            mov dx, 0x60
            mov cx, 2
            rep insb                ; two IN exits of count 1
            hlt
        """)
        rips = []
        for i in range(3):
            ex = m.run()
            assert (ex.kind, ex.phys_addr, bytes(ex.data)) == ("mmio", 0x20000 + i, b"\x5a")
            rips.append(m.regs().rip)
        assert rips[0] == rips[1] != rips[2]
        assert m.regs().rcx & 0xFFFF == 0
        for v in (b"\x11", b"\x22"):
            ex = m.run()
            assert (ex.kind, ex.port, ex.count, ex.is_write) == ("io", 0x60, 1, False)
            ex.data[:] = v
        assert m.run().kind == "hlt"
        assert m.ram[0x500:0x502] == b"\x11\x22"
    finally:
        m.close()


def test_nx_and_user_supervisor_faults(m) -> None:  # type: ignore[no-untyped-def]
    ram = m.ram
    ram[0x20000:0x20008] = struct.pack("<Q", 0x21000 | 7)
    ram[0x21000:0x21008] = struct.pack("<Q", 0x22000 | 7)
    ram[0x22000:0x22008] = struct.pack("<Q", 0x0 | 0x83 | 4)        # 0..2 MiB user, RW
    ram[0x22008:0x22010] = struct.pack("<Q", 0x200000 | 0x83 | (1 << 63))  # supervisor, NX
    m.long("""
        mov ecx, 0xC0000080
        rdmsr
        or eax, 0x800           ; EFER.NXE
        wrmsr
        mov rax, 0x200000
        mov byte [rax], 0xc3    ; writable data page
        call rax                ; NX: #PF with I/D -> no IDT -> triple fault
    """, at=0x1000, rsp=0x8000)
    s = m.vcpu.get_sregs()
    s.cr3 = 0x20000
    m.vcpu.set_sregs(s)
    assert m.run().kind == "shutdown"
    assert m.vcpu.get_sregs().cr2 == 0x200000
