; build: nasm -f bin
; checkpoint.asm -- asks the simulator for a checkpoint in the middle of its run.
;
; A Multiboot v1 kernel (a.out kludge, flat image loaded at 1 MiB, entry
; `start32`, started in 32-bit protected mode) that enters long mode (CPL0,
; the 2 MiB page holding the m5ops page at 0xFFFF0000 mapped) and:
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

M5OP_ADDR       equ 0xFFFF0000
M5OP_CHECKPOINT equ 0x43

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
    mov rax, M5OP_ADDR + (M5OP_CHECKPOINT << 8)
    mov rax, [rax]                          ; m5_checkpoint(0, 0)

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

align 8
sum:        dq 0
mb_eax:     dd 0
mb_info:    dd 0
msg_before: db "checkpoint: before", 10, 0
msg_after:  db "checkpoint: after, sum=", 0
msg_reg:    db " (register) ", 0
msg_mem:    db " (memory)", 10, 0

load_end:
