; build: nasm -f bin
; pctimers.asm -- the RTC's interrupts and the HPET's (a test fixture).
;
; A Multiboot v1 kernel (lib/multiboot_long.inc: long mode at CPL0) that takes
; interrupts from the MC146818 RTC on IRQ 8, through the 8259 pair (vector
; 0x28, via LINT0 ExtINT) and through the IOAPIC (pin 8, vector 0x38), and
; prints one line per check:
;
;   rtc: periodic interrupts (pic) 9     RS = 10 (64 Hz), PIE: 9 interrupts,
;                                        each acknowledged by reading register C
;   rtc: periodic rate 64 Hz ok          the 8 periods between the first and
;                                        the ninth took 447443 PM timer counts
;                                        (125 ms) +- 10%, else "... N counts"
;   rtc: alarm (ioapic) c & a0 = a0      the alarm set 2 s ahead (seconds; the
;                                        minutes and hours "don't care", 0xff)
;                                        with AIE: register C has IRQF and AF
;   rtc: alarm at the second set         the seconds register in the handler
;                                        is the alarm's
;   rtc: update-ended 1 s apart (ioapic) UIE: two interrupts whose seconds
;                                        differ by one, C & 0x90 = 0x90
;   rtc: done
;
; and then from the HPET (0xfed00000; its page is the IOAPIC's 2 MiB page):
;
;   hpet: caps 8086a201 period 989680    GCAP_ID: 3 timers, 64-bit, legacy
;                                        route capable, 10 ns (10**7 fs)
;   hpet: periodic (legacy irq 0) 11     legacy replacement route: timer 0
;                                        periodic every 10 ms (10**6 counts)
;                                        through ISA IRQ 0 = IOAPIC pin 2
;                                        (vector 0x48); the PIT is cut off
;   hpet: periodic rate 100 Hz ok        the 10 periods between the first and
;                                        the eleventh took 357954 PM timer
;                                        counts +- 10%
;   hpet: one-shot (legacy irq 8) 1      timer 1, 50 ms ahead, on IRQ 8 (pin
;                                        8, vector 0x49)
;   hpet: periodic 32-bit level (gsi 2) 5
;                                        legacy route off: timer 2 in 32-bit
;                                        mode, periodic (comparator, then the
;                                        period written again, as Linux does),
;                                        level-triggered on GSI 2 (pin 2 level,
;                                        vector 0x4a); the handler clears
;                                        GINTR_STA before its EOI
;   hpet: done
;
; (QEMU: -machine pc,kernel-irqchip=off; KVM's in-kernel routing QEMU sets up
; sends no GSI 2 anywhere.) Then the guest writes 0 to isa-debug-exit (exit status 1). An exception prints
; "pctimers: exception N" (status 5); a failed check "pctimers: check failed"
; (status 7).

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"
%include "lib/apic_guest.inc"

IDT         equ BSS_BOOT_END
BSS_END     equ BSS_BOOT_END + 0x1000

IOAPIC      equ 0xFEC00000
LAPIC       equ 0xFEE00000
L_EOI       equ 0xB0
L_SVR       equ 0xF0
PIC1        equ 0x20
PIC2        equ 0xa0
PM_TMR      equ 0x608
RATE_COUNTS equ 447443                      ; 3579545 Hz * 8 / 64 Hz
HPET        equ 0xFED00000
HPET_RATE   equ 357954                      ; 3579545 Hz * 10 / 100 Hz
PERIOD      equ 1000000                     ; HPET counts: 10 ms

%macro HPET_W 2                             ; HPET register (32 bits) := value
    mov r11, HPET + %1
    mov dword [r11], %2
%endmacro

%macro SAY 1
    lea rsi, [rel %1]
    call puts
%endmacro

%macro RTC_R 1                              ; AL = RTC register
    mov al, %1
    out 0x70, al
    in al, 0x71
%endmacro

%macro RTC_W 2                              ; RTC register := value (clobbers AL)
    mov al, %1
    out 0x70, al
    mov al, %2
    out 0x71, al
%endmacro

main:
    APIC_GUEST_SETUP
    PIC_INIT 0xFB, 0xFE                     ; IRQ 2 (cascade) and IRQ 8 unmasked
    mov eax, 0x1FF
    mov r11, LAPIC + L_SVR
    mov [r11], eax                          ; software enable, spurious vector 0xff

    ; -- RTC periodic interrupt through the 8259 pair ---------------------------
    RTC_W 0x0A, 0x2A                        ; 32.768 kHz base, RS = 10: 64 Hz
    RTC_R 0x0C
    RTC_W 0x0B, 0x42                        ; PIE, 24-hour, BCD
    lea r12, [rel rtc_pf]
    mov rbx, 9
    call wait_count
    RTC_W 0x0B, 0x02
    SAY msg_pf
    mov rax, [rel rtc_pf]
    call putdec
    SAY msg_nl
    mov eax, [rel pf_t9]
    sub eax, [rel pf_t1]
    and eax, 0xFFFFFF
    cmp eax, RATE_COUNTS * 9 / 10
    jb .rate_bad
    cmp eax, RATE_COUNTS * 11 / 10
    ja .rate_bad
    SAY msg_rate_ok
    jmp .alarm
.rate_bad:
    push rax
    SAY msg_rate
    pop rax
    call putdec
    SAY msg_counts

    ; -- RTC alarm through the IOAPIC ------------------------------------------
.alarm:
    mov al, 0xFF
    out PIC1 + 1, al
    out PIC2 + 1, al                        ; the 8259 pair masked
    mov ecx, 8
    mov edx, 0x38
    call ioapic_route
    RTC_W 0x0A, 0x20                        ; no periodic interrupt
.uip:
    RTC_R 0x0A
    test al, 0x80
    jnz .uip
    RTC_R 0x00                              ; seconds (BCD)
    call bcd2bin
    add eax, 2
    cmp eax, 60
    jb .sec_ok
    sub eax, 60
.sec_ok:
    call bin2bcd
    mov [rel alarm_sec], al
    mov ah, al
    mov al, 0x01
    out 0x70, al
    mov al, ah
    out 0x71, al
    RTC_W 0x03, 0xFF
    RTC_W 0x05, 0xFF
    RTC_R 0x0C
    mov qword [rel rtc_irqs], 0
    RTC_W 0x0B, 0x22                        ; AIE
    lea r12, [rel rtc_irqs]
    mov rbx, 1
    call wait_count
    RTC_W 0x0B, 0x02
    SAY msg_alarm
    mov al, [rel rtc_c]
    and eax, 0xA0
    call puthex
    SAY msg_nl
    mov al, [rel rtc_sec]
    cmp al, [rel alarm_sec]
    jne fail
    SAY msg_alarm_sec

    ; -- RTC update-ended interrupt through the IOAPIC ---------------------------
    RTC_R 0x0C
    mov qword [rel rtc_irqs], 0
    RTC_W 0x0B, 0x12                        ; UIE
    mov rbx, 1
    call wait_count
    mov al, [rel rtc_c]
    mov [rel uf_c], al
    mov al, [rel rtc_sec]
    mov [rel uf_sec], al
    mov rbx, 2
    call wait_count
    RTC_W 0x0B, 0x02
    mov al, [rel uf_c]
    and al, 0x90
    cmp al, 0x90
    jne fail
    mov al, [rel uf_sec]
    call bcd2bin
    mov ecx, eax
    mov al, [rel rtc_sec]
    call bcd2bin
    sub eax, ecx
    add eax, 60
    cmp eax, 61
    je .uf_ok
    cmp eax, 1
    jne fail
.uf_ok:
    SAY msg_uf
    SAY msg_rtc_done

    ; -- HPET ---------------------------------------------------------------------
    SAY msg_caps
    mov r11, HPET
    mov eax, [r11]
    call puthex
    SAY msg_period
    mov r11, HPET + 4
    mov eax, [r11]
    call puthex
    SAY msg_nl
    HPET_W 0x10, 0                          ; halted
    HPET_W 0xF0, 0
    HPET_W 0xF4, 0                          ; main counter := 0
    mov al, 0x30                            ; the PIT: mode 0, count 1: one edge
    out 0x43, al                            ; now, with every IOAPIC pin masked,
    mov al, 1                               ; then quiet (SeaBIOS left it at
    out 0x40, al                            ; 18.2 Hz on QEMU)
    xor eax, eax
    out 0x40, al
    mov ecx, 100
    loop $
    mov ecx, 2
    mov edx, 0x48
    call ioapic_route
    mov ecx, 8
    mov edx, 0x49
    call ioapic_route
    ; timer 0: comparator = PERIOD (one-shot: written as is), then periodic
    HPET_W 0x100, 0
    HPET_W 0x108, PERIOD
    HPET_W 0x10C, 0
    HPET_W 0x100, 0x4C                      ; INT_ENB | TYPE periodic | VAL_SET
    HPET_W 0x108, PERIOD                    ; comparator and period
    HPET_W 0x10, 3                          ; ENABLE_CNF | LEG_RT_CNF
    lea r12, [rel hpet0]
    mov rbx, 11
    call wait_count
    HPET_W 0x100, 0
    SAY msg_h0
    mov rax, [rel hpet0]
    call putdec
    SAY msg_nl
    mov eax, [rel h0_t11]
    sub eax, [rel h0_t1]
    and eax, 0xFFFFFF
    cmp eax, HPET_RATE * 9 / 10
    jb .hrate_bad
    cmp eax, HPET_RATE * 11 / 10
    ja .hrate_bad
    SAY msg_hrate_ok
    jmp .oneshot
.hrate_bad:
    push rax
    SAY msg_hrate
    pop rax
    call putdec
    SAY msg_counts
.oneshot:
    HPET_W 0x120, 0
    mov r11, HPET + 0xF0
    mov eax, [r11]
    add eax, 5 * PERIOD
    mov r11, HPET + 0x128
    mov [r11], eax
    HPET_W 0x12C, 0
    HPET_W 0x120, 0x04                      ; INT_ENB, one-shot, edge
    lea r12, [rel hpet1]
    mov rbx, 1
    call wait_count
    HPET_W 0x120, 0
    SAY msg_h1
    mov rax, [rel hpet1]
    call putdec
    SAY msg_nl
    ; timer 2: legacy route off, 32-bit periodic, level, GSI 2
    HPET_W 0x10, 1
    mov ecx, 2
    mov edx, 0x4A | (1 << 15)               ; level-triggered
    call ioapic_route
    HPET_W 0x140, (2 << 9) | 0x14E          ; 32MODE, VAL_SET, periodic, INT_ENB, level
    mov r11, HPET + 0xF0
    mov eax, [r11]
    add eax, PERIOD
    mov r11, HPET + 0x148
    mov [r11], eax                          ; comparator (and period)
    HPET_W 0x148, PERIOD                    ; the period
    lea r12, [rel hpet2]
    mov rbx, 5
    call wait_count
    HPET_W 0x140, 0
    HPET_W 0x10, 0
    SAY msg_h2
    mov rax, [rel hpet2]
    call putdec
    SAY msg_nl
    SAY msg_hpet_done
    DEBUG_EXIT_WRITE 0
    HALT_FOREVER

fail:
    SAY msg_fail
    DEBUG_EXIT_WRITE 3                      ; exit status 7
    HALT_FOREVER

; wait_count: interrupts on until the qword at R12 reaches RBX.
wait_count:
    sti
    hlt
    cli
    cmp [r12], rbx
    jb wait_count
    ret

; bcd2bin: EAX = the BCD byte in AL as binary.  bin2bcd: AL = EAX (< 100) as BCD.
bcd2bin:
    movzx eax, al
    push rcx
    mov ecx, eax
    shr ecx, 4
    and eax, 0x0F
    imul ecx, ecx, 10
    add eax, ecx
    pop rcx
    ret

bin2bcd:
    push rcx
    push rdx
    xor edx, edx
    mov ecx, 10
    div ecx
    shl eax, 4
    or eax, edx
    pop rdx
    pop rcx
    ret

; ioapic_route: pin ECX -> vector EDX, edge, active high, fixed, physical APIC 0.
ioapic_route:
    mov r11, IOAPIC
    lea eax, [rcx * 2 + 0x11]
    mov [r11], eax
    mov dword [r11 + 0x10], 0
    dec eax
    mov [r11], eax
    mov [r11 + 0x10], edx
    ret

; puthex: EAX in lowercase hex, no leading zeros.
puthex:
    push rcx
    push rdx
    mov edx, eax
    mov ecx, 28
.skip:
    mov eax, edx
    shr eax, cl
    test eax, 0xF
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

h_rtc_pic:                                  ; vector 0x28: IRQ 8 through the 8259
    push rax
    push rdx
    RTC_R 0x0C
    inc qword [rel rtc_pf]
    mov dx, PM_TMR
    in eax, dx
    cmp qword [rel rtc_pf], 1
    jne .not_first
    mov [rel pf_t1], eax
.not_first:
    cmp qword [rel rtc_pf], 9
    jne .eoi
    mov [rel pf_t9], eax
.eoi:
    mov al, 0x20
    out PIC2, al
    out PIC1, al
    pop rdx
    pop rax
    iretq

h_rtc_apic:                                 ; vector 0x38: IRQ 8 through the IOAPIC
    push rax
    push r11
    RTC_R 0x0C
    mov [rel rtc_c], al
    RTC_R 0x00
    mov [rel rtc_sec], al
    inc qword [rel rtc_irqs]
    mov r11, LAPIC + L_EOI
    mov dword [r11], 0
    pop r11
    pop rax
    iretq

h_hpet0:                                    ; vector 0x48: timer 0 (legacy IRQ 0)
    push rax
    push rdx
    push r11
    inc qword [rel hpet0]
    mov dx, PM_TMR
    in eax, dx
    cmp qword [rel hpet0], 1
    jne .not_first
    mov [rel h0_t1], eax
.not_first:
    cmp qword [rel hpet0], 11
    jne .eoi
    mov [rel h0_t11], eax
.eoi:
    mov r11, LAPIC + L_EOI
    mov dword [r11], 0
    pop r11
    pop rdx
    pop rax
    iretq

h_hpet1:                                    ; vector 0x49: timer 1 (legacy IRQ 8)
    push r11
    inc qword [rel hpet1]
    mov r11, LAPIC + L_EOI
    mov dword [r11], 0
    pop r11
    iretq

h_hpet2:                                    ; vector 0x4a: timer 2 (GSI 2, level)
    push r11
    inc qword [rel hpet2]
    mov r11, HPET + 0x20
    mov dword [r11], 4                      ; GINTR_STA: T2_INT_STS cleared
    mov r11, LAPIC + L_EOI
    mov dword [r11], 0
    pop r11
    iretq

spurious_handler:
    iretq

APIC_GUEST_EXCEPTIONS

%include "lib/uart.inc"

align 16
vector_table:
    dq 0x28, h_rtc_pic
    dq 0x38, h_rtc_apic
    dq 0x48, h_hpet0
    dq 0x49, h_hpet1
    dq 0x4A, h_hpet2
    dq 0xFFFF, 0

idt_ptr:
    dw 256 * 16 - 1
    dq IDT

rtc_pf:     dq 0
rtc_irqs:   dq 0
pf_t1:      dd 0
pf_t9:      dd 0
hpet0:      dq 0
hpet1:      dq 0
hpet2:      dq 0
h0_t1:      dd 0
h0_t11:     dd 0
rtc_c:      db 0
rtc_sec:    db 0
alarm_sec:  db 0
uf_c:       db 0
uf_sec:     db 0

msg_nl:         db 10, 0
msg_pf:         db "rtc: periodic interrupts (pic) ", 0
msg_rate_ok:    db "rtc: periodic rate 64 Hz ok", 10, 0
msg_rate:       db "rtc: periodic rate ", 0
msg_counts:     db " counts", 10, 0
msg_alarm:      db "rtc: alarm (ioapic) c & a0 = ", 0
msg_alarm_sec:  db "rtc: alarm at the second set", 10, 0
msg_uf:         db "rtc: update-ended 1 s apart (ioapic)", 10, 0
msg_rtc_done:   db "rtc: done", 10, 0
msg_caps:       db "hpet: caps ", 0
msg_period:     db " period ", 0
msg_h0:         db "hpet: periodic (legacy irq 0) ", 0
msg_hrate_ok:   db "hpet: periodic rate 100 Hz ok", 10, 0
msg_hrate:      db "hpet: periodic rate ", 0
msg_h1:         db "hpet: one-shot (legacy irq 8) ", 0
msg_h2:         db "hpet: periodic 32-bit level (gsi 2) ", 0
msg_hpet_done:  db "hpet: done", 10, 0
msg_fail:       db "pctimers: check failed", 10, 0
msg_exc:        db "pctimers: exception ", 0

load_end:
