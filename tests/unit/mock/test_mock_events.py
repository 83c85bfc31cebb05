"""Interrupts, NMIs, exceptions through the IVT/IDT, shadows, the interrupt window,
double and triple faults, paging faults and guest debugging."""

from __future__ import annotations

import struct

from kvmcpu import uapi
from kvmcpu.backends import DebugExit

#: Long-mode prologue: an IDT whose gates all point at `common` (vector pushed by a stub).
LONG_IDT = """
    jmp start
set_gate:                   ; rdi = vector, rsi = handler
    mov rax, rsi
    lea rbx, [rel idt]
    shl rdi, 4
    add rbx, rdi
    mov [rbx], ax
    mov word [rbx+2], 0x08
    mov word [rbx+4], 0x8E00
    shr rax, 16
    mov [rbx+6], ax
    shr rax, 16
    mov [rbx+8], eax
    mov dword [rbx+12], 0
    ret
%macro GATE 2
    mov edi, %1
    lea rsi, [rel %2]
    call set_gate
%endmacro
align 16
idtr: dw 256*16-1
      dq idt
align 16
idt: times 256*16 db 0
start:
"""


def test_real_mode_ivt_interrupt(m) -> None:  # type: ignore[no-untyped-def]
    m.real("""
        mov word [0x20*4], handler
        mov word [0x20*4+2], 0
        sti
    spin:
        jmp spin
    handler:
        mov al, 0x20
        out 0x80, al
        pop ax          ; return IP
        out 0x81, ax
        hlt
    """)
    v = m.vcpu
    v.set_budget(20)
    assert v.run().kind == "intr"
    assert v.ready_for_interrupt_injection
    v.interrupt(0x20)
    assert v.get_vcpu_events().interrupt.injected == 1
    v.set_budget(None)
    ex = v.run()
    assert (ex.port, bytes(ex.data)) == (0x80, b"\x20")
    ex = v.run()
    assert ex.port == 0x81
    assert v.get_regs().rflags & 0x200 == 0  # IF cleared by delivery


def test_long_mode_idt_exceptions(m) -> None:  # type: ignore[no-untyped-def]
    src = LONG_IDT + """
        GATE 0, de
        GATE 6, udh
        GATE 13, gph
        GATE 14, pfh
        GATE 0x40, ext
        lidt [rel idtr]
        xor ecx, ecx
        div ecx                 ; #DE
        ud2                     ; #UD
        mov rax, 0x8000000000000000
        mov rax, [rax]          ; non-canonical: #GP(0)
        mov rax, 0x40000000
        mov byte [rax], 1       ; beyond the 1 GiB identity map: #PF
        sti
    spin: jmp spin
    de:  mov al, 0
         out 0x80, al
         add qword [rsp], 2     ; skip the 2-byte div
         iretq
    udh: mov al, 6
         out 0x80, al
         add qword [rsp], 2
         iretq
    gph: mov al, 13
         out 0x80, al
         pop rax                ; error code
         out 0x81, eax
         add qword [rsp], 3
         iretq
    pfh: mov al, 14
         out 0x80, al
         pop rax
         out 0x81, eax
         mov rax, cr2
         out 0x82, eax
         add qword [rsp], 3
         iretq
    ext: mov al, 0x40
         out 0x80, al
         hlt
    """
    m.long(src)
    m.vcpu.set_budget(100000)
    seen = []
    for _ in range(12):
        ex = m.run()
        if ex.kind != "io":
            break
        seen.append((ex.port, int.from_bytes(bytes(ex.data), "little")))
    assert seen[:3] == [(0x80, 0), (0x80, 6), (0x80, 13)]
    assert seen[3] == (0x81, 0)
    assert seen[4:7] == [(0x80, 14), (0x81, 2), (0x82, 0x40000000)]
    assert ex.kind == "intr" and m.vcpu.if_flag  # spinning with interrupts enabled
    m.vcpu.set_budget(None)
    m.vcpu.interrupt(0x40)
    ex = m.run()
    assert (ex.port, bytes(ex.data)) == (0x80, b"\x40")
    assert m.run().kind == "hlt"
    assert m.vcpu.get_sregs().cr2 == 0x40000000


def test_triple_fault_is_shutdown_until_rip_moves(m) -> None:  # type: ignore[no-untyped-def]
    m.long("ud2\nhlt")
    s = m.vcpu.get_sregs()
    s.idt.limit = 0
    m.vcpu.set_sregs(s)
    assert m.run().kind == "shutdown"
    assert m.run().kind == "shutdown"
    r = m.regs()
    r.rip += 2
    m.vcpu.set_regs(r)
    assert m.run().kind == "hlt"


def test_double_fault_vector(m) -> None:  # type: ignore[no-untyped-def]
    src = LONG_IDT + """
        GATE 8, dfh
        lidt [rel idtr]
        ; make the #GP gate not present: #GP -> #NP while delivering -> #DF
        mov rax, 0x8000000000000000
        mov rax, [rax]
    dfh: mov al, 8
         out 0x80, al
         pop rax
         out 0x81, eax
         hlt
    """
    m.long(src)
    ex = m.run()
    assert (ex.port, bytes(ex.data)) == (0x80, b"\x08")
    ex = m.run()
    assert bytes(ex.data) == b"\0\0\0\0"


def test_interrupt_window_and_sti_shadow(m) -> None:  # type: ignore[no-untyped-def]
    m.real("""
        cli
        out 0x80, al
        sti
        nop
        nop
        hlt
    """)
    v = m.vcpu
    assert m.run().kind == "io"
    assert not v.ready_for_interrupt_injection
    v.request_interrupt_window = True
    ex = v.run()
    assert ex.kind == "irq_window_open"
    assert v.get_regs().rip == 0x1000 + 1 + 2 + 1 + 1  # after sti and the shadowed nop
    assert v.ready_for_interrupt_injection and v.if_flag
    v.request_interrupt_window = False
    assert v.run().kind == "hlt"


def test_mov_ss_shadow_in_events(m) -> None:  # type: ignore[no-untyped-def]
    m.real("mov ax, 0\nmov ss, ax\nnop\nhlt")
    v = m.vcpu
    v.set_budget(2)
    assert v.run().kind == "intr"
    ev = v.get_vcpu_events()
    assert ev.interrupt.shadow == uapi.KVM_X86_SHADOW_INT_MOV_SS
    assert ev.flags & uapi.KVM_VCPUEVENT_VALID_SHADOW
    v.set_budget(None)
    assert v.run().kind == "hlt"
    assert v.get_vcpu_events().interrupt.shadow == 0


def test_nmi(m) -> None:  # type: ignore[no-untyped-def]
    m.real("""
        mov word [2*4], nmi
        mov word [2*4+2], 0
    spin: jmp spin
    nmi: out 0x80, al
        iret
    """)
    v = m.vcpu
    v.set_budget(10)
    v.run()
    v.nmi()
    assert v.get_vcpu_events().nmi.pending == 1
    v.set_budget(None)
    ex = v.run()
    assert ex.port == 0x80
    assert v.get_vcpu_events().nmi.masked == 1


def test_paging_fault_error_codes(m) -> None:  # type: ignore[no-untyped-def]
    # 4 KiB pages: PML4 at 0x20000 -> PDPT 0x21000 -> PD 0x22000 -> PT 0x23000
    ram = m.ram
    ram[0x20000:0x20008] = struct.pack("<Q", 0x21000 | 7)
    ram[0x21000:0x21008] = struct.pack("<Q", 0x22000 | 7)
    ram[0x22000:0x22008] = struct.pack("<Q", 0x23000 | 7)
    for i in range(512):  # identity map the first 2 MiB as 4 KiB pages, user + writable
        ram[0x23000 + 8 * i: 0x23008 + 8 * i] = struct.pack("<Q", (i << 12) | 7)
    ram[0x23000 + 8 * 0x50: 0x23008 + 8 * 0x50] = struct.pack("<Q", (0x50 << 12) | 5)  # RO
    ram[0x23000 + 8 * 0x51: 0x23008 + 8 * 0x51] = struct.pack("<Q", 0)  # not present
    ram[0x23000 + 8 * 0x52: 0x23008 + 8 * 0x52] = struct.pack("<Q", (0x52 << 12) | 3)  # sup
    m.long(LONG_IDT + """
        GATE 14, pfh
        lidt [rel idtr]
        mov rax, 0x50000
        mov rbx, [rax]          ; read of a read-only page: fine, sets A
        mov byte [rax], 1       ; write, present, CR0.WP: err 3
        mov rbx, [0x51000]      ; not present: err 0
        hlt
    pfh: pop rax
         out 0x81, eax
         mov rax, cr2
         out 0x82, eax
         add qword [rsp], 3
         iretq
    """, at=0x1000, rsp=0x8000)
    s = m.vcpu.get_sregs()
    s.cr3 = 0x20000
    m.vcpu.set_sregs(s)
    out = []
    for _ in range(6):
        ex = m.run()
        if ex.kind != "io":
            break
        out.append(int.from_bytes(bytes(ex.data), "little"))
    assert out[:2] == [3, 0x50000]
    assert out[2] == 0 and out[3] == 0x51000 or out[2:4] == [0, 0x51000]
    pte = struct.unpack("<Q", ram[0x23000 + 8 * 0x50: 0x23008 + 8 * 0x50])[0]
    assert pte & 0x20 and not pte & 0x40  # accessed, not dirty


def test_single_step_and_breakpoints(m) -> None:  # type: ignore[no-untyped-def]
    m.long("nop\nnop\nint3\nnop\nhlt")
    v = m.vcpu
    v.set_guest_debug(uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_SINGLESTEP)
    ex = v.run()
    assert isinstance(ex, DebugExit) and ex.exception == 1 and ex.pc == 0x100001
    assert ex.dr6 == 0xFFFF4FF0
    v.set_guest_debug(uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_USE_SW_BP)
    ex = v.run()
    assert ex.exception == 3 and ex.pc == 0x100002 and v.get_regs().rip == 0x100002
    r = v.get_regs()
    r.rip += 1
    v.set_regs(r)
    dr = [0x100004, 0, 0, 0, 0, 0, 0, 0x1]
    v.set_guest_debug(uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_USE_HW_BP, dr)
    ex = v.run()
    assert ex.exception == 1 and ex.pc == 0x100004 and ex.dr6 & 1
    assert v.run().kind == "hlt"  # resumes past the breakpoint
    v.set_guest_debug(0)


def test_guest_debug_inject_bp(m) -> None:  # type: ignore[no-untyped-def]
    m.real("""
        mov word [3*4], bp_handler
        mov word [3*4+2], 0
        out 0x81, al
        hlt
    bp_handler:
        out 0x80, al
        iret
    """)
    v = m.vcpu
    assert m.run().port == 0x81
    v.set_guest_debug(uapi.KVM_GUESTDBG_ENABLE | uapi.KVM_GUESTDBG_INJECT_BP)
    ex = v.run()
    assert ex.port == 0x80
    v.set_guest_debug(0)
    assert v.run().kind == "hlt"


def test_trap_flag_single_step_trap(m) -> None:  # type: ignore[no-untyped-def]
    m.real("""
        mov word [1*4], db_handler
        mov word [1*4+2], 0
        pushf
        pop ax
        or ax, 0x100
        push ax
        popf                    ; TF=1 from the next instruction on
        nop
        nop
        hlt
    db_handler:
        inc si
        iret
    """)
    r = m.regs()
    r.rsi = 0
    m.vcpu.set_regs(r)
    assert m.run().kind == "hlt"
    r = m.regs()
    assert r.rsi >= 2  # a trap after each traced instruction
    assert m.vcpu.get_debugregs().dr6 & 0x4000
