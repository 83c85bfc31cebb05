; build: nasm -f elf64, ld
; smpdebug.asm -- debugme with two CPUs: an ELF64 kernel whose AP code has symbols
; (gdb's threads: `info threads`, `thread 2`, `break ap_entry`).
;
; Linked by ld like debugme (build.py: the `; build:` line above), started by
; the loader in 64-bit long mode at CPL0 on identity-mapped paging, linked at
; 1 MiB; run it with `--smp 2` (or more). The BSP maps the local APIC's page,
; copies a real-mode trampoline to 0x8000 and starts the CPU of APIC ID 1 with
; INIT, SIPI, SIPI (vector 8); the trampoline takes it straight to long mode on
; the BSP's page tables and jumps to `ap_entry`, where it calls compute(i) =
; i*i + 1 for i = 0..7 (`ap_loop`), adding each result to `counter` (148 in
; the end), sets `ap_done`, wakes the BSP with an NMI IPI and halts
; (`ap_finish`). The BSP waits halted with interrupts off in `bsp_wait` (so a
; debugger sees it at the same address on every backend); its NMI handler
; checks `ap_done` and writes `counter & 0x7f` (20) to isa-debug-exit
; (`bsp_done`): exit status (20 << 1) | 1 = 41. With one CPU the AP never
; starts and the BSP halts for ever; other APs stay waiting for their SIPI.
; Both CPUs call `meet` on the way (the BSP before `bsp_wait`, the AP before
; `ap_loop`): with `hold` set by a debugger (0 in the image) each waits there for
; the other, passes `meet_all` and spins in `meet_spin` until the debugger clears
; `hold`, so both CPUs reach `meet_all` and `meet_done` at about the same time.

bits 64
default rel

global _start:function, bsp_wait, bsp_nmi, bsp_done, ap_entry:function, ap_loop, ap_finish
global compute:function, counter:data 8, ap_done:data 4, meet:function, meet_wait, meet_all, meet_spin
global meet_done, hold:data 4, arrived:data 4

DEBUG_EXIT  equ 0xf4
ROUNDS      equ 8
LAPIC       equ 0xFEE00000
L_SVR       equ 0xF0
L_ICR_LO    equ 0x300
L_ICR_HI    equ 0x310
TRAMP       equ 0x8000                  ; SIPI vector 8
EFER        equ 0xC0000080

section .text
_start:
    mov rsp, stack_top
    ; The LAPIC's 2 MiB page (uncached) in a page directory of ours at 3 GiB.
    mov rax, cr3
    and rax, -0x1000
    mov rax, [rax]                      ; PML4[0]: the PDPT
    and rax, -0x1000
    lea rdx, [lapic_pd]
    or rdx, 3
    mov [rax + 3 * 8], rdx
    mov rdx, LAPIC | 0x9B
    mov [lapic_pd + 503 * 8], rdx
    mov rax, cr3
    mov cr3, rax
    mov r11, LAPIC
    mov dword [r11 + L_SVR], 0x1FF      ; software-enable our APIC
    lea rax, [bsp_nmi]                  ; the IDT's NMI gate (vector 2)
    lea rdi, [idt + 2 * 16]
    mov [rdi], ax
    mov dx, cs
    mov [rdi + 2], dx
    mov word [rdi + 4], 0x8E00          ; present, DPL0, 64-bit interrupt gate
    shr rax, 16
    mov [rdi + 6], ax
    shr rax, 16
    mov [rdi + 8], eax
    lidt [idtr]
    ; The trampoline, with our CR3 and EFER, to 0x8000.
    lea rsi, [tramp_start]
    mov edi, TRAMP
    mov ecx, tramp_end - tramp_start
    rep movsb
    mov rax, cr3
    mov [abs TRAMP + tramp_cr3 - tramp_start], eax
    mov ecx, EFER
    rdmsr
    and eax, ~(1 << 10)                 ; not LMA (read-only)
    mov [abs TRAMP + tramp_efer - tramp_start], eax
    ; INIT, SIPI, SIPI to APIC ID 1.
    mov dword [r11 + L_ICR_HI], 1 << 24
    mov dword [r11 + L_ICR_LO], 0x4500
    call icr_idle
    mov dword [r11 + L_ICR_HI], 1 << 24
    mov dword [r11 + L_ICR_LO], 0x4600 | (TRAMP >> 12)
    call icr_idle
    mov dword [r11 + L_ICR_HI], 1 << 24
    mov dword [r11 + L_ICR_LO], 0x4600 | (TRAMP >> 12)
    call icr_idle
    call meet
bsp_wait:
    cli
    hlt
    jmp bsp_wait
bsp_nmi:
    cmp dword [ap_done], 0
    je bsp_wait
bsp_done:
    mov rax, [counter]
    and eax, 0x7f
    out DEBUG_EXIT, al
.halt:
    cli
    hlt
    jmp .halt

icr_idle:                               ; wait for the ICR's delivery status idle
    test dword [r11 + L_ICR_LO], 1 << 12
    jnz icr_idle
    ret

ap_entry:                               ; the AP, from the trampoline: 64-bit, CPL0
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    lea rsp, [ap_stack_top]
    call meet
    xor ebx, ebx
ap_loop:
    mov rdi, rbx
    call compute
    add [counter], rax
    inc ebx
    cmp ebx, ROUNDS
    jb ap_loop
ap_finish:
    mov dword [ap_done], 1
    mov r11, LAPIC
    mov dword [r11 + L_SVR], 0x1FF
    mov dword [r11 + L_ICR_HI], 0
    mov dword [r11 + L_ICR_LO], 0x400   ; NMI to APIC ID 0
    call icr_idle
.halt:
    cli
    hlt
    jmp .halt

; Both CPUs call meet once (the BSP after starting the AP, the AP before its loop).
; Each counts itself in `arrived`; while `hold` is nonzero (only a debugger sets
; it) each waits for the other (meet_wait), passes meet_all once and waits in
; meet_spin until `hold` is 0 again; then it leaves through meet_done.
meet:
    lock inc dword [arrived]
    cmp dword [hold], 0
    je meet_done
meet_wait:
    pause
    cmp dword [arrived], 2
    jb meet_wait
meet_all:
    nop
meet_spin:
    pause
    cmp dword [hold], 0
    jne meet_spin
meet_done:
    ret

; rax = rdi * rdi + 1
compute:
    mov rax, rdi
    imul rax, rdi
    inc rax
    ret

; -- the trampoline (copied to TRAMP; real mode at SIPI vector 8, CS:IP 0800:0000)
bits 16
tramp_start:
    cli
    xor ax, ax
    mov ds, ax
    o32 lgdt [TRAMP + tramp_gdtr - tramp_start]
    mov eax, 1 << 5                     ; PAE
    mov cr4, eax
    mov eax, [TRAMP + tramp_cr3 - tramp_start]
    mov cr3, eax
    mov ecx, EFER
    xor edx, edx
    mov eax, [TRAMP + tramp_efer - tramp_start]
    wrmsr
    mov eax, 0x80000011                 ; PG, ET, PE: straight to long mode
    mov cr0, eax
    jmp dword 0x08:ap_entry
align 4
tramp_gdtr:
    dw gdt_end - gdt - 1
    dd gdt
tramp_cr3:
    dd 0
tramp_efer:
    dd 0
tramp_end:
bits 64

section .data
align 8
counter:
    dq 0
ap_done:
    dd 0
hold:
    dd 0
arrived:
    dd 0
align 16
gdt:
    dq 0
    dq 0x00AF9A000000FFFF               ; 0x08: 64-bit code
    dq 0x00CF92000000FFFF               ; 0x10: data
gdt_end:
idtr:
    dw 3 * 16 - 1
    dq idt

section .bss
alignb 4096
idt:
    resb 3 * 16
alignb 4096
lapic_pd:
    resb 4096
    resb 4096
stack_top:
    resb 4096
ap_stack_top:
