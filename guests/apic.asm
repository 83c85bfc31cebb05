; build: nasm -f bin
; apic.asm -- the local APIC and the IOAPIC of one CPU (a test fixture).
;
; A Multiboot v1 kernel (lib/multiboot_long.inc: loaded at 1 MiB, entered in
; 32-bit protected mode, switched to 64-bit long mode at CPL0). It maps the
; IOAPIC (0xfec00000) and local APIC (0xfee00000) pages uncached, fills a
; 256-entry IDT, initialises the 8259 pair and masks all of it (every interrupt
; here comes through the APIC), software-enables the local APIC (SVR = 0x1ff)
; and then prints one line per check:
;
;   apic: base fee00000 enabled bsp     IA32_APIC_BASE (RDMSR 0x1b)
;   apic: version 14                     the version register's low byte
;   ioapic: pit ticks 10                 PIT channel 0 at 100 Hz (mode 2, count
;                                        11932) through IOAPIC pins 0 and 2,
;                                        vector 0x70 (ISA IRQ 0 is on pin 2 with
;                                        QEMU's and kvmcpu's routing, on pin 0
;                                        with KVM's default one: exactly one of
;                                        them fires); it keeps running, so every
;                                        wait below is `sti; hlt` bounded by it
;   apic: self-ipi 40 taken              ICR, shorthand self, fixed vector 0x40
;   apic: tpr 50 holds 41                TPR = 0x50 keeps vector 0x41 in the IRR
;                                        for 2 PIT ticks
;   apic: tpr 0 delivers 41              ... and lowering it delivers it
;   apic: nesting 50< 60< >60 >50 51< >51
;                                        the handler of 0x50 sends 0x51 and
;                                        0x60 and waits with `sti; hlt` until
;                                        0x60 preempted it; 0x51 (the class of
;                                        the one in service) waits for its EOI
;   lapic periodic: ok                   LAPIC timer periodic, 10 ms (divide by
;                                        16, count 625000 at a 1 GHz bus) ticks
;                                        within 2 of the PIT's over 200 ms
;   lapic one-shot: ok                   a 50 ms one-shot: fires once, 4-6 PIT
;                                        ticks after it was armed, its current
;                                        count counts down and ends at 0
;   ioapic: uart thre interrupt 1        COM1's THRE interrupt (IER = 2) through
;                                        IOAPIC pin 4, vector 0x34
;   apic: done
;
; then writes 0 to isa-debug-exit (exit status 1). An unexpected exception
; prints "apic: exception N" and exits with status 5; a wait that does not end
; within 100 PIT ticks prints "apic: timeout" and exits with status 7.
; Simulated time needed: about 0.45 s. The periods are long next to the
; guest's interrupt latency, so that no tick is lost (merged with a pending
; one) even where the guest runs slowly in host time (KVM's emulator).

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"
%include "lib/apic_guest.inc"

IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000

IOAPIC      equ 0xFEC00000
LAPIC       equ 0xFEE00000
L_ID        equ 0x20
L_VER       equ 0x30
L_TPR       equ 0x80
L_EOI       equ 0xB0
L_SVR       equ 0xF0
L_IRR       equ 0x200
L_ICR_LO    equ 0x300
L_ICR_HI    equ 0x310
L_LVT_TIMER equ 0x320
L_TIMER_ICR equ 0x380
L_TIMER_CCR equ 0x390
L_TIMER_DCR equ 0x3E0

PIC1        equ 0x20
PIC2        equ 0xa0
PIT_CH0     equ 0x40
PIT_CMD     equ 0x43
PIT_COUNT   equ 11932                       ; 1193182 Hz / 11932: 100 Hz
PERIODIC_COUNT equ 625000                   ; x 16 ns: 10 ms
ONESHOT_COUNT equ 3125000                   ; x 16 ns: 50 ms

; (the APIC pages are above 2 GiB: a disp32 would sign-extend, so R11 holds the address)
%macro LAPIC_W 2                            ; LAPIC_W reg, value (clobbers EAX, R11)
    mov eax, %2
    mov r11, LAPIC + %1
    mov [r11], eax
%endmacro

%macro LAPIC_R 1                            ; EAX = LAPIC register (clobbers R11)
    mov r11, LAPIC + %1
    mov eax, [r11]
%endmacro

%macro SELF_IPI 1
    LAPIC_W L_ICR_LO, (1 << 18) | %1
%endmacro

%macro SAY 1                                ; SAY label: puts the string
    lea rsi, [rel %1]
    call puts
%endmacro

main:                                       ; 64-bit, CPL0, RSP = STACK_TOP
    APIC_GUEST_SETUP                        ; APIC pages mapped, IDT from vector_table

    ; 8259 pair: initialised (vectors 0x20-0x2f) and fully masked.
    PIC_INIT 0xFF, 0xFF

    ; IA32_APIC_BASE.
    mov ecx, 0x1B
    rdmsr
    mov ebx, eax
    SAY msg_base
    mov eax, ebx
    and eax, 0xFFFFF000
    call puthex
    test ebx, 1 << 11
    jz .not_enabled
    SAY msg_enabled
.not_enabled:
    test ebx, 1 << 8
    jz .not_bsp
    SAY msg_bsp
.not_bsp:
    SAY msg_nl

    LAPIC_W L_SVR, 0x1FF                    ; software enable, spurious vector 0xff
    LAPIC_W L_TPR, 0
    SAY msg_version
    LAPIC_R L_VER
    and eax, 0xFF
    call puthex
    SAY msg_nl

    ; IOAPIC: pins 0 and 2 -> vector 0x70 (edge, active high, physical APIC 0).
    mov ecx, 0
    mov edx, 0x70
    call ioapic_route
    mov ecx, 2
    call ioapic_route
    ; PIT channel 0: mode 2, lobyte/hibyte, 100 Hz.
    mov al, 0x34
    out PIT_CMD, al
    mov al, PIT_COUNT & 0xff
    out PIT_CH0, al
    mov al, PIT_COUNT >> 8
    out PIT_CH0, al
    mov rbx, 10
    call wait_pit
    SAY msg_pit
    mov rax, [rel pit_ticks]
    call putdec
    SAY msg_nl

    ; Self-IPI.
    SELF_IPI 0x40
    lea r12, [rel got40]
    call wait_flag
    SAY msg_selfipi

    ; TPR masking: 0x41 stays in the IRR for 2 PIT ticks (the PIT's 0x70 is above the TPR).
    LAPIC_W L_TPR, 0x50
    SELF_IPI 0x41
    mov rbx, 2
    call wait_pit
    cmp qword [rel got41], 0
    jne fail
    LAPIC_R L_IRR + 0x20                    ; IRR bits 64-95
    test eax, 1 << 1                        ; vector 0x41
    jz fail
    SAY msg_tpr_holds
    LAPIC_W L_TPR, 0
    lea r12, [rel got41]
    call wait_flag
    SAY msg_tpr_delivers

    ; Nesting and priority classes.
    SAY msg_nesting
    SELF_IPI 0x50
    lea r12, [rel got51]
    call wait_flag
    SAY msg_nl

    ; LAPIC timer, periodic, 10 ms; counted over 20 PIT ticks.
    LAPIC_W L_TIMER_DCR, 0x3                ; divide by 16
    LAPIC_W L_LVT_TIMER, (1 << 17) | 0x31
    mov qword [rel timer_ticks], 0
    mov rax, [rel pit_ticks]
    mov [rel pit_mark], rax
    LAPIC_W L_TIMER_ICR, PERIODIC_COUNT
    mov rbx, 20
    call wait_pit
    LAPIC_W L_TIMER_ICR, 0                  ; stop
    SAY msg_periodic
    mov rax, [rel timer_ticks]
    mov rcx, [rel pit_ticks]
    sub rcx, [rel pit_mark]
    mov rdx, rax
    sub rdx, rcx
    add rdx, 2
    cmp rdx, 4
    ja .periodic_bad
    SAY msg_ok
    jmp .periodic_done
.periodic_bad:
    call putdec
    mov al, '/'
    call putc
    mov rax, rcx
    call putdec
    SAY msg_nl
.periodic_done:

    ; LAPIC timer, one-shot, 50 ms.
    LAPIC_W L_LVT_TIMER, 0x32
    mov rax, [rel pit_ticks]
    mov [rel pit_mark], rax
    LAPIC_W L_TIMER_ICR, ONESHOT_COUNT
    LAPIC_R L_TIMER_CCR
    test eax, eax
    jz fail
    cmp eax, ONESHOT_COUNT
    ja fail
    lea r12, [rel oneshot_ticks]
    call wait_flag
    mov rcx, [rel pit_ticks]
    sub rcx, [rel pit_mark]
    mov rbx, [rel pit_ticks]
    add rbx, 3                              ; a few more PIT ticks: it fires only once
.more:
    sti
    hlt
    cli
    cmp [rel pit_ticks], rbx
    jb .more
    SAY msg_oneshot
    cmp qword [rel oneshot_ticks], 1
    jne .oneshot_bad
    LAPIC_R L_TIMER_CCR
    test eax, eax
    jnz .oneshot_bad
    cmp rcx, 4
    jb .oneshot_bad
    cmp rcx, 6
    ja .oneshot_bad
    SAY msg_ok
    jmp .oneshot_done
.oneshot_bad:
    mov rax, rcx
    call putdec
    SAY msg_nl
.oneshot_done:

    ; COM1's THRE interrupt through IOAPIC pin 4, vector 0x34.
    mov ecx, 4
    mov edx, 0x34
    call ioapic_route
    mov dx, COM1 + 1
    mov al, 0x02                            ; IER: THRE interrupt
    out dx, al
    lea r12, [rel uart_ticks]
    call wait_flag
    mov dx, COM1 + 1
    xor eax, eax
    out dx, al
    SAY msg_uart
    mov rax, [rel uart_ticks]
    call putdec
    SAY msg_nl

    SAY msg_done
    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    HALT_FOREVER

fail:
    SAY msg_fail
    DEBUG_EXIT_WRITE 4                      ; exit status 9
    HALT_FOREVER

; ioapic_route: pin ECX -> vector EDX, edge, active high, fixed, physical APIC 0.
ioapic_route:
    mov r11, IOAPIC
    lea eax, [rcx * 2 + 0x11]
    mov [r11], eax                          ; IOREGSEL: the entry's high dword
    mov dword [r11 + 0x10], 0               ; destination APIC 0
    dec eax
    mov [r11], eax                          ; the low dword
    mov [r11 + 0x10], edx
    ret

APIC_GUEST_WAITS                            ; wait_pit, wait_flag

timeout:
    SAY msg_timeout
    DEBUG_EXIT_WRITE 3                      ; exit status 7
    HALT_FOREVER

; puthex: EAX in lowercase hex, no leading zeros.
puthex:
    push rcx
    push rdx
    mov edx, eax
    mov ecx, 28
.skip:
    mov eax, edx
    shr eax, cl
    and eax, 0xF
    jnz .digits
    sub ecx, 4
    jnz .skip
.digits:
    mov eax, edx
    shr eax, cl
    and eax, 0xF
    add al, '0'
    cmp al, '9'
    jbe .put
    add al, 'a' - '9' - 1
.put:
    call putc
    sub ecx, 4
    jns .digits
    pop rdx
    pop rcx
    ret

; ---------------------------------------------------------------- handlers
%macro EOI 0
    push r11
    mov r11, LAPIC + L_EOI
    mov dword [r11], 0
    pop r11
%endmacro

%macro LOG 1                                ; LOG label: print it from a handler
    push rsi
    lea rsi, [rel %1]
    call puts
    pop rsi
%endmacro

h40:
    inc qword [rel got40]
    EOI
    iretq

h41:
    inc qword [rel got41]
    EOI
    iretq

h50:
    push rax
    push r11
    LOG t50_in
    SELF_IPI 0x51                           ; same class as 0x50: must wait
    SELF_IPI 0x60                           ; higher class: preempts once IF is set
.wait60:                                    ; 0x60 is pending: taken at the first
    sti                                     ; instruction boundary with IF set (hlt:
    hlt                                     ; on hosts that deliver it later)
    cli
    cmp qword [rel got60], 0
    je .wait60
    LOG t50_out
    EOI
    pop r11
    pop rax
    iretq

h51:
    inc qword [rel got51]
    LOG t51_in
    LOG t51_out
    EOI
    iretq

h60:
    inc qword [rel got60]
    LOG t60_in
    LOG t60_out
    EOI
    iretq

h_pit:
    inc qword [rel pit_ticks]
    EOI
    iretq

h_timer:
    inc qword [rel timer_ticks]
    EOI
    iretq

h_oneshot:
    inc qword [rel oneshot_ticks]
    EOI
    iretq

h_uart:
    push rax
    push rdx
    mov dx, COM1 + 2
    in al, dx                               ; IIR: acknowledges the THRE interrupt
    inc qword [rel uart_ticks]
    EOI
    pop rdx
    pop rax
    iretq

spurious_handler:                           ; the APIC's spurious vector: no EOI
    inc qword [rel spurious]
    iretq

APIC_GUEST_EXCEPTIONS

%include "lib/uart.inc"

align 8
vector_table:                               ; (vector, handler) pairs, 16 bytes each
    dq 0x70, h_pit
    dq 0x31, h_timer
    dq 0x32, h_oneshot
    dq 0x34, h_uart
    dq 0x40, h40
    dq 0x41, h41
    dq 0x50, h50
    dq 0x51, h51
    dq 0x60, h60
    dq 0xFFFF, spurious_handler

align 8
idt_ptr:
    dw 256 * 16 - 1
    dq IDT

align 8
got40:       dq 0
got41:       dq 0
got51:       dq 0
got60:       dq 0
pit_ticks:   dq 0
pit_mark:    dq 0
timer_ticks: dq 0
oneshot_ticks: dq 0
uart_ticks:  dq 0
spurious:    dq 0

msg_base:        db "apic: base ", 0
msg_enabled:     db " enabled", 0
msg_bsp:         db " bsp", 0
msg_nl:          db 10, 0
msg_version:     db "apic: version ", 0
msg_selfipi:     db "apic: self-ipi 40 taken", 10, 0
msg_tpr_holds:   db "apic: tpr 50 holds 41", 10, 0
msg_tpr_delivers: db "apic: tpr 0 delivers 41", 10, 0
msg_nesting:     db "apic: nesting", 0
t50_in:          db " 50<", 0
t50_out:         db " >50", 0
t51_in:          db " 51<", 0
t51_out:         db " >51", 0
t60_in:          db " 60<", 0
t60_out:         db " >60", 0
msg_pit:         db "ioapic: pit ticks ", 0
msg_periodic:    db "lapic periodic: ", 0
msg_oneshot:     db "lapic one-shot: ", 0
msg_ok:          db "ok", 10, 0
msg_uart:        db "ioapic: uart thre interrupt ", 0
msg_done:        db "apic: done", 10, 0
msg_fail:        db 10, "apic: check failed", 10, 0
msg_timeout:     db 10, "apic: timeout", 10, 0
msg_exc:         db "apic: exception ", 0

load_end:
