; build: nasm -f bin
; smp.asm -- several CPUs: bring-up, IPI ping-pong, a spinlock, NMI by IPI (a test fixture).
;
; A Multiboot v1 kernel (lib/multiboot_long.inc: loaded at 1 MiB, 64-bit long
; mode at CPL0). The BSP reads the CPU count from fw_cfg (FW_CFG_NB_CPUS),
; maps the local APIC page, fills the IDT and software-enables its APIC, then:
;
;   smp: cpus 2                      fw_cfg's count
;   smp: cpu 0 apic 0 cpuid 0        the BSP's APIC ID register and CPUID leaf 1
;                                    EBX[31:24]
;   smp: cpu 1 apic 1 cpuid 1        each AP in turn: the BSP copies a real-mode
;                                    trampoline to 0x8000 and sends INIT, SIPI,
;                                    SIPI (vector 8) to APIC ID k through its ICR;
;                                    the AP goes straight to long mode on the BSP's
;                                    page tables, takes its own stack, prints its
;                                    line and reports in
;   smp: all 2 up
;   smp: ping-pong 10 rounds         fixed IPIs: vector 0x40 BSP -> cpu 1, whose
;                                    handler answers with 0x41 (cpu 1 -> BSP), 10
;                                    times; each side waits with `sti; hlt`
;   smp: nmi on cpu 1                an NMI IPI wakes cpu 1 from its `sti; hlt` wait;
;                                    its NMI handler prints the line
;   smp: counter 10000 = 2 x 5000    every CPU drops to a 64-bit CPL3 loop (SYSRET)
;                                    that takes a `lock cmpxchg` spinlock 5000
;                                    times and increments a shared counter under
;                                    it (a plain load, add and store), then
;                                    returns with SYSCALL (the APs then spin)
;   smp: done
;
; then writes 0 to isa-debug-exit (exit status 1). With one CPU the AP lines,
; the ping-pong and the NMI are left out ("smp: ping-pong skipped", "smp: nmi
; skipped"). An unexpected exception prints "smp: exception N" (status 5).

%macro MB_GDT_EXTRA 0
    dq 0x00CFF2000000FFFF                   ; 0x18: data, DPL3 (SYSRET's SS = 0x10 + 8)
    dq 0x00AFFA000000FFFF                   ; 0x20: 64-bit code, DPL3 (SYSRET's CS)
%endmacro

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"
%include "lib/fwcfg.inc"

IDT         equ BSS_BOOT_END
AP_STACKS   equ BSS_BOOT_END + 0x1000       ; 4 KiB per AP, by APIC ID
MAX_CPUS    equ 8
; The shared variables, in a page of their own: a page the guest writes to is not
; one its code is in (the mock would translate that code again after each write).
VARS        equ AP_STACKS + MAX_CPUS * 0x1000
ncpus       equ VARS
aps_up      equ VARS + 4
pings       equ VARS + 8
pongs       equ VARS + 12
counted     equ VARS + 16
nmi_done    equ VARS + 20
lock_word   equ VARS + 24
go          equ VARS + 28
counter     equ VARS + 32
BSS_END     equ VARS + 0x1000

LAPIC       equ 0xFEE00000
L_ID        equ 0x20
L_EOI       equ 0xB0
L_SVR       equ 0xF0
L_ICR_LO    equ 0x300
L_ICR_HI    equ 0x310

TRAMP       equ 0x8000                      ; SIPI vector 8
SIPI_VECTOR equ TRAMP >> 12
PING_VECTOR equ 0x40
PONG_VECTOR equ 0x41
GO_VECTOR   equ 0x42
%ifdef IPI_ROUNDS
ROUNDS      equ IPI_ROUNDS                  ; smp_ipi*.asm: only the ping-pong
%else
ROUNDS      equ 10
%endif
%ifdef COMPUTE_ITERATIONS
ITERATIONS  equ COMPUTE_ITERATIONS          ; smp_spin.asm: as smp_compute, longer
%elifdef COMPUTE
ITERATIONS  equ 100000000                   ; smp_compute.asm: no lock, a compute loop
%else
ITERATIONS  equ 5000
%endif

MSR_STAR    equ 0xC0000081
MSR_LSTAR   equ 0xC0000082
MSR_FMASK   equ 0xC0000084

PIC1        equ 0x20
PIC2        equ 0xa0

%macro LAPIC_W 2                            ; LAPIC_W reg, value (clobbers EAX, R11)
    mov eax, %2
    mov r11, LAPIC + %1
    mov [r11], eax
%endmacro

%macro LAPIC_R 1                            ; EAX = LAPIC register (clobbers R11)
    mov r11, LAPIC + %1
    mov eax, [r11]
%endmacro

%macro SAY 1
    lea rsi, [rel %1]
    call puts
%endmacro

main:                                       ; the BSP: 64-bit, CPL0, RSP = STACK_TOP
    mov rax, LAPIC | 0x9B                   ; the LAPIC's 2 MiB page, uncached
    mov [PD3 + 503 * 8], rax
    mov rax, cr3
    mov cr3, rax
    call fill_idt
    PIC_INIT 0xFF, 0xFF
    call cpu_setup                          ; IDT, APIC on, SYSCALL MSRs

    FWCFG_SELECT FW_CFG_NB_CPUS
    FWCFG_READ16
    mov [ncpus], eax
    SAY msg_cpus
    mov eax, [ncpus]
    call putdec
    SAY msg_nl
    call say_cpu                            ; "smp: cpu 0 apic 0 cpuid 0"

    ; The trampoline, to 0x8000.
    lea rsi, [rel tramp_start]
    mov rdi, TRAMP
    mov ecx, tramp_end - tramp_start
    rep movsb

    mov r12d, 1                             ; start the APs one by one
.start_ap:
    cmp r12d, [ncpus]
    jae .all_up
    mov eax, r12d
    shl eax, 24
    mov r11, LAPIC + L_ICR_HI
    mov [r11], eax
    LAPIC_W L_ICR_LO, 0x4500                ; INIT, level assert
    call icr_idle
    mov eax, r12d
    shl eax, 24
    mov r11, LAPIC + L_ICR_HI
    mov [r11], eax
    LAPIC_W L_ICR_LO, 0x4600 | SIPI_VECTOR  ; STARTUP
    call icr_idle
    mov eax, r12d
    shl eax, 24
    mov r11, LAPIC + L_ICR_HI
    mov [r11], eax
    LAPIC_W L_ICR_LO, 0x4600 | SIPI_VECTOR  ; the second STARTUP (ignored if it runs)
    call icr_idle
.wait_up:
    pause
    cmp [aps_up], r12d
    jb .wait_up
    inc r12d
    jmp .start_ap
.all_up:
    SAY msg_all
    mov eax, [ncpus]
    call putdec
    SAY msg_up
%ifdef COMPUTE
    jmp .spinlock
%endif

    ; Ping-pong with cpu 1.
    cmp dword [ncpus], 2
    jae .pingpong
    SAY msg_pp_skip
    jmp .nmi_phase
.pingpong:
    xor r12d, r12d
.round:
    mov r11, LAPIC + L_ICR_HI
    mov dword [r11], 1 << 24
    LAPIC_W L_ICR_LO, PING_VECTOR           ; fixed, physical, to APIC ID 1
    call icr_idle
    inc r12d
.wait_pong:
    cmp [pongs], r12d
    jae .next_round
    sti
    hlt
    cli
    jmp .wait_pong
.next_round:
    cmp r12d, ROUNDS
    jb .round
    SAY msg_pp
    mov eax, [pongs]
    call putdec
    SAY msg_rounds
%ifdef IPI_ROUNDS
    jmp .done
%endif

.nmi_phase:                                 ; NMI to cpu 1
    cmp dword [ncpus], 2
    jae .nmi
    SAY msg_nmi_skip
    jmp .spinlock
.nmi:
    mov r11, LAPIC + L_ICR_HI
    mov dword [r11], 1 << 24
    LAPIC_W L_ICR_LO, 0x400                 ; NMI to APIC ID 1
    call icr_idle
.wait_nmi:
    pause
    cmp dword [nmi_done], 0
    je .wait_nmi

    ; The spinlock, last: on hosts where SYSCALL comes back still at CPL3 (kvm_pvm:
    ; see kvmcpu/guests/sieve3.asm), what follows uses only memory and port IO.
.spinlock:
    mov byte [go], 1                    ; the APs start counting: GO_VECTOR wakes them
    LAPIC_W L_ICR_LO, (3 << 18) | GO_VECTOR ; fixed, all excluding self
    call icr_idle
    call count                              ; and so does the BSP
.wait_count:
    pause
    mov eax, [counted]
    cmp eax, [ncpus]
    jb .wait_count
    SAY msg_counter
    mov rax, [counter]
    call putdec
    SAY msg_eq
    mov eax, [ncpus]
    call putdec
    SAY msg_x
    mov eax, ITERATIONS
    call putdec
    SAY msg_nl

.done:
    SAY msg_done
    DEBUG_EXIT_WRITE 0                      ; exit status 1
    HALT_FOREVER

; -- every CPU ---------------------------------------------------------------------
cpu_setup:                                  ; IDT, APIC software-enabled, SYSCALL/SYSRET
    lidt [rel idt_ptr]
    LAPIC_W L_SVR, 0x1FF
    mov ecx, MSR_STAR
    xor eax, eax
    mov edx, 0x00100008                     ; SYSRET base 0x10 (CS 0x23, SS 0x1b), SYSCALL CS 0x08
    wrmsr
    mov ecx, MSR_LSTAR
    lea rax, [rel from_user]
    mov rdx, rax
    shr rdx, 32
    wrmsr
    mov ecx, MSR_FMASK
    mov eax, 0x200                          ; SYSCALL clears IF
    xor edx, edx
    wrmsr
    ret

say_cpu:                                    ; "smp: cpu N apic N cpuid N"
    SAY msg_cpu
    LAPIC_R L_ID
    shr eax, 24
    mov r13d, eax
    call putdec
    SAY msg_apic
    mov eax, r13d
    call putdec
    SAY msg_cpuid
    mov eax, 1
    cpuid
    mov eax, ebx
    shr eax, 24
    call putdec
    SAY msg_nl
    ret

icr_idle:                                   ; wait for ICR delivery status idle
    LAPIC_R L_ICR_LO
    test eax, 1 << 12
    jnz icr_idle
    ret

count:                                      ; the spinlock work at CPL3, back by SYSCALL
    lea rcx, [rel user_count]
    mov r11d, 0x3002                        ; user RFLAGS: IOPL 3 (port IO), IF clear
    o64 sysret
from_user:                                  ; SYSCALL lands here with the same RSP
    lock inc dword [counted]
    ret                                     ; to count's caller (the user loop kept RSP)

user_count:                                 ; CPL3
%ifdef COMPUTE
    mov ecx, ITERATIONS                     ; smp_compute: each CPU on its own
    mov eax, 1
.work:
    imul eax, eax, 3
    add eax, ecx
    dec ecx
    jnz .work
    lock add qword [counter], ITERATIONS
    syscall
%endif
    mov ecx, ITERATIONS
.iter:
    mov edx, 1
.acquire:
    xor eax, eax
    lock cmpxchg [lock_word], edx
    jz .locked
.spin:
    pause
    cmp dword [lock_word], 0
    jne .spin
    jmp .acquire
.locked:
    mov rax, [counter]                  ; not atomic: the lock makes it exact
    add rax, 1
    mov [counter], rax
    mov dword [lock_word], 0            ; release
    dec ecx
    jnz .iter
    syscall

; -- the APs -----------------------------------------------------------------------
ap64:                                       ; from the trampoline: 64-bit, CPL0
    mov ax, 0x10
    mov ds, ax
    mov es, ax
    mov ss, ax
    mov fs, ax
    mov gs, ax
    LAPIC_R L_ID
    shr eax, 24
    inc eax
    shl eax, 12
    mov rsp, AP_STACKS
    add rsp, rax                            ; the top of this AP's stack
    call cpu_setup
    call say_cpu
    lock inc dword [aps_up]
.wait_go:                                   ; IPIs (ping-pong, go) while waiting for go
    cli
    cmp byte [go], 0
    jne .go
    sti
    hlt
    jmp .wait_go
.go:
    call count
.idle:                                      ; no HLT: this may be CPL3 (see .spinlock)
    pause
    jmp .idle

ping_handler:                               ; cpu 1: answer with PONG to the BSP
    push rax
    push r11
    inc dword [pings]
    mov r11, LAPIC + L_ICR_HI
    mov dword [r11], 0
    LAPIC_W L_ICR_LO, PONG_VECTOR
    LAPIC_W L_EOI, 0
    pop r11
    pop rax
    iretq

pong_handler:                               ; the BSP
    push rax
    push r11
    inc dword [pongs]
    LAPIC_W L_EOI, 0
    pop r11
    pop rax
    iretq

nmi_handler:
    push rax
    push rsi
    push r11
    SAY msg_nmi
    LAPIC_R L_ID
    shr eax, 24
    call putdec
    SAY msg_nl
    mov dword [nmi_done], 1
    pop r11
    pop rsi
    pop rax
    iretq

go_handler:
    push rax
    push r11
    LAPIC_W L_EOI, 0
    pop r11
    pop rax
    iretq

spurious_handler:
    iretq

exc_common:                                 ; AL = the vector
    movzx ebx, al
    SAY msg_exc
    mov eax, ebx
    call putdec
    SAY msg_nl
    DEBUG_EXIT_WRITE 2                      ; exit status 5
    HALT_FOREVER

align 8
exc_stubs:
%assign v 0
%rep 32
    mov al, v
    jmp exc_common
    align 8
%assign v v + 1
%endrep
exc_stub_size equ 8

fill_idt:                                   ; 0-31 the stubs (2: NMI), 0x40-0x42, the rest spurious
    mov rdi, IDT
    xor ecx, ecx
.loop:
    lea rax, [rel spurious_handler]
    cmp ecx, 32
    jae .vec
    lea rax, [rel exc_stubs]
    mov edx, ecx
    imul edx, edx, exc_stub_size
    add rax, rdx
    cmp ecx, 2
    jne .set
    lea rax, [rel nmi_handler]
    jmp .set
.vec:
    cmp ecx, PING_VECTOR
    jne .not_ping
    lea rax, [rel ping_handler]
    jmp .set
.not_ping:
    cmp ecx, PONG_VECTOR
    jne .not_pong
    lea rax, [rel pong_handler]
    jmp .set
.not_pong:
    cmp ecx, GO_VECTOR
    jne .set
    lea rax, [rel go_handler]
.set:
    IDT64_GATE
    add rdi, 16
    inc ecx
    cmp ecx, 256
    jb .loop
    ret

%include "lib/uart.inc"

; -- the trampoline (copied to TRAMP; real mode at SIPI_VECTOR:0) ---------------------
bits 16
tramp_start:
    cli
    xor ax, ax
    mov ds, ax
    o32 lgdt [TRAMP + tramp_gdt_ptr - tramp_start]
    mov eax, 1 << 5                         ; PAE
    mov cr4, eax
    mov eax, PML4
    mov cr3, eax
    mov ecx, 0xC0000080                     ; EFER: LME, SCE
    rdmsr
    or eax, (1 << 8) | 1
    wrmsr
    mov eax, 0x80000011                     ; PG, ET, PE: straight to long mode
    mov cr0, eax
    jmp dword 0x08:ap64
align 4
tramp_gdt_ptr:
    dw gdt_end - gdt - 1
    dd gdt
tramp_end:
bits 64

align 8
idt_ptr:
    dw 256 * 16 - 1
    dq IDT

msg_cpus:   db "smp: cpus ", 0
msg_cpu:    db "smp: cpu ", 0
msg_apic:   db " apic ", 0
msg_cpuid:  db " cpuid ", 0
msg_all:    db "smp: all ", 0
msg_up:     db " up", 10, 0
msg_pp:     db "smp: ping-pong ", 0
msg_rounds: db " rounds", 10, 0
msg_pp_skip: db "smp: ping-pong skipped", 10, 0
msg_counter: db "smp: counter ", 0
msg_eq:     db " = ", 0
msg_x:      db " x ", 0
msg_nmi:    db "smp: nmi on cpu ", 0
msg_nmi_skip: db "smp: nmi skipped", 10, 0
msg_done:   db "smp: done", 10, 0
msg_exc:    db "smp: exception ", 0
msg_nl:     db 10, 0

load_end:
