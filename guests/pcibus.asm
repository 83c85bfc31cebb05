; build: nasm -f bin
; pcibus.asm -- PCI bus 0 as firmware left it, and QEMU's pci-testdev (a test fixture).
;
; A Multiboot v1 kernel (lib/multiboot_long.inc, long mode at CPL0) that reads
; configuration space through mechanism #1 (0xcf8/0xcfc) and prints:
;
;   pci 00:00.0 8086:1237 class 060000 hdr 00 subsys 1af4:1100   i440FX
;   pci 00:01.0 8086:7000 class 060100 hdr 80 subsys 1af4:1100   PIIX3
;   pci 00:01.3 8086:7113 class 068000 hdr 00 subsys 1af4:1100   PIIX4 PM
;   piix3 pirq b0b0a0a                   PIRQ[A-D] routed to IRQ 10, 10, 11, 11
;   piix3 elcr c00                       ELCR (0x4d0/0x4d1): IRQ 10 and 11 level
;   piix4 pm base 601 misc 1             PMBA = 0x600 | 1, PMREGMISC.PMIOSE
;   pci 00:SS.0 VVVV:DDDD class ...      every other device 2-31, function 0
;
; and for each pci-testdev (1b36:0005) found:
;   testdev bar0 mem 1000 bar1 io 100    BAR sizing: all ones written, the
;                                        mask read back (sizes in hex)
;   testdev bars assigned, decoding      BAR0 in [0xc0000000, 0xfebfffff],
;                                        BAR1 from 0xc000, command IO | MEM
;   testdev test 0 mmio-no-eventfd offset 800 data fa
;   testdev test 1 mmio-wildcard-eventfd offset 801 data ce
;   testdev test 2 mmio-datamatch-eventfd offset 802 data fa
;   testdev test 3 portio-no-eventfd offset 83 data fa
;   testdev test 4 portio-wildcard-eventfd offset 84 data ce
;   testdev test 5 portio-datamatch-eventfd offset 85 data fa
;                                        each test selected through its BAR
;                                        (offset 0) and its header read back
;   testdev mmio doorbell count 3        test 0: three writes of 0xfa at its
;                                        offset counted, one of 0x12 not
;   testdev portio doorbell count 2      test 3 likewise through BAR1
;   testdev io decode off ff on 01       command bit 0 cleared: BAR1 reads all
;                                        ones; set again: the header's width
;   pci: done
;
; then writes 0 to isa-debug-exit (exit status 1). QEMU: -nodefaults (no VGA
; or NIC on the bus) -device pci-testdev.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"

BSS_END     equ BSS_BOOT_END

%macro SAY 1
    lea rsi, [rel %1]
    call puts
%endmacro

main:
    mov ebp, 0 << 11                        ; 00.0
    call show
    mov ebp, (1 << 11) | (0 << 8)           ; 01.0
    call show
    mov ebp, (1 << 11) | (3 << 8)           ; 01.3
    call show
    SAY msg_pirq
    mov ebp, 1 << 11
    mov ebx, 0x60
    call cfg_read
    call puthex
    SAY msg_nl
    SAY msg_elcr                            ; ELCR2:ELCR1 (0x4d1, 0x4d0), bytes
    mov dx, 0x4d1
    in al, dx
    movzx ebx, al
    shl ebx, 8
    dec dx
    in al, dx
    or bl, al
    mov eax, ebx
    call puthex
    SAY msg_nl
    SAY msg_pm
    mov ebp, (1 << 11) | (3 << 8)
    mov ebx, 0x40
    call cfg_read
    call puthex
    SAY msg_misc
    mov ebx, 0x80
    call cfg_read
    and eax, 0xff
    call puthex
    SAY msg_nl

    mov r15d, 2                             ; device numbers 2-31, function 0
.scan:
    mov ebp, r15d
    shl ebp, 11
    xor ebx, ebx
    call cfg_read
    cmp ax, 0xffff
    je .next
    push rax
    call show
    pop rax
    cmp eax, 0x00051b36
    jne .next
    call testdev
.next:
    inc r15d
    cmp r15d, 32
    jb .scan
    SAY msg_done
    DEBUG_EXIT_WRITE 0
    HALT_FOREVER

; cfg_read: EAX = the dword at register EBX of the function EBP (bus 0).
cfg_read:
    push rdx
    mov eax, ebp
    or eax, ebx
    or eax, 0x80000000
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    in eax, dx
    pop rdx
    ret

; cfg_write: the dword at register EBX of function EBP := ECX.
cfg_write:
    push rdx
    push rax
    mov eax, ebp
    or eax, ebx
    or eax, 0x80000000
    mov dx, 0xcf8
    out dx, eax
    mov dx, 0xcfc
    mov eax, ecx
    out dx, eax
    pop rax
    pop rdx
    ret

; show: "pci 00:DD.F VVVV:DDDD class CCCCCC hdr HH subsys SSSS:SSSS" of function EBP.
show:
    SAY msg_pci
    mov eax, ebp
    shr eax, 11
    and eax, 0x1f
    mov cl, 2
    call puthex_n
    mov al, '.'
    call putc
    mov eax, ebp
    shr eax, 8
    and eax, 7
    mov cl, 1
    call puthex_n
    mov al, ' '
    call putc
    xor ebx, ebx
    call cfg_read
    push rax
    mov cl, 4
    call puthex_n
    mov al, ':'
    call putc
    pop rax
    shr eax, 16
    mov cl, 4
    call puthex_n
    SAY msg_class
    mov ebx, 8
    call cfg_read
    shr eax, 8
    mov cl, 6
    call puthex_n
    SAY msg_hdr
    mov ebx, 0x0c
    call cfg_read
    shr eax, 16
    mov cl, 2
    call puthex_n
    SAY msg_subsys
    mov ebx, 0x2c
    call cfg_read
    push rax
    mov cl, 4
    call puthex_n
    mov al, ':'
    call putc
    pop rax
    shr eax, 16
    mov cl, 4
    call puthex_n
    SAY msg_nl
    ret

; bar_size: EAX = the size of BAR EBX of function EBP (written all ones, read, restored).
bar_size:
    push rcx
    push rdx
    call cfg_read
    mov edx, eax                            ; the BAR
    mov ecx, 0xffffffff
    call cfg_write
    call cfg_read
    mov ecx, edx
    call cfg_write                          ; restored
    test edx, 1
    jz .mem
    and eax, 0xfffffffc
    or eax, 0xffff0000                      ; IO BARs may implement 16 bits only
    jmp .size
.mem:
    and eax, 0xfffffff0
.size:
    neg eax
    pop rdx
    pop rcx
    ret

testdev:
    SAY msg_bar0
    mov ebx, 0x10
    call bar_size
    call puthex
    SAY msg_bar1
    mov ebx, 0x14
    call bar_size
    call puthex
    SAY msg_nl
    mov ebx, 0x10
    call cfg_read
    and eax, 0xfffffff0
    mov r13d, eax                           ; BAR0
    mov ebx, 0x14
    call cfg_read
    and eax, 0xfffc
    mov r14d, eax                           ; BAR1
    cmp r13d, 0xc0000000
    jb .fail
    cmp r13d, 0xfebff000
    ja .fail
    cmp r14d, 0xc000
    jb .fail
    mov ebx, 4
    call cfg_read
    and eax, 3
    cmp eax, 3
    jne .fail
    SAY msg_assigned
    ; map BAR0's 2 MiB page (PD3 covers 3-4 GiB)
    mov eax, r13d
    sub eax, 0xc0000000
    shr eax, 21
    mov rcx, r13
    and rcx, ~0x1fffff
    or rcx, 0x9b                            ; present, writable, PWT, PCD, 2 MiB
    mov [PD3 + rax * 8], rcx
    mov rax, cr3
    mov cr3, rax
    ; the six tests' headers
    xor r12d, r12d
.tests:
    mov eax, r12d
    cmp eax, 3
    jae .port_sel
    mov [r13], al                           ; select through BAR0
    jmp .header
.port_sel:
    sub al, 3
    mov dx, r14w
    out dx, al                              ; through BAR1
.header:
    SAY msg_test
    mov eax, r12d
    call puthex
    mov al, ' '
    call putc
    lea rdi, [rel namebuf]
    mov ecx, 16                             ; the name from offset 16
.name:
    mov eax, ecx
    call bar_byte
    stosb
    inc ecx
    test al, al
    jnz .name
    lea rsi, [rel namebuf]
    call puts
    SAY msg_offset
    mov ecx, 4
    call bar_dword
    call puthex
    SAY msg_data
    mov ecx, 8
    mov eax, ecx
    call bar_byte
    call puthex
    SAY msg_nl
    inc r12d
    cmp r12d, 6
    jb .tests
    ; doorbells: test 0 (BAR0 offset 0x800), test 3 (BAR1 offset 0x83)
    mov byte [r13], 0
    mov byte [r13 + 0x800], 0xfa
    mov byte [r13 + 0x800], 0xfa
    mov byte [r13 + 0x800], 0x12
    mov byte [r13 + 0x800], 0xfa
    SAY msg_mmio_count
    xor r12d, r12d
    mov ecx, 12
    call bar_dword
    call putdec
    SAY msg_nl
    mov dx, r14w
    xor eax, eax
    out dx, al                              ; portio test 0 (test 3)
    add dx, 0x83
    mov al, 0xfa
    out dx, al
    out dx, al
    SAY msg_port_count
    mov r12d, 3
    mov ecx, 12
    call bar_dword
    call putdec
    SAY msg_nl
    ; the command register's IO decode
    SAY msg_decode
    mov ebx, 4
    call cfg_read
    mov ecx, eax
    and ecx, ~1 & 0xffff                    ; IO space off (status bits written 0)
    call cfg_write
    mov dx, r14w
    inc dx
    in al, dx
    movzx eax, al
    call puthex
    SAY msg_on
    or ecx, 1
    call cfg_write
    in al, dx
    and eax, 0xff
    mov cl, 2
    call puthex_n
    SAY msg_nl
    ret
.fail:
    SAY msg_fail
    DEBUG_EXIT_WRITE 3                      ; exit status 7
    HALT_FOREVER

; bar_byte: AL = the byte at offset EAX of the selected test's BAR (R12 < 3: BAR0).
bar_byte:
    push rdx
    cmp r12d, 3
    jae .port
    mov eax, eax
    movzx eax, byte [r13 + rax]
    pop rdx
    ret
.port:
    mov edx, r14d
    add edx, eax
    in al, dx
    movzx eax, al
    pop rdx
    ret

; bar_dword: EAX = the dword at offset ECX of the selected test's BAR, byte by byte.
bar_dword:
    push rbx
    push rcx
    xor ebx, ebx
    add ecx, 3
.byte:
    mov eax, ecx
    call bar_byte
    shl ebx, 8
    or ebx, eax
    dec ecx
    cmp ecx, [rsp]
    jge .byte
    mov eax, ebx
    pop rcx
    pop rbx
    ret

; puthex: EAX in lowercase hex, no leading zeros.  puthex_n: the low CL digits.
puthex:
    push rcx
    push rdx
    mov edx, eax
    mov ecx, 28
hex_skip:
    mov eax, edx
    shr eax, cl
    test eax, 0xF
    jnz hex_digits
    sub ecx, 4
    jnz hex_skip
    jmp hex_digits
puthex_n:
    push rcx
    push rdx
    mov edx, eax
    movzx ecx, cl
    dec ecx
    shl ecx, 2
hex_digits:
    mov eax, edx
    shr eax, cl
    and eax, 0xF
    add al, '0'
    cmp al, '9'
    jbe hex_put
    add al, 'a' - '9' - 1
hex_put:
    call putc
    sub ecx, 4
    jns hex_digits
    pop rdx
    pop rcx
    ret

%include "lib/uart.inc"

msg_nl:         db 10, 0
msg_pci:        db "pci 00:", 0
msg_class:      db " class ", 0
msg_hdr:        db " hdr ", 0
msg_subsys:     db " subsys ", 0
msg_pirq:       db "piix3 pirq ", 0
msg_elcr:       db "piix3 elcr ", 0
msg_pm:         db "piix4 pm base ", 0
msg_misc:       db " misc ", 0
msg_bar0:       db "testdev bar0 mem ", 0
msg_bar1:       db " bar1 io ", 0
msg_assigned:   db "testdev bars assigned, decoding", 10, 0
msg_test:       db "testdev test ", 0
msg_offset:     db " offset ", 0
msg_data:       db " data ", 0
msg_mmio_count: db "testdev mmio doorbell count ", 0
msg_port_count: db "testdev portio doorbell count ", 0
msg_decode:     db "testdev io decode off ", 0
msg_on:         db " on ", 0
msg_done:       db "pci: done", 10, 0
msg_fail:       db "pci: check failed", 10, 0
namebuf:        times 32 db 0

load_end:
