; build: nasm -f bin
; apic_timer.asm -- LAPIC timer interrupts as fast as the guest can take them
; (the fixture of benchmarks/bench_apic_timer.py).
;
; A Multiboot v1 kernel started like apic.asm (64-bit CPL0). It masks the 8259
; pair, software-enables the local APIC, programs its timer periodic (vector
; 0x31, divide by 1, count 20000: 20 us at a 1 GHz APIC bus) and waits with
; `sti; hlt` until it has taken N interrupts, N being the last word of the
; Multiboot command line in decimal (1000 without one). Each handler counts and
; writes the EOI register. Then it prints "apic_timer: N ticks" and writes 0 to
; isa-debug-exit (exit status 1).

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"

IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000
LAPIC       equ 0xFEE00000
PERIOD      equ 20000

main:
    mov rax, LAPIC | 0x9B                   ; PD3 entry 503: the LAPIC page, uncached
    mov [PD3 + 503 * 8], rax
    mov rax, cr3
    mov cr3, rax

    ; N from the command line's last word.
    mov qword [rel wanted], 1000
    MB_CMDLINE .no_cmdline
    xor ecx, ecx                            ; the number being read
    xor edx, edx                            ; 1 once a digit was seen in this word
.scan:
    lodsb
    test al, al
    jz .end
    cmp al, ' '
    jne .digit
    xor edx, edx
    jmp .scan
.digit:
    sub al, '0'
    cmp al, 9
    ja .not_digit
    test edx, edx
    jnz .more
    xor ecx, ecx
    mov edx, 1
.more:
    imul ecx, ecx, 10
    movzx eax, al
    add ecx, eax
    jmp .scan
.not_digit:
    xor edx, edx
    xor ecx, ecx
    jmp .scan
.end:
    test ecx, ecx
    jz .no_cmdline
    mov [rel wanted], rcx
.no_cmdline:

    ; IDT: every vector -> plain iretq, except 0x31 -> the timer handler.
    mov rdi, IDT
    xor ecx, ecx
.idt_loop:
    lea rax, [rel other]
    cmp ecx, 0x31
    jne .set
    lea rax, [rel timer]
.set:
    IDT64_GATE
    add rdi, 16
    inc ecx
    cmp ecx, 256
    jb .idt_loop
    lidt [rel idt_ptr]

    mov al, 0xFF                            ; mask the 8259 pair
    out 0x21, al
    out 0xa1, al

    mov r11, LAPIC
    mov dword [r11 + 0xF0], 0x1FF           ; SVR: software enable
    mov dword [r11 + 0x3E0], 0xB            ; divide by 1
    mov dword [r11 + 0x320], (1 << 17) | 0x31
    mov dword [r11 + 0x380], PERIOD
    mov rbx, [rel wanted]
.wait:
    sti
    hlt
    cli
    cmp [rel ticks], rbx
    jb .wait
    mov dword [r11 + 0x380], 0              ; stop

    lea rsi, [rel msg]
    call puts
    mov rax, [rel wanted]
    call putdec
    lea rsi, [rel msg_ticks]
    call puts
    DEBUG_EXIT_WRITE 0
    HALT_FOREVER

timer:
    push r11
    inc qword [rel ticks]
    mov r11, LAPIC + 0xB0
    mov dword [r11], 0                      ; EOI
    pop r11
    iretq

other:
    iretq

%include "lib/uart.inc"

align 8
idt_ptr:
    dw 256 * 16 - 1
    dq IDT
align 8
ticks:      dq 0
wanted:     dq 0
msg:        db "apic_timer: ", 0
msg_ticks:  db " ticks", 10, 0

load_end:
