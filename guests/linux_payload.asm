; build: nasm -f bin
; linux_payload.asm -- a stand-in for a bzImage's protected-mode kernel.
;
; The tests put a Linux setup header in front of it (tests/unit/loader/
; test_bzimage.py writes one) and boot it through kvmcpu's boot-protocol loader,
; which loads these bytes at the kernel's load address. Both entries report
; what the boot protocol gave them over COM1 and exit through isa-debug-exit
; (status 1):
;
;   offset 0x000: the 32-bit entry (protected mode, paging off, ESI = zero page)
;   offset 0x200: the 64-bit entry startup_64 (long mode, RSI = zero page)
;
; each prints one line:
;
;   linux32|linux64: cs=C ds=D loader=L e820=N initrd=SIZE:TEXT cmdline=CMDLINE
;
; C and D are the CS and DS selectors (decimal), L the zero page's
; type_of_loader, N its e820_entries, SIZE its ramdisk_size and TEXT the
; NUL-terminated string the initrd starts with (the test's initrd has one),
; CMDLINE the string at cmd_line_ptr. The code is position independent: the
; loader may put it at 1 MiB or at pref_address. The boot protocol gives no
; stack: the stub uses the memory below the zero page.

bits 32
entry32:
    cld
    mov ebx, esi                            ; the zero page
    mov esp, esi                            ; a stack below it (the protocol gives none)
    call .here                              ; EBP = the load address + (.here - $$)
.here:
    pop ebp
    sub ebp, .here - entry32
    lea esi, [ebp + msg32 - entry32]
    call puts32
    mov ax, cs
    movzx eax, ax
    call putdec32
    lea esi, [ebp + msg_ds - entry32]
    call puts32
    mov ax, ds
    movzx eax, ax
    call putdec32
    lea esi, [ebp + msg_loader - entry32]
    call puts32
    movzx eax, byte [ebx + 0x210]           ; hdr.type_of_loader
    call putdec32
    lea esi, [ebp + msg_e820 - entry32]
    call puts32
    movzx eax, byte [ebx + 0x1e8]           ; e820_entries
    call putdec32
    lea esi, [ebp + msg_initrd - entry32]
    call puts32
    mov eax, [ebx + 0x21c]                  ; hdr.ramdisk_size
    call putdec32
    mov al, ':'
    call putc32
    mov esi, [ebx + 0x218]                  ; hdr.ramdisk_image
    test esi, esi
    jz .no_initrd
    call puts32
.no_initrd:
    lea esi, [ebp + msg_cmdline - entry32]
    call puts32
    mov esi, [ebx + 0x228]                  ; hdr.cmd_line_ptr
    call puts32
    mov al, 10
    call putc32
    xor eax, eax
    out 0xf4, al                            ; isa-debug-exit: status 1
.halt:
    cli
    hlt
    jmp .halt

putc32:
    push edx
    push eax
    mov dx, 0x3fd
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop eax
    mov dx, 0x3f8
    out dx, al
    pop edx
    ret

puts32:
    push eax
.next:
    lodsb
    test al, al
    jz .done
    call putc32
    jmp .next
.done:
    pop eax
    ret

putdec32:
    push ebx
    push ecx
    push edx
    mov ebx, 10
    xor ecx, ecx
.div:
    xor edx, edx
    div ebx
    push edx
    inc ecx
    test eax, eax
    jnz .div
.out:
    pop eax
    add al, '0'
    call putc32
    loop .out
    pop edx
    pop ecx
    pop ebx
    ret

msg32:      db "linux32: cs=", 0
msg_ds:     db " ds=", 0
msg_loader: db " loader=", 0
msg_e820:   db " e820=", 0
msg_initrd: db " initrd=", 0
msg_cmdline: db " cmdline=", 0

    times 0x200 - ($ - $$) db 0

bits 64
startup_64:
    cld
    mov rbx, rsi                            ; the zero page
    mov rsp, rsi                            ; a stack below it
    lea rsi, [rel msg64]
    call puts
    mov ax, cs
    movzx eax, ax
    call putdec
    lea rsi, [rel msg_ds]
    call puts
    mov ax, ds
    movzx eax, ax
    call putdec
    lea rsi, [rel msg_loader]
    call puts
    movzx eax, byte [rbx + 0x210]
    call putdec
    lea rsi, [rel msg_e820]
    call puts
    movzx eax, byte [rbx + 0x1e8]
    call putdec
    lea rsi, [rel msg_initrd]
    call puts
    mov eax, [rbx + 0x21c]
    call putdec
    mov al, ':'
    call putc
    mov esi, [rbx + 0x218]
    test esi, esi
    jz .no_initrd
    call puts
.no_initrd:
    lea rsi, [rel msg_cmdline]
    call puts
    mov esi, [rbx + 0x228]
    call puts
    mov al, 10
    call putc
    xor eax, eax
    out 0xf4, al
.halt:
    cli
    hlt
    jmp .halt

%include "lib/uart.inc"

msg64:      db "linux64: cs=", 0
