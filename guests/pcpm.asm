; build: nasm -f bin
; pcpm.asm -- ACPI power management and the platform reset (a test fixture).
;
; A Multiboot v1 kernel (lib/multiboot_long.inc, long mode at CPL0). The first
; letter of the last word of its command line (QEMU and kvmcpu give "IMAGE
; ARGS": the -append/--append argument is that word) picks the check:
;
;   s   "pm: s5" then PM1_CNT (port 0x604) = SLP_TYP S5 (0) | SLP_EN: the
;       machine powers off (QEMU and kvmcpu: status 0, cause "power off")
;   r   the platform reset through the PIIX3 reset control register (0xcf9 =
;       0x06); k: through the keyboard controller's reset pulse (0x64 = 0xfe),
;       after "kbd: self test 55" (command 0xaa answers 0x55 on port 0x60).
;       Each boot prints "reset: boot N", N counted in RAM at 16 MiB (which a
;       reset keeps and the image does not cover); boot 1 asks for the reset,
;       boot 2 writes 0 to isa-debug-exit (status 1). Under -no-reboot the run
;       ends at the request (status 0).
;   t   the PM timer (port 0x608) against the PIT: PIT channel 0 in mode 0
;       counts down from 0xffff (wrapping); the guest samples both timers
;       together (the PIT's count latched, the PM timer read at once after it)
;       every 50 LOOP iterations and adds up the intervals until they hold
;       59659 PIT periods (50 ms): "pm timer: rate ok" when the PM timer
;       advanced 3 counts per PIT period (3.579545 MHz / 1.193182 MHz) within
;       5 %, else "pm timer: N counts"; an interval longer than half the PIT's
;       range (a poll late by more than 27 ms on a loaded host: the PIT may
;       have wrapped) is left out of both sums; then "pm timer: 24 bits" when the top byte of the 32-bit read
;       is 0. Sampling both at the same instant makes the check independent of
;       how late a poll comes (QEMU's KVM PIT runs in host time, and so does
;       kvmcpu's simulated time on KVM). Ends with isa-debug-exit 0 (status 1).
;   u   the same over 2386 PIT periods (2 ms), for the mock backend, where 50 ms
;       of simulated time are 50 million instructions.
;   p   QEMU's pc-testdev (-device pc-testdev): the dword 0x12345678 written to
;       port 0xe0, the byte 0xab to 0xeb, read back as a dword: "pc-testdev:
;       ioport ab345678", the word at 0xe2 " word ab34"; 0x11223344 and
;       0x55667788 written to its IO memory at 0xff000004 and 0xff000000,
;       read back: "pc-testdev: iomem 11223344 55667788". Status 1.
;
; Anything else prints "pcpm: what?" and exits with status 5.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"

BSS_END     equ BSS_BOOT_END

PM1_CNT     equ 0x604
PM_TMR      equ 0x608
BOOTS       equ 0x1000000                   ; two dwords: magic, boot count
BOOT_MAGIC  equ 0x746f6f62

main:
    MB_CMDLINE .what
    mov rdi, rsi
.word:
    lodsb
    cmp al, ' '
    jne .not_space
    mov rdi, rsi                            ; the word starts after the space
.not_space:
    test al, al
    jnz .word
    mov al, [rdi]
    cmp al, 's'
    je s5
    cmp al, 'r'
    je reset_rcr
    cmp al, 'k'
    je reset_kbd
    mov ebp, 59659                          ; 't': 50 ms
    cmp al, 't'
    je pm_timer
    mov ebp, 2386                           ; 'u': 2 ms
    cmp al, 'u'
    je pm_timer
    cmp al, 'p'
    je pc_testdev
.what:
    lea rsi, [rel msg_what]
    call puts
    DEBUG_EXIT_WRITE 2
    HALT_FOREVER

s5:
    lea rsi, [rel msg_s5]
    call puts
    mov dx, PM1_CNT
    mov ax, (0 << 10) | (1 << 13)
    out dx, ax
    HALT_FOREVER

; count_boot: print "reset: boot N"; ZF set when this is the first boot.
count_boot:
    mov ebx, BOOTS
    cmp dword [rbx], BOOT_MAGIC
    je .again
    mov dword [rbx], BOOT_MAGIC
    mov dword [rbx + 4], 0
.again:
    inc dword [rbx + 4]
    lea rsi, [rel msg_boot]
    call puts
    mov eax, [rbx + 4]
    call putdec
    mov al, 10
    call putc
    cmp dword [rbx + 4], 1
    ret

reset_rcr:
    call count_boot
    jne done
    mov dx, 0xcf9
    mov al, 0x06
    out dx, al
    HALT_FOREVER

reset_kbd:
    mov al, 0xaa                            ; self test
    out 0x64, al
.obf:
    in al, 0x64
    test al, 1
    jz .obf
    in al, 0x60
    cmp al, 0x55
    jne .what
    lea rsi, [rel msg_kbd]
    call puts
    call count_boot
    jne done
    mov al, 0xfe                            ; pulse the reset line
    out 0x64, al
    HALT_FOREVER
.what:
    jmp main.what

pm_timer:
    mov al, 0x30                            ; channel 0, lobyte/hibyte, mode 0
    out 0x43, al
    mov al, 0xff
    out 0x40, al
    out 0x40, al                            ; count down from 0xffff, wrapping
    call sample
    xor r14d, r14d                          ; PIT periods counted
    xor r15d, r15d                          ; PM timer counts meanwhile
.poll:
    mov r11d, r10d                          ; the previous sample
    mov r12d, ebx
    mov ecx, 50
    loop $
    call sample
    mov eax, r11d
    sub eax, r10d
    and eax, 0xffff                         ; PIT periods in this interval
    mov edx, ebx
    sub edx, r12d
    and edx, 0xffffff                       ; PM timer counts in this interval
    cmp edx, 3 * 0x8000
    jae .poll                               ; a poll late by > 27 ms: drop it
    add r14d, eax
    add r15d, edx
    cmp r14d, ebp
    jb .poll
    lea r13d, [r14 + r14 * 2]               ; the PM timer counts expected
    mov ecx, 100
    imul eax, r13d, 95
    xor edx, edx
    div ecx
    mov r8d, eax                            ; -5 %
    imul eax, r13d, 105
    xor edx, edx
    div ecx
    mov r9d, eax                            ; +5 %
    mov ecx, ebx                            ; the last 32-bit read, for the width
    mov eax, r15d
    cmp eax, r8d
    jb .bad
    cmp eax, r9d
    ja .bad
    lea rsi, [rel msg_rate]
    call puts
    jmp .width
.bad:
    lea rsi, [rel msg_tmr]
    call puts
    call putdec
    lea rsi, [rel msg_counts]
    call puts
.width:
    shr ecx, 24
    jnz done
    lea rsi, [rel msg_24]
    call puts
done:
    DEBUG_EXIT_WRITE 0
    HALT_FOREVER

; sample: latch PIT channel 0 and read the PM timer right after it:
; r10d = the PIT's latched count, ebx = the PM timer (32-bit read).
sample:
    xor eax, eax                            ; counter latch, channel 0
    out 0x43, al
    mov dx, PM_TMR
    in eax, dx
    mov ebx, eax
    in al, 0x40                             ; latched count: low byte
    movzx r10d, al
    in al, 0x40                             ; then high byte
    movzx eax, al
    shl eax, 8
    or r10d, eax
    ret

pc_testdev:
    mov eax, 0x12345678
    out 0xe0, eax
    mov al, 0xab
    out 0xeb, al
    lea rsi, [rel msg_ioport]
    call puts
    in eax, 0xe0
    call puthex
    lea rsi, [rel msg_word]
    call puts
    in ax, 0xe2
    movzx eax, ax
    call puthex
    mov al, 10
    call putc
    mov rax, 0xFF000000 | 0x9B              ; its 2 MiB page, uncached (PD3 504)
    mov [PD3 + 504 * 8], rax
    mov rax, cr3
    mov cr3, rax
    mov r11, 0xFF000000
    mov dword [r11 + 4], 0x11223344
    mov dword [r11], 0x55667788
    lea rsi, [rel msg_iomem]
    call puts
    mov eax, [r11 + 4]
    call puthex
    mov al, ' '
    call putc
    mov eax, [r11]
    call puthex
    mov al, 10
    call putc
    jmp done

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

%include "lib/uart.inc"

msg_what:   db "pcpm: what?", 10, 0
msg_s5:     db "pm: s5", 10, 0
msg_boot:   db "reset: boot ", 0
msg_kbd:    db "kbd: self test 55", 10, 0
msg_tmr:    db "pm timer: ", 0
msg_rate:   db "pm timer: rate ok", 10, 0
msg_counts: db " counts", 10, 0
msg_ioport: db "pc-testdev: ioport ", 0
msg_word:   db " word ", 0
msg_iomem:  db "pc-testdev: iomem ", 0
msg_24:     db "pm timer: 24 bits", 10, 0

load_end:
