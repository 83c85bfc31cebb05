; build: nasm -f bin
; hello.asm -- a Multiboot v1 kernel that says hello in 64-bit long mode.
;
; Layout: a.out-kludge Multiboot header (flags bit 16), flat image loaded at
; 1 MiB (load_addr = 0x100000), entry `start32` at 0x100020 (just after the
; header), BSS (page tables, stack) up to bss_end. Started by the loader in
; 32-bit flat protected mode with EAX = 0x2BADB002 and EBX = the Multiboot info
; (QEMU: 0x9500). lib/multiboot_long.inc holds the header, the 32-bit entry and
; the long-mode switch; lib/uart.inc, lib/say_hello.inc and lib/exit.inc the
; routines and macros below.
;
; What it does:
;   1. identity-maps the first 1 GiB with 2 MiB pages (plus the 2 MiB page at
;      0xFFE00000 holding the m5ops page) and enters long mode (CPL0);
;   2. prints to the 16550 UART at 0x3f8, polling LSR.THRE before each byte:
;          Hello from kvmcpu!
;          fw_cfg signature: QEMU          (fw_cfg key 0x0000, ports 0x510/0x511)
;          fw_cfg cpus: 1                  (fw_cfg key 0x0005, le16)
;          cmdline: <multiboot cmdline>    (only when MBI flags bit 2 is set)
;   3. writes 0 to isa-debug-exit (port 0xf4): QEMU exit status (0 << 1) | 1 = 1,
;      which by convention means "the guest finished normally";
;   4. falls back to `cli; hlt` forever if nothing stopped it.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"

BSS_END     equ BSS_BOOT_END                ; page tables and stack only

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    call say_hello

    ; The Multiboot command line, when the loader gave one.
    MB_CMDLINE .no_cmdline
    push rsi
    lea rsi, [rel msg_cmdline]
    call puts
    pop rsi
    call puts
    mov al, 10
    call putc
.no_cmdline:

    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    HALT_FOREVER

%include "lib/say_hello.inc"
%include "lib/uart.inc"

msg_cmdline: db "cmdline: ", 0

load_end:
