; build: nasm -f bin
; pcs3.asm -- ACPI S3 (suspend to RAM) and the wake-up by the RTC alarm (a test fixture).
;
; A Multiboot v1 kernel (lib/multiboot_long.inc, long mode at CPL0):
;   1. finds the FACS: the RSDP ("RSD PTR " on a 16-byte boundary in
;      0xe0000-0xfffff) -> RSDT -> FADT ("FACP") -> FIRMWARE_CTRL; without an
;      RSDP, kvmcpu's pc_layout.ACPI_FACS_ADDR (0xe0000);
;   2. copies a real-mode resume stub to 0x6000 and writes 0x6000 into the
;      FACS's firmware waking vector (offset 12);
;   3. sets the RTC alarm 2 s ahead (seconds; minutes and hours "don't care")
;      with AIE, PM1_EN = RTC_EN, clears PM1_STS, prints "s3: suspending" and
;      writes PM1_CNT = SLP_TYP S3 (1) | SLP_EN.
; The alarm wakes the machine; the firmware (SeaBIOS on QEMU, kvmcpu itself)
; resets it and jumps to 0x6000 in real mode (CS = 0x600, IP = 0), where the
; stub prints "s3: resumed", then "s3: wak_sts rtc_sts" for the PM1_STS bits
; it finds (WAK_STS 15, RTC_STS 10), and writes 0 to isa-debug-exit (status 1).
; If the write to PM1_CNT returns, "s3: did not suspend" (status 7).

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"

BSS_END     equ BSS_BOOT_END
STUB        equ 0x6000
FACS_FALLBACK equ 0xE0000

%macro SAY 1
    lea rsi, [rel %1]
    call puts
%endmacro

%macro RTC_R 1
    mov al, %1
    out 0x70, al
    in al, 0x71
%endmacro

%macro RTC_W 2
    mov al, %1
    out 0x70, al
    mov al, %2
    out 0x71, al
%endmacro

main:
    cli
    ; -- 1. the FACS ----------------------------------------------------------------
    mov rbx, FACS_FALLBACK
    mov rsi, 0xE0000
    mov rax, 0x2052545020445352             ; "RSD PTR "
.rsdp:
    cmp [rsi], rax
    je .found
    add rsi, 16
    cmp rsi, 0x100000
    jb .rsdp
    jmp .have_facs
.found:
    mov edi, [rsi + 16]                     ; the RSDT
    mov ecx, [rdi + 4]                      ; its length
    sub ecx, 36
    shr ecx, 2                              ; entries
    lea rsi, [rdi + 36]
.tables:
    test ecx, ecx
    jz .have_facs
    mov edx, [rsi]
    cmp dword [rdx], 0x50434146             ; "FACP"
    je .fadt
    add rsi, 4
    dec ecx
    jmp .tables
.fadt:
    mov ebx, [rdx + 36]                     ; FIRMWARE_CTRL
.have_facs:
    ; -- 2. the resume stub and the waking vector ------------------------------------
    lea rsi, [rel stub]
    mov rdi, STUB
    mov ecx, stub_end - stub
    rep movsb
    mov dword [rbx + 12], STUB
    ; -- 3. the alarm, RTC_EN, S3 ----------------------------------------------------
    RTC_W 0x0A, 0x26
.uip:
    RTC_R 0x0A
    test al, 0x80
    jnz .uip
    RTC_R 0x00
    movzx eax, al
    mov ecx, eax
    shr ecx, 4
    and eax, 0x0F
    imul ecx, ecx, 10
    add eax, ecx                            ; binary seconds
    add eax, 2
    cmp eax, 60
    jb .sec
    sub eax, 60
.sec:
    xor edx, edx
    mov ecx, 10
    div ecx
    shl eax, 4
    or eax, edx                             ; BCD again
    mov ah, al
    mov al, 0x01
    out 0x70, al
    mov al, ah
    out 0x71, al
    RTC_W 0x03, 0xFF
    RTC_W 0x05, 0xFF
    RTC_R 0x0C
    RTC_W 0x0B, 0x22                        ; AIE, 24-hour, BCD
    mov dx, 0x602
    mov ax, 1 << 10                         ; PM1_EN.RTC_EN
    out dx, ax
    mov dx, 0x600
    mov ax, 0xFFFF
    out dx, ax                              ; PM1_STS cleared
    SAY msg_suspend
    mov dx, 0x604
    mov ax, (1 << 10) | (1 << 13)           ; SLP_TYP = S3, SLP_EN
    out dx, ax
    mov ecx, 1000
    loop $
    SAY msg_awake
    DEBUG_EXIT_WRITE 3
    HALT_FOREVER

%include "lib/uart.inc"

msg_suspend: db "s3: suspending", 10, 0
msg_awake:   db "s3: did not suspend", 10, 0

; The resume stub: 16-bit real mode at 0x600:0000, position independent.
bits 16
stub:
    cli
    push cs
    pop ds
    mov si, s_resumed - stub
    call s_puts
    mov dx, 0x600
    in ax, dx
    mov bx, ax
    test bx, 0x8000
    jz .no_wak
    mov si, s_wak - stub
    call s_puts
.no_wak:
    test bx, 0x0400
    jz .no_rtc
    mov si, s_rtc - stub
    call s_puts
.no_rtc:
    mov si, s_nl - stub
    call s_puts
    xor al, al
    out 0xf4, al
.halt:
    hlt
    jmp .halt
s_puts:                                     ; the NUL-terminated string at DS:SI
    lodsb
    test al, al
    jz .done
    mov ah, al
    mov dx, 0x3fd
.thre:
    in al, dx
    test al, 0x20
    jz .thre
    mov al, ah
    mov dx, 0x3f8
    out dx, al
    jmp s_puts
.done:
    ret
s_resumed:  db "s3: resumed", 10, 0
s_wak:      db "s3: wak_sts", 0
s_rtc:      db " rtc_sts", 0
s_nl:       db 10, 0
stub_end:
bits 64

load_end:
