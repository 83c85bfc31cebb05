; build: nasm -f bin
; hello64.asm -- hello.asm's output from an ELF64 executable (the ELF loader's test image).
;
; The ELF header and its single PT_LOAD program header are written by hand so
; that `nasm -f bin` produces the executable directly. The segment covers the
; whole file at physical = virtual address 0x100000 (1 MiB) plus 16 KiB of BSS
; (the stack); e_entry is `_start`. The loader starts it in 64-bit long mode at
; CPL0 with identity-mapped paging (the CPU's set_long_mode), so it only sets
; its stack and prints to the UART at 0x3f8:
;
;     Hello from kvmcpu!
;     fw_cfg signature: QEMU
;     fw_cfg cpus: 1
;
; then writes 0 to isa-debug-exit (port 0xf4: exit status 1) and halts. The
; printing is hello.asm's own (lib/say_hello.inc, lib/uart.inc).

bits 64
org 0x100000

%include "lib/exit.inc"

BSS_SIZE    equ 0x4000

ehdr:
    db 0x7f, "ELF", 2, 1, 1, 0              ; ELFCLASS64, little-endian, version 1, SysV
    times 8 db 0
    dw 2                                    ; e_type: ET_EXEC
    dw 62                                   ; e_machine: EM_X86_64
    dd 1                                    ; e_version
    dq _start                               ; e_entry
    dq phdr - $$                            ; e_phoff
    dq 0                                    ; e_shoff
    dd 0                                    ; e_flags
    dw ehdr_end - ehdr                      ; e_ehsize (64)
    dw phdr_end - phdr                      ; e_phentsize (56)
    dw 1                                    ; e_phnum
    dw 64                                   ; e_shentsize
    dw 0                                    ; e_shnum
    dw 0                                    ; e_shstrndx
ehdr_end:

phdr:
    dd 1                                    ; p_type: PT_LOAD
    dd 7                                    ; p_flags: R W X
    dq 0                                    ; p_offset
    dq $$                                   ; p_vaddr
    dq $$                                   ; p_paddr
    dq file_end - $$                        ; p_filesz
    dq file_end - $$ + BSS_SIZE             ; p_memsz
    dq 0x1000                               ; p_align
phdr_end:

STACK_TOP   equ 0x100000 + (file_end - $$) + BSS_SIZE

_start:
    cli
    mov rsp, (STACK_TOP) & ~15

    call say_hello

    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    HALT_FOREVER

%include "lib/say_hello.inc"
%include "lib/uart.inc"

file_end:
