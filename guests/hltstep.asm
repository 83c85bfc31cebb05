; build: nasm -f bin
; hltstep.asm -- single steps over HLT, for a debugger (tests/system/test_gdb_hlt.py).
;
; A Multiboot v1 kernel (lib/multiboot_long.inc: loaded at 1 MiB, 64-bit CPL0).
; It points vector 0x20 at `irq0` (counts in `ticks`, EOIs) and every other
; vector at an exit with status 253, programs the 8259 pair (only IRQ 0 unmasked)
; and the PIT (channel 0, mode 2, 100 Hz), then runs three HLTs at fixed
; addresses, so a test knows them without a symbol table:
;   0x100401 `hlt_irq`      IF=1 (after STI), no interrupt pending yet: the PIT's
;                            next tick wakes it;
;   0x100428 `hlt_pending`  IF=1, IRQ 0 already pending in the 8259's IRR (the
;                            PIT reprogrammed to one edge in mode 0, the IRR
;                            polled with interrupts off before the STI);
;   0x100438 `hlt_none`     IF=0, every IRQ masked: nothing wakes it.
; After each of the first two the handler has run (ticks counts it); the third
; is the end: a debugger moving RIP past it reaches `after_none`, which writes
; the tick count (capped at 0x7f) to isa-debug-exit.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"

PIC1        equ 0x20
PIC2        equ 0xA0
IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    mov rdi, IDT
    xor ecx, ecx
.idt_loop:
    lea rax, [rel exc_handler]
    cmp ecx, 0x20
    jne .set
    lea rax, [rel irq0]
.set:
    IDT64_GATE
    add rdi, 16
    inc ecx
    cmp ecx, 0x30
    jb .idt_loop
    lidt [rel idt_ptr]
    PIC_INIT 0xFE, 0xFF
    mov al, 0x34                            ; PIT channel 0, lobyte/hibyte, mode 2
    out 0x43, al
    mov ax, 11932                           ; 1193182 Hz / 11932: 100 Hz
    out 0x40, al
    mov al, ah
    out 0x40, al
    jmp step_sites

    times 0x400 - ($ - $$) db 0xCC
step_sites:                                 ; 0x100400
    sti
hlt_irq:                                    ; 0x100401
    hlt
after_irq:
    cli
    mov al, 0x30                            ; PIT channel 0, mode 0, count 2: one
    out 0x43, al                            ; edge about 2 us from now
    mov al, 2
    out 0x40, al
    xor eax, eax
    out 0x40, al
    jmp .poll
    times 0x41D - ($ - $$) db 0xCC            ; so that the STI is just before 0x100428
.poll:                                      ; OCW3: read the master's IRR
    mov al, 0x0A
    out PIC1, al
    in al, PIC1
    test al, 1
    jz .poll
    sti
%if $ - $$ != 0x428
%error hlt_pending must be at 0x100428
%endif
hlt_pending:                                ; 0x100428
    hlt
after_pending:
    cli
    mov al, 0xFF                            ; mask every IRQ
    out PIC1 + 1, al
    jmp .none
    times 0x438 - ($ - $$) db 0xCC
.none:
hlt_none:                                   ; 0x100438
    hlt
after_none:
    mov rax, [rel ticks]
    cmp rax, 0x7f
    jbe .out
    mov eax, 0x7f
.out:
    out DEBUG_EXIT, al
    HALT_FOREVER

irq0:
    inc qword [rel ticks]
    push rax
    mov al, 0x20
    out PIC1, al
    pop rax
    iretq

exc_handler:
    DEBUG_EXIT_WRITE 0x7E                   ; exit status (0x7e << 1) | 1 = 253
    HALT_FOREVER

align 8
idt_ptr:
    dw 0x30 * 16 - 1
    dq IDT
ticks:      dq 0

load_end:
