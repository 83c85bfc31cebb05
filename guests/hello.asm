; build: nasm -f bin
; hello.asm -- a Multiboot v1 kernel that says hello in 64-bit long mode.
;
; Layout: a.out-kludge Multiboot header (flags bit 16), flat image loaded at
; 1 MiB (load_addr = 0x100000), entry `start32` (0x100020 + header), BSS (page
; tables, stack) up to bss_end. Started by the loader in 32-bit flat protected
; mode with EAX = 0x2BADB002 and EBX = the Multiboot info (QEMU: 0x9500).
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

bits 32
org 0x100000

LOAD_ADDR   equ 0x100000
MB_MAGIC    equ 0x1BADB002
MB_FLAGS    equ 0x00010000                  ; address fields present (a.out kludge)
COM1        equ 0x3f8
DEBUG_EXIT  equ 0xf4
FW_CFG_SEL  equ 0x510
FW_CFG_DATA equ 0x511

; BSS, page-aligned after the loaded bytes.
BSS         equ LOAD_ADDR + ((load_end - $$ + 0xfff) & ~0xfff)
PML4        equ BSS
PDPT        equ BSS + 0x1000
PD0         equ BSS + 0x2000
PD3         equ BSS + 0x3000
STACK_TOP   equ BSS + 0x5000
BSS_END     equ BSS + 0x5000

mb_header:
    dd MB_MAGIC
    dd MB_FLAGS
    dd -(MB_MAGIC + MB_FLAGS)
    dd mb_header                            ; header_addr
    dd LOAD_ADDR                            ; load_addr
    dd load_end                             ; load_end_addr
    dd BSS_END                              ; bss_end_addr
    dd start32                              ; entry_addr

start32:
    cli
    mov esp, STACK_TOP
    mov [mb_eax], eax
    mov [mb_info], ebx

    ; Page tables: PML4[0] -> PDPT; PDPT[0] -> PD0 (1 GiB of 2 MiB pages),
    ; PDPT[3] -> PD3 whose last entry maps 0xFFE00000 (the m5ops page).
    mov edi, PML4
    xor eax, eax
    mov ecx, 4 * 1024
    rep stosd
    mov dword [PML4], PDPT | 7
    mov dword [PDPT], PD0 | 7
    mov dword [PDPT + 3 * 8], PD3 | 7
    mov edi, PD0
    mov eax, 0x87                           ; present, writable, user, 2 MiB
    mov ecx, 512
.map:
    mov [edi], eax
    add eax, 0x200000
    add edi, 8
    loop .map
    mov dword [PD3 + 511 * 8], 0xFFE00000 | 0x9f  ; + PWT/PCD: uncached MMIO

    mov eax, cr4
    or eax, 1 << 5                          ; PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, 0xC0000080                     ; EFER
    rdmsr
    or eax, (1 << 8) | 1                    ; LME, SCE
    wrmsr
    mov eax, cr0
    or eax, 1 << 31                         ; PG
    mov cr0, eax
    lgdt [gdt_ptr]
    jmp 0x08:start64

bits 64
start64:
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    mov rsp, STACK_TOP

    lea rsi, [rel msg_hello]
    call puts

    ; fw_cfg signature (4 bytes of key 0x0000)
    lea rsi, [rel msg_sig]
    call puts
    mov dx, FW_CFG_SEL
    xor eax, eax
    out dx, ax
    mov dx, FW_CFG_DATA
    mov ecx, 4
.sig:
    in al, dx
    call putc
    loop .sig
    mov al, 10
    call putc

    ; fw_cfg CPU count (le16 of key 0x0005)
    lea rsi, [rel msg_cpus]
    call puts
    mov dx, FW_CFG_SEL
    mov ax, 0x0005
    out dx, ax
    mov dx, FW_CFG_DATA
    in al, dx
    movzx ebx, al
    in al, dx
    movzx eax, al
    shl eax, 8
    or eax, ebx
    call putdec
    mov al, 10
    call putc

    ; The Multiboot command line, when the loader gave one.
    cmp dword [rel mb_eax], 0x2BADB002
    jne .no_cmdline
    mov ebx, [rel mb_info]
    test dword [rbx], 1 << 2
    jz .no_cmdline
    mov esi, [rbx + 16]
    test esi, esi
    jz .no_cmdline
    push rsi
    lea rsi, [rel msg_cmdline]
    call puts
    pop rsi
    call puts
    mov al, 10
    call putc
.no_cmdline:

    xor eax, eax                            ; exit status (0 << 1) | 1 = 1
    out DEBUG_EXIT, al
.halt:
    cli
    hlt
    jmp .halt

; putc: send AL to COM1 once the transmitter holding register is empty.
putc:
    push rdx
    push rax
    mov dx, COM1 + 5
.wait:
    in al, dx
    test al, 0x20
    jz .wait
    pop rax
    mov dx, COM1
    out dx, al
    pop rdx
    ret

; puts: send the NUL-terminated string at RSI.
puts:
    push rax
.next:
    lodsb
    test al, al
    jz .done
    call putc
    jmp .next
.done:
    pop rax
    ret

; putdec: send EAX in decimal.
putdec:
    push rbx
    push rcx
    push rdx
    mov ebx, 10
    xor ecx, ecx
.div:
    xor edx, edx
    div ebx
    push rdx
    inc ecx
    test eax, eax
    jnz .div
.out:
    pop rax
    add al, '0'
    call putc
    loop .out
    pop rdx
    pop rcx
    pop rbx
    ret

align 8
gdt:
    dq 0
    dq 0x00AF9A000000FFFF                   ; 0x08: 64-bit code, DPL0
    dq 0x00CF92000000FFFF                   ; 0x10: data, DPL0
gdt_end:
gdt_ptr:
    dw gdt_end - gdt - 1
    dd gdt

mb_eax:     dd 0
mb_info:    dd 0
msg_hello:  db "Hello from kvmcpu!", 10, 0
msg_sig:    db "fw_cfg signature: ", 0
msg_cpus:   db "fw_cfg cpus: ", 0
msg_cmdline: db "cmdline: ", 0

load_end:
