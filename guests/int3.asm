; build: nasm -f bin
; int3.asm -- a guest that uses INT3 itself (as Linux does when it patches its
; text), to test that a debugger's software breakpoints leave the guest's own
; #BP to the guest.
;
; A Multiboot v1 kernel (lib/multiboot_long.inc: loaded at 1 MiB, enters long
; mode, stays at CPL0). Vector 3 counts in `bps` and returns (iretq: to the
; instruction after the INT3); any other exception exits with status 5. It
; executes INT3 three times, then `after_bps` (the instruction after the
; third) writes the count to isa-debug-exit: exit status (3 << 1) | 1 = 7.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"

IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    mov rdi, IDT
    xor ecx, ecx
.idt_loop:
    lea rax, [rel exc_handler]
    cmp ecx, 3
    jne .set
    lea rax, [rel bp_handler]
.set:
    IDT64_GATE
    add rdi, 16
    inc ecx
    cmp ecx, 32
    jb .idt_loop
    lidt [rel idt_ptr]
    int3
    int3
    int3
after_bps:
    mov rax, [rel bps]
    out DEBUG_EXIT, al
    HALT_FOREVER

bp_handler:
    inc qword [rel bps]
    iretq

exc_handler:
    DEBUG_EXIT_WRITE 2                      ; exit status (2 << 1) | 1 = 5
    HALT_FOREVER

align 8
idt_ptr:
    dw 32 * 16 - 1
    dq IDT
bps:        dq 0

load_end:
