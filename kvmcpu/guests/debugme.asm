; build: nasm -f elf64, ld
; debugme.asm -- a tiny ELF64 kernel with a symbol table, to debug (gdb, PC events).
;
; Unlike the other guests it is an object file linked by ld (build.py: the
; `; build:` line above), so the image keeps its symbols: `gdb debugme.bin`
; knows `_start`, `compute`, `loop_top`, `finish` and the variable `counter`.
; The loader starts it in 64-bit long mode at CPL0 (identity-mapped paging),
; linked at 1 MiB. It calls compute(i) = i*i + 1 for i = 0..7, adding each
; result to `counter` (148 in the end), then writes `counter & 0x7f` (20) to
; isa-debug-exit: exit status (20 << 1) | 1 = 41. Changing `counter` in a
; debugger changes the status.

bits 64
default rel

global _start:function, compute:function, loop_top, finish, counter:data 8

DEBUG_EXIT  equ 0xf4
ROUNDS      equ 8

section .text
_start:
    mov rsp, stack_top
    xor ebx, ebx
loop_top:
    mov rdi, rbx
    call compute
    add [counter], rax
    inc ebx
    cmp ebx, ROUNDS
    jb loop_top
finish:
    mov rax, [counter]
    and eax, 0x7f
    out DEBUG_EXIT, al
.halt:
    cli
    hlt
    jmp .halt

; rax = rdi * rdi + 1
compute:
    mov rax, rdi
    imul rax, rdi
    inc rax
    ret

section .data
align 8
counter:
    dq 0

section .bss
align 16
    resb 4096
stack_top:
