; build: nasm -f bin
; apic_msr.asm -- x2APIC mode and the TSC-deadline timer: the local APIC's MSRs
; (a test fixture).
;
; A Multiboot v1 kernel started like apic.asm (lib/multiboot_long.inc, 64-bit
; CPL0). It maps the IOAPIC page, fills a 256-entry IDT, masks the 8259 pair,
; runs the PIT at 100 Hz through IOAPIC pins 0 and 2 (vector 0x70, see
; apic.asm) and then, where CPUID.1 offers them:
;
;   x2apic: enabled id 0                 IA32_APIC_BASE |= EN | EXTD, SVR (MSR
;                                        0x80f) = 0x1ff; the ID from MSR 0x802
;   x2apic: version 14                   MSR 0x803's low byte
;   x2apic: self-ipi 40 taken            SELF IPI (MSR 0x83f), EOI by MSR 0x80b
;   x2apic: icr 41 taken                 the 64-bit ICR (MSR 0x830) to our ID
;   x2apic: xapic page gone              the xAPIC page reads all ones now
;   tsc-deadline: near deadline taken    LVT timer (MSR 0x832) in TSC-deadline
;                                        mode, IA32_TSC_DEADLINE = TSC + 1000:
;                                        fires, and the MSR reads 0 after it
;   tsc-deadline: far deadline held, cleared by 0
;                                        TSC + 2^40 does not fire in 3 PIT
;                                        ticks, reads back, and writing 0
;                                        disarms it
;   apic_msr: done
;
; or "x2apic: not offered" / "tsc-deadline: not offered" instead of each group
; (CPUID.1:ECX bits 21 and 24; the TSC-deadline test runs in x2APIC mode when
; it is there, in xAPIC mode otherwise). Then it writes 0 to isa-debug-exit
; (exit status 1). A failed check prints "apic_msr: check failed" (status 9),
; an exception "apic_msr: exception N" (status 5), a wait of more than 100
; PIT ticks "apic_msr: timeout" (status 7).

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"
%include "lib/apic_guest.inc"

IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000

IOAPIC      equ 0xFEC00000
LAPIC       equ 0xFEE00000
PIC1        equ 0x20
PIC2        equ 0xa0
PIT_CH0     equ 0x40
PIT_CMD     equ 0x43
PIT_COUNT   equ 11932                       ; 100 Hz

MSR_APIC_BASE   equ 0x1B
MSR_TSC_DEADLINE equ 0x6E0
X2_ID       equ 0x802
X2_VER      equ 0x803
X2_EOI      equ 0x80B
X2_SVR      equ 0x80F
X2_ICR      equ 0x830
X2_LVT_TIMER equ 0x832
X2_SELF_IPI equ 0x83F

%macro SAY 1
    lea rsi, [rel %1]
    call puts
%endmacro

%macro WRMSR_IMM 2                          ; WRMSR_IMM msr, value (clobbers EAX, ECX, EDX)
    mov ecx, %1
    mov eax, (%2) & 0xFFFFFFFF
    xor edx, edx
    wrmsr
%endmacro

main:
    APIC_GUEST_SETUP                        ; APIC pages mapped, IDT from vector_table

    PIC_INIT 0xFF, 0xFF                     ; 8259 pair initialised, fully masked

    mov r11, LAPIC + 0xF0                   ; xAPIC SVR: software enable (for the PIT)
    mov dword [r11], 0x1FF
    mov ecx, 0                              ; IOAPIC pins 0 and 2 -> 0x70
    call ioapic_route
    mov ecx, 2
    call ioapic_route
    mov al, 0x34                            ; PIT channel 0, mode 2, 100 Hz
    out PIT_CMD, al
    mov al, PIT_COUNT & 0xff
    out PIT_CH0, al
    mov al, PIT_COUNT >> 8
    out PIT_CH0, al
    mov rbx, 1
    call wait_pit

    mov eax, 1
    cpuid
    mov [rel cpuid1_ecx], ecx

    ; ------------------------------------------------------------ x2APIC
    test dword [rel cpuid1_ecx], 1 << 21
    jnz .x2apic
    SAY msg_x2_none
    jmp .tscdl
.x2apic:
    mov ecx, MSR_APIC_BASE
    rdmsr
    or eax, (1 << 11) | (1 << 10)           ; EN | EXTD
    wrmsr
    mov byte [rel x2mode], 1
    WRMSR_IMM X2_SVR, 0x1FF
    mov ecx, X2_ID
    rdmsr
    mov ebx, eax
    SAY msg_x2_id
    mov eax, ebx
    call putdec
    SAY msg_nl
    SAY msg_x2_ver
    mov ecx, X2_VER
    rdmsr
    and eax, 0xFF
    call puthex2
    SAY msg_nl

    WRMSR_IMM X2_SELF_IPI, 0x40
    lea r12, [rel got40]
    call wait_flag
    SAY msg_x2_self

    mov ecx, X2_ID
    rdmsr
    mov edx, eax                            ; destination: our x2APIC ID
    mov eax, 0x41                           ; fixed, physical, no shorthand
    mov ecx, X2_ICR
    wrmsr
    lea r12, [rel got41]
    call wait_flag
    SAY msg_x2_icr

    mov r11, LAPIC + 0x30                   ; the xAPIC page is gone in x2APIC mode
    mov eax, [r11]
    cmp eax, 0xFFFFFFFF
    jne fail
    SAY msg_x2_page

    ; ------------------------------------------------------------ TSC deadline
.tscdl:
    test dword [rel cpuid1_ecx], 1 << 24
    jnz .tscdl_test
    SAY msg_tsc_none
    jmp .done
.tscdl_test:
    mov eax, (2 << 17) | 0x33               ; LVT timer: TSC-deadline mode, vector 0x33
    call lvt_timer
    rdtsc
    shl rdx, 32
    or rax, rdx
    add rax, 1000
    call set_deadline
    lea r12, [rel got33]
    call wait_flag
    mov ecx, MSR_TSC_DEADLINE
    rdmsr
    or eax, edx
    jnz fail                                ; 0 once it fired
    SAY msg_tsc_near

    rdtsc
    shl rdx, 32
    or rax, rdx
    mov rbx, 1
    shl rbx, 40
    add rax, rbx
    mov r13, rax
    call set_deadline
    mov rbx, 3
    call wait_pit
    cmp qword [rel got33], 1
    jne fail
    mov ecx, MSR_TSC_DEADLINE
    rdmsr
    shl rdx, 32
    or rax, rdx
    cmp rax, r13
    jne fail
    xor eax, eax
    call set_deadline
    mov rbx, 2
    call wait_pit
    mov ecx, MSR_TSC_DEADLINE
    rdmsr
    or eax, edx
    jnz fail
    cmp qword [rel got33], 1
    jne fail
    SAY msg_tsc_far

.done:
    SAY msg_done
    DEBUG_EXIT_WRITE 0
    HALT_FOREVER

fail:
    SAY msg_fail
    DEBUG_EXIT_WRITE 4
    HALT_FOREVER

; set_deadline: IA32_TSC_DEADLINE = RAX.
set_deadline:
    mov rdx, rax
    shr rdx, 32
    mov ecx, MSR_TSC_DEADLINE
    wrmsr
    ret

; lvt_timer: the LVT timer register = EAX (MSR in x2APIC mode, else the page).
lvt_timer:
    cmp byte [rel x2mode], 0
    je .page
    mov ecx, X2_LVT_TIMER
    xor edx, edx
    wrmsr
    ret
.page:
    mov r11, LAPIC + 0x320
    mov [r11], eax
    ret

; ioapic_route: pin ECX -> vector 0x70, edge, active high, physical APIC 0.
ioapic_route:
    mov r11, IOAPIC
    lea eax, [rcx * 2 + 0x11]
    mov [r11], eax
    mov dword [r11 + 0x10], 0
    dec eax
    mov [r11], eax
    mov dword [r11 + 0x10], 0x70
    ret

APIC_GUEST_WAITS                            ; wait_pit, wait_flag

timeout:
    SAY msg_timeout
    DEBUG_EXIT_WRITE 3
    HALT_FOREVER

; puthex2: AL as two hex digits.
puthex2:
    push rax
    shr al, 4
    call .digit
    pop rax
    and al, 0xF
.digit:
    add al, '0'
    cmp al, '9'
    jbe .put
    add al, 'a' - '9' - 1
.put:
    jmp putc

; ---------------------------------------------------------------- handlers
eoi:                                        ; x2APIC: MSR 0x80b, else the page
    push rax
    push rcx
    push rdx
    cmp byte [rel x2mode], 0
    je .page
    mov ecx, X2_EOI
    xor eax, eax
    xor edx, edx
    wrmsr
    jmp .out
.page:
    push r11
    mov r11, LAPIC + 0xB0
    mov dword [r11], 0
    pop r11
.out:
    pop rdx
    pop rcx
    pop rax
    ret

h40:
    inc qword [rel got40]
    call eoi
    iretq

h41:
    inc qword [rel got41]
    call eoi
    iretq

h33:
    inc qword [rel got33]
    call eoi
    iretq

h_pit:
    inc qword [rel pit_ticks]
    call eoi
    iretq

spurious_handler:
    iretq

APIC_GUEST_EXCEPTIONS

%include "lib/uart.inc"

align 8
vector_table:
    dq 0x33, h33
    dq 0x40, h40
    dq 0x41, h41
    dq 0x70, h_pit
    dq 0xFFFF, spurious_handler

align 8
idt_ptr:
    dw 256 * 16 - 1
    dq IDT

align 8
got33:      dq 0
got40:      dq 0
got41:      dq 0
pit_ticks:  dq 0
cpuid1_ecx: dd 0
x2mode:     db 0

msg_nl:       db 10, 0
msg_x2_none:  db "x2apic: not offered", 10, 0
msg_x2_id:    db "x2apic: enabled id ", 0
msg_x2_ver:   db "x2apic: version ", 0
msg_x2_self:  db "x2apic: self-ipi 40 taken", 10, 0
msg_x2_icr:   db "x2apic: icr 41 taken", 10, 0
msg_x2_page:  db "x2apic: xapic page gone", 10, 0
msg_tsc_none: db "tsc-deadline: not offered", 10, 0
msg_tsc_near: db "tsc-deadline: near deadline taken", 10, 0
msg_tsc_far:  db "tsc-deadline: far deadline held, cleared by 0", 10, 0
msg_done:     db "apic_msr: done", 10, 0
msg_fail:     db 10, "apic_msr: check failed", 10, 0
msg_timeout:  db 10, "apic_msr: timeout", 10, 0
msg_exc:      db "apic_msr: exception ", 0

load_end:
