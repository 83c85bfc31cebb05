; build: nasm -f bin
; fallback.asm -- instructions KVM's emulator may refuse at CPL0, with fixed inputs.
;
; A Multiboot v1 kernel (lib/multiboot_long.inc: loaded at 1 MiB, enters long
; mode, stays at CPL0). Where KVM emulates CPL0 code, its emulator stops at
; several of these with KVM_INTERNAL_ERROR_EMULATION and the emulation fallback
; (kvmcpu/cpu/kvm/fallback.py) runs them on the mock; elsewhere the CPU runs
; them. Either way the guest prints the same line:
;
;   fallback: R0 R1 ... R12
;
; (13 values, 16 hex digits each), then writes 0 to isa-debug-exit (exit
; status 1). The results:
;   R0  popcnt rax, rbx        (rbx = 0x0123456789abcdef)
;   R1  popcnt ecx, [mem32]    (0xf00f0001; rcx = 0xffff... before)
;   R2  ZF of a lock cmpxchg16b that succeeds, R3/R4 the 16 bytes after it
;   R5  ZF of a cmpxchg16b that fails, R6/R7 its rax/rdx (the memory's value)
;   R8  ZF of a cmpxchg8b that succeeds, R9 the 8 bytes after it
;   R10 rdtscp: 1 << 32 when the TSC it read is not 0, | ECX (TSC_AUX, 0)
;   R11 popcnt rax, [MMIO_ADDR]: an MMIO read (the test maps a device there
;       that answers 0x00ff00ff00ff00ff and raises IRQ 5 on the read)
;   R12 IRQ 5 interrupts taken (vector 0x25) by the end: 1 (the guest waits
;       for it with sti; hlt, so a lost interrupt ends the run "halted")
; Any exception prints "fallback: exception" and exits with status 5.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"

IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000
MMIO_ADDR   equ 0x20000000                  ; 512 MiB: inside the mapped GiB, not RAM
PIC1        equ 0x20
PIC2        equ 0xa0
NRESULTS    equ 13

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    ; IDT: 48 interrupt gates; 0-31 -> exc_handler, 0x25 -> irq5, others -> iretq.
    mov rdi, IDT
    xor ecx, ecx
.idt_loop:
    lea rax, [rel exc_handler]
    cmp ecx, 0x20
    jb .set
    lea rax, [rel irq5_handler]
    cmp ecx, 0x25
    je .set
    lea rax, [rel other_irq]
.set:
    IDT64_GATE
    add rdi, 16
    inc ecx
    cmp ecx, 48
    jb .idt_loop
    lidt [rel idt_ptr]

    ; PICs: vectors 0x20-0x2f, only IRQ 5 unmasked.
    PIC_INIT 0xDF, 0xFF

    lea rdi, [rel results]

    ; R0, R1: popcnt from a register and from memory (32-bit, zero-extends).
    mov rbx, 0x0123456789abcdef
    popcnt rax, rbx
    mov [rdi], rax
    mov rcx, -1
    popcnt ecx, [rel mem32]
    mov [rdi + 8], rcx

    ; R2-R4: lock cmpxchg16b that succeeds.
    mov rax, 0x1111
    mov rdx, 0x2222
    mov rbx, 0x3333
    mov rcx, 0x4444
    lock cmpxchg16b [rel mem16]
    setz al
    movzx eax, al
    mov [rdi + 16], rax
    mov rax, [rel mem16]
    mov [rdi + 24], rax
    mov rax, [rel mem16 + 8]
    mov [rdi + 32], rax

    ; R5-R7: cmpxchg16b that fails (rdx:rax gets the memory's value).
    xor eax, eax
    xor edx, edx
    cmpxchg16b [rel mem16]
    setz bl
    movzx ebx, bl
    mov [rdi + 40], rbx
    mov [rdi + 48], rax
    mov [rdi + 56], rdx

    ; R8, R9: cmpxchg8b that succeeds.
    mov eax, 0x77778888
    mov edx, 0x55556666
    mov ebx, 0xbbbbcccc
    mov ecx, 0x9999aaaa
    cmpxchg8b [rel mem8]
    setz al
    movzx eax, al
    mov [rdi + 64], rax
    mov rax, [rel mem8]
    mov [rdi + 72], rax

    ; R10: rdtscp: ECX (TSC_AUX, never written: 0) in the low half, 1 in the
    ; high half when EDX:EAX (the TSC) is not zero.
    mov ecx, -1
    rdtscp
    shl rdx, 32
    or rax, rdx
    setnz al
    movzx eax, al
    shl rax, 32
    or rax, rcx
    mov [rdi + 80], rax

    ; R11, R12: an MMIO read by the fallback; the device raises IRQ 5 meanwhile.
    sti
    popcnt rax, [MMIO_ADDR]
    mov [rdi + 88], rax
.wait:
    cmp qword [rel irqs], 0
    jne .got
    hlt
    jmp .wait
.got:
    cli
    mov rax, [rel irqs]
    mov [rdi + 96], rax

    lea rsi, [rel msg_head]
    call puts
    lea rbx, [rel results]
    mov ecx, NRESULTS
.print:
    mov al, ' '
    call putc
    mov rax, [rbx]
    call puthex64
    add rbx, 8
    dec ecx
    jnz .print
    mov al, 10
    call putc

    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    HALT_FOREVER

irq5_handler:
    push rax
    inc qword [rel irqs]
    mov dword [MMIO_ADDR + 8], 0            ; the device lowers its line
    mov al, 0x20                            ; non-specific EOI
    out PIC1, al
    pop rax
    iretq

other_irq:
    iretq

exc_handler:
    lea rsi, [rel msg_exc]
    call puts
    DEBUG_EXIT_WRITE 2                      ; exit status (2 << 1) | 1 = 5
    jmp exc_handler

%include "lib/puthex64.inc"

%include "lib/uart.inc"

align 8
idt_ptr:
    dw 48 * 16 - 1
    dq IDT

align 16
mem16:      dq 0x1111, 0x2222
mem8:       dq 0x5555666677778888
mem32:      dd 0xf00f0001
align 8
irqs:       dq 0
results:    times NRESULTS dq 0
msg_head:   db "fallback:", 0
msg_exc:    db "fallback: exception", 10, 0

load_end:
