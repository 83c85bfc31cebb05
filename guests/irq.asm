; build: nasm -f bin
; irq.asm -- timer interrupts through the 8259A PIC and the 8254 PIT.
;
; A Multiboot v1 kernel (a.out kludge, flat image loaded at 1 MiB, entry
; `start32`, started in 32-bit protected mode like hello.asm). It enters long
; mode and stays at CPL0 (on hosts that run CPL0 in KVM's emulator that is
; slower but correct; interrupts injected at CPL3 would shut the guest down
; there), then:
;
;   1. fills a 48-entry IDT: vectors 0-31 -> exception handler (prints
;      "irq: unexpected exception", exit status 5), vector 0x20 -> timer
;      handler (counts, non-specific EOI), 0x21-0x2f -> plain iretq (spurious);
;   2. initialises both PICs (ICW1 0x11, ICW2 0x20/0x28, ICW3 0x04/0x02,
;      ICW4 0x01) and masks everything but IRQ 0;
;   3. programs PIT channel 0 in mode 2 (rate generator), lobyte/hibyte, count
;      1193: 1193182 Hz / 1193 = 1000.15 Hz;
;   4. loops `sti; hlt; cli` until TICKS (10) timer interrupts were counted,
;      prints "irq: 10 timer interrupts" and writes 0 to isa-debug-exit
;      (exit status 1).
;
; The same ports drive KVM's in-kernel PIC and PIT when the VM has them.
; Simulated time needed: 10 periods of 1193 PIT cycles, about 10 ms.

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
IDT         equ BSS + 0x5000
BSS_END     equ BSS + 0x6000

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

TICKS       equ 10
PIC1        equ 0x20
PIC2        equ 0xa0
PIT_CH0     equ 0x40
PIT_CMD     equ 0x43

    ; IDT: 48 interrupt gates (type 0xE, DPL0, present) in code segment 0x08.
    mov rdi, IDT
    xor ecx, ecx
.idt_loop:
    lea rax, [rel exc_handler]
    cmp ecx, 0x20
    jb .set
    lea rax, [rel timer_handler]
    je .set
    lea rax, [rel other_irq]
.set:
    mov [rdi], ax
    mov word [rdi + 2], 0x08
    mov word [rdi + 4], 0x8E00
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    mov dword [rdi + 12], 0
    add rdi, 16
    inc ecx
    cmp ecx, 48
    jb .idt_loop
    lidt [rel idt_ptr]

    ; PICs: edge triggered, cascade, vectors 0x20-0x2f.
    mov al, 0x11
    out PIC1, al
    out PIC2, al
    mov al, 0x20
    out PIC1 + 1, al
    mov al, 0x28
    out PIC2 + 1, al
    mov al, 0x04
    out PIC1 + 1, al
    mov al, 0x02
    out PIC2 + 1, al
    mov al, 0x01
    out PIC1 + 1, al
    out PIC2 + 1, al
    mov al, 0xFE                            ; only IRQ 0
    out PIC1 + 1, al
    mov al, 0xFF
    out PIC2 + 1, al

    ; PIT channel 0: mode 2, lobyte/hibyte, binary, count 1193.
    mov al, 0x34
    out PIT_CMD, al
    mov al, 1193 & 0xff
    out PIT_CH0, al
    mov al, 1193 >> 8
    out PIT_CH0, al

.wait:
    sti
    hlt
    cli
    cmp qword [rel ticks], TICKS
    jb .wait

    mov al, 0xFF                            ; mask the timer again
    out PIC1 + 1, al
    lea rsi, [rel msg_irq]
    call puts
    mov rax, [rel ticks]
    call putdec
    lea rsi, [rel msg_timer]
    call puts

    xor eax, eax                            ; exit status (0 << 1) | 1 = 1
    out DEBUG_EXIT, al
.halt:
    cli
    hlt
    jmp .halt

timer_handler:
    push rax
    inc qword [rel ticks]
    mov al, 0x20                            ; non-specific EOI
    out PIC1, al
    pop rax
    iretq

other_irq:
    inc qword [rel spurious]
    iretq

exc_handler:
    lea rsi, [rel msg_exc]
    call puts
    mov al, 2                               ; exit status (2 << 1) | 1 = 5
    out DEBUG_EXIT, al
    jmp exc_handler

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
idt_ptr:
    dw 48 * 16 - 1
    dq IDT

align 8
ticks:      dq 0
spurious:   dq 0
mb_eax:     dd 0
mb_info:    dd 0
msg_irq:    db "irq: ", 0
msg_timer:  db " timer interrupts", 10, 0
msg_exc:    db "irq: unexpected exception", 10, 0

load_end:
