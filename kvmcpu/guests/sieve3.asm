; build: nasm -f bin
; sieve3.asm -- a compute kernel whose hot loop runs at CPL3 (user mode).
;
; A Multiboot v1 kernel (a.out kludge, flat image loaded at 1 MiB, entry
; `start32` at 0x100020, started in 32-bit protected mode with EAX = 0x2BADB002
; and EBX = the Multiboot info). The kernel part is short on purpose: hosts
; that run CPL0 code in KVM's instruction emulator (about 1 us per
; instruction) run 64-bit CPL3 code natively, so all the heavy work happens at
; CPL3. lib/multiboot_long.inc does step 1 and loads the GDT of step 2, to
; which this file adds the user segments and the TSS (MB_GDT_EXTRA).
;
;   1. enters long mode (1 GiB identity-mapped with user-accessible 2 MiB
;      pages, plus the page holding the m5ops MMIO page at 0xFFFF0000);
;   2. loads a GDT with kernel and user segments and a 64-bit TSS (ltr),
;      programs SYSCALL (EFER.SCE, STAR, LSTAR = syscall_entry, SFMASK);
;   3. reads N from the Multiboot command line ("n=NUMBER", default 2000000;
;      the byte array needs N bytes at 4 MiB, so N + 4 MiB must fit in RAM),
;      prints "sieve3: counting primes below N at CPL3" and calls
;      m5_work_begin(0, 0) (m5ops function 0x5a);
;   4. drops to 64-bit CPL3 with iretq (RFLAGS = IOPL 3, IF = 0) and runs a
;      sieve of Eratosthenes over a byte array at 4 MiB, then counts the
;      primes and returns to the kernel with SYSCALL (RDI = count);
;   5. in the kernel (the LSTAR target): m5_work_end(0, 0) (0x5b), prints
;      "sieve3: C primes below N" (148933 for N = 2000000, 168 for n=1000),
;      then m5_exit(0) (0x21: the simulation ends with exit code 0); if the
;      simulator carried on, it writes 0 to isa-debug-exit (exit status 1).
;
; Note: on a pagetable-based (kvm_pvm) host SYSCALL reaches the LSTAR target
; with CS still at CPL3 (HLT there shuts the guest down). The code after
; SYSCALL therefore uses only what CPL3 may do: memory, MMIO, and IN/OUT,
; which the TSS I/O permission bitmap allows on every port.

; The GDT after multiboot_long.inc's 0x08 (kernel code) and 0x10 (kernel data).
%macro MB_GDT_EXTRA 0
    dq 0x00CFF2000000FFFF                   ; 0x18: data, DPL3
    dq 0x00AFFA000000FFFF                   ; 0x20: 64-bit code, DPL3
    dw TSS_LIMIT & 0xFFFF                   ; 0x28: 64-bit TSS (available), 16 bytes
    dw TSS & 0xFFFF
    db (TSS >> 16) & 0xFF, 0x89, (TSS_LIMIT >> 16) & 0x0F, (TSS >> 24) & 0xFF
    dd 0, 0
%endmacro

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"

; BSS after the page tables and the boot stack (BSS .. BSS_BOOT_END = BSS + 0x5000).
KSTACK_TOP  equ BSS + 0x6000
USTACK_TOP  equ BSS + 0x7000
TSS         equ BSS + 0x7000               ; 104 bytes + 8 KiB I/O bitmap + 0xFF
TSS_LIMIT   equ 104 + 8192
BSS_END     equ BSS + 0xA000

SIEVE           equ 0x400000
DEFAULT_N       equ 2000000
SEL_KCODE       equ 0x08
SEL_KDATA       equ 0x10
SEL_UDATA       equ 0x18
SEL_UCODE       equ 0x20
SEL_TSS         equ 0x28

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    ; 64-bit TSS: RSP0, and an I/O permission bitmap (all ports allowed) so
    ; that IN/OUT also work where the code after SYSCALL still runs at CPL3.
    mov dword [TSS + 4], KSTACK_TOP
    mov word [TSS + 0x66], 104
    mov byte [TSS + 104 + 8192], 0xFF
    mov ax, SEL_TSS
    ltr ax

    ; SYSCALL: CS/SS from STAR[47:32] (0x08/0x10), entry LSTAR, mask IF/TF/DF.
    mov ecx, 0xC0000081                     ; STAR
    xor eax, eax
    mov edx, SEL_KCODE | (SEL_KDATA << 16)
    wrmsr
    mov ecx, 0xC0000082                     ; LSTAR
    lea rax, [rel syscall_entry]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, 0xC0000084                     ; SFMASK
    mov eax, 0x700
    xor edx, edx
    wrmsr

    call parse_n
    mov r12, rax
    mov [rel n_value], rax

    lea rsi, [rel msg_start]
    call puts
    mov rax, r12
    call putdec
    lea rsi, [rel msg_cpl3]
    call puts

    xor edi, edi                            ; m5_work_begin(0, 0)
    xor esi, esi
    M5OP M5OP_WORK_BEGIN

    ; To CPL3: iretq frame SS, RSP, RFLAGS, CS, RIP.
    push SEL_UDATA | 3
    push USTACK_TOP
    push 0x3002                             ; IOPL 3, IF 0
    push SEL_UCODE | 3
    lea rax, [rel user_entry]
    push rax
    iretq

; ---- CPL3 -----------------------------------------------------------------
; In: R12 = N. Out (SYSCALL): RDI = number of primes below N.
user_entry:
    mov rdi, SIEVE
    mov rcx, r12
    mov al, 1
    rep stosb                               ; every number a candidate
    mov byte [SIEVE], 0
    mov byte [SIEVE + 1], 0
    mov ebx, 2
.outer:
    mov rax, rbx
    imul rax, rbx                           ; i * i
    cmp rax, r12
    jae .count
    cmp byte [SIEVE + rbx], 0
    je .next
.inner:
    mov byte [SIEVE + rax], 0
    add rax, rbx
    cmp rax, r12
    jb .inner
.next:
    inc rbx
    jmp .outer
.count:
    xor edi, edi
    xor ecx, ecx
.cnt:
    cmp rcx, r12
    jae .done
    movzx eax, byte [SIEVE + rcx]
    add rdi, rax
    inc rcx
    jmp .cnt
.done:
    syscall
    jmp .done                               ; not reached

; ---- the kernel again (CPL0; CPL3 on kvm_pvm) -----------------------------
syscall_entry:
    mov rsp, KSTACK_TOP
    mov r13, rdi                            ; the count

    xor edi, edi                            ; m5_work_end(0, 0)
    xor esi, esi
    M5OP M5OP_WORK_END

    lea rsi, [rel msg_result]
    call puts
    mov rax, r13
    call putdec
    lea rsi, [rel msg_below]
    call puts
    mov rax, [rel n_value]
    call putdec
    mov al, 10
    call putc

    xor edi, edi                            ; m5_exit(delay = 0)
    M5OP M5OP_EXIT

    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    mov ax, cs
    test al, 3
    jnz .spin                               ; HLT is privileged
    HALT_FOREVER
.spin:
    pause
    jmp .spin

; parse_n: RAX = the number after "n=" in the Multiboot command line, else DEFAULT_N.
parse_n:
    mov eax, DEFAULT_N
    MB_CMDLINE .ret                         ; ESI = the command line
    mov dl, ' '
.scan:
    mov cl, [rsi]
    test cl, cl
    jz .ret
    cmp dl, ' '
    jne .adv
    cmp cl, 'n'
    jne .adv
    cmp byte [rsi + 1], '='
    jne .adv
    add rsi, 2
    xor eax, eax
.digit:
    movzx ecx, byte [rsi]
    sub ecx, '0'
    cmp ecx, 9
    ja .ret
    imul rax, rax, 10
    add rax, rcx
    inc rsi
    jmp .digit
.adv:
    mov dl, cl
    inc rsi
    jmp .scan
.ret:
    ret

%include "lib/uart.inc"

align 8
n_value:    dq 0
msg_start:  db "sieve3: counting primes below ", 0
msg_cpl3:   db " at CPL3", 10, 0
msg_result: db "sieve3: ", 0
msg_below:  db " primes below ", 0

load_end:
