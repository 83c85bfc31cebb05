; build: nasm -f bin
; irq.asm -- timer interrupts through the 8259A PIC and the 8254 PIT.
;
; A Multiboot v1 kernel (a.out kludge, flat image loaded at 1 MiB, entry
; `start32` at 0x100020, started in 32-bit protected mode like hello.asm; the
; header, entry and long-mode switch are lib/multiboot_long.inc). It enters long
; mode and stays at CPL0 (on hosts that run CPL0 in KVM's emulator that is
; slower but correct; interrupts injected at CPL3 would shut the guest down
; there), then:
;
;   1. fills a 48-entry IDT (in the BSS page after the boot stack): vectors
;      0-31 -> exception handler (prints "irq: unexpected exception", exit
;      status 5), vector 0x20 -> timer handler (counts, non-specific EOI),
;      0x21-0x2f -> plain iretq (spurious);
;   2. initialises both PICs (ICW1 0x11, ICW2 0x20/0x28, ICW3 0x04/0x02,
;      ICW4 0x01) and masks everything but IRQ 0;
;   3. programs PIT channel 0 in mode 2 (rate generator), lobyte/hibyte, count
;      1193: 1193182 Hz / 1193 = 1000.15 Hz;
;   4. loops `sti; hlt; cli` until TICKS (10) timer interrupts were counted,
;      prints "irq: 10 timer interrupts" and writes 0 to isa-debug-exit
;      (exit status 1).
;
; The same ports drive KVM's in-kernel PIC and PIT when the VM has them.
; Simulated time needed: 10 periods of 1193 PIT cycles, about 10 ms.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"

IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000

TICKS       equ 10
PIC1        equ 0x20
PIC2        equ 0xa0
PIT_CH0     equ 0x40
PIT_CMD     equ 0x43

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    ; IDT: 48 interrupt gates (type 0xE, DPL0, present) in code segment 0x08.
    mov rdi, IDT
    xor ecx, ecx
.idt_loop:
    lea rax, [rel exc_handler]
    cmp ecx, 0x20
    jb .set
    lea rax, [rel timer_handler]
    je .set
    lea rax, [rel other_irq]
.set:
    IDT64_GATE
    add rdi, 16
    inc ecx
    cmp ecx, 48
    jb .idt_loop
    lidt [rel idt_ptr]

    ; PICs: edge triggered, cascade, vectors 0x20-0x2f; only IRQ 0 unmasked.
    PIC_INIT 0xFE, 0xFF

    ; PIT channel 0: mode 2, lobyte/hibyte, binary, count 1193.
    mov al, 0x34
    out PIT_CMD, al
    mov al, 1193 & 0xff
    out PIT_CH0, al
    mov al, 1193 >> 8
    out PIT_CH0, al

.wait:
    sti
    hlt
    cli
    cmp qword [rel ticks], TICKS
    jb .wait

    mov al, 0xFF                            ; mask the timer again
    out PIC1 + 1, al
    lea rsi, [rel msg_irq]
    call puts
    mov rax, [rel ticks]
    call putdec
    lea rsi, [rel msg_timer]
    call puts

    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    HALT_FOREVER

timer_handler:
    push rax
    inc qword [rel ticks]
    mov al, 0x20                            ; non-specific EOI
    out PIC1, al
    pop rax
    iretq

other_irq:
    inc qword [rel spurious]
    iretq

exc_handler:
    lea rsi, [rel msg_exc]
    call puts
    DEBUG_EXIT_WRITE 2                      ; exit status (2 << 1) | 1 = 5
    jmp exc_handler

%include "lib/uart.inc"

align 8
idt_ptr:
    dw 48 * 16 - 1
    dq IDT

align 8
ticks:      dq 0
spurious:   dq 0
msg_irq:    db "irq: ", 0
msg_timer:  db " timer interrupts", 10, 0
msg_exc:    db "irq: unexpected exception", 10, 0

load_end:
