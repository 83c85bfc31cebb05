; build: nasm -f bin
; checkpoint.asm -- asks the simulator for a checkpoint in the middle of its run.
;
; A Multiboot v1 kernel (a.out kludge, flat image loaded at 1 MiB, entry
; `start32` at 0x100020, started in 32-bit protected mode) that enters long
; mode (CPL0, the 2 MiB page holding the m5ops page at 0xFFFF0000 mapped; all
; of that is lib/multiboot_long.inc) and:
;
;   1. computes 1 + 2 + ... + 100 = 5050 into RBX and into memory (`sum`),
;      then prints "checkpoint: before";
;   2. calls gem5's m5_checkpoint(delay=0, period=0): RDI = RSI = 0 and a load
;      from 0xFFFF0000 + (0x43 << 8) (an MMIO read the m5ops device answers);
;   3. prints "checkpoint: after, sum=5050 (register) 5050 (memory)", proving
;      that registers and memory came back intact when the run is resumed from
;      the checkpoint instead;
;   4. writes 0 to isa-debug-exit (exit status 1).
;
; Output of a full run, and of a run restored from the checkpoint (which only
; prints the second line):
;     checkpoint: before
;     checkpoint: after, sum=5050 (register) 5050 (memory)

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"

BSS_END     equ BSS_BOOT_END                ; page tables and stack only

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    xor ebx, ebx
    mov ecx, 100
.sum:
    add rbx, rcx
    loop .sum
    mov [rel sum], rbx

    lea rsi, [rel msg_before]
    call puts

    xor edi, edi                            ; delay (ns)
    xor esi, esi                            ; period (ns)
    M5OP M5OP_CHECKPOINT                    ; m5_checkpoint(0, 0)

    lea rsi, [rel msg_after]
    call puts
    mov rax, rbx
    call putdec
    lea rsi, [rel msg_reg]
    call puts
    mov rax, [rel sum]
    call putdec
    lea rsi, [rel msg_mem]
    call puts

    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    HALT_FOREVER

%include "lib/uart.inc"

align 8
sum:        dq 0
msg_before: db "checkpoint: before", 10, 0
msg_after:  db "checkpoint: after, sum=", 0
msg_reg:    db " (register) ", 0
msg_mem:    db " (memory)", 10, 0

load_end:
