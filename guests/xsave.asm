; build: nasm -f bin
; xsave.asm -- XSETBV/XGETBV, XRSTOR/XSAVE and STAC/CLAC at CPL0, as a kernel
; uses them, from fixed inputs.
;
; A Multiboot v1 kernel (lib/multiboot_long.inc: long mode, CPL0). Where KVM
; emulates CPL0 code, its emulator refuses the XSAVE family (and CLAC/STAC):
; those run on the mock through the emulation fallback. The guest enables what
; CPUID offers -- XCR0 = x87 | SSE | AVX as far as leaf 0xD lists them --, restores
; an image whose XSTATE_BV is that XCR0, saves the state again into a zeroed area
; and prints
;
;   xsave: R0 R1 ... R9
;
; (16 hex digits each), then writes 0 to isa-debug-exit (exit status 1):
;   R0  CPUID.1:ECX.XSAVE | CPUID.7:EBX.SMAP << 1 (the rest is 0 without XSAVE)
;   R1  XCR0 read back with XGETBV after XSETBV
;   R2  CPUID.1:ECX.OSXSAVE after CR4.OSXSAVE was set (1)
;   R3  MXCSR after the XRSTOR (the image holds 0x1fa0)
;   R4  the saved area's first quadword (FCW 0x027f, FSW 0x0100, FTW 0x81, FOP 0x1ab)
;   R5  XMM0 bits 63:0 as saved (0x0101...), R6 XMM15 bits 127:64 (0x1010...)
;   R7  the saved XSTATE_BV (= XCR0: every component was loaded from memory)
;   R8  YMM0 bits 191:128 as saved where AVX is in XCR0 (0x3333...), else 0
;   R9  where CPUID has SMAP: RFLAGS.AC set after STAC (1) | clear after CLAC (2), else 0
; Any exception prints "xsave: exception" and exits with status 5.

%include "lib/multiboot_long.inc"           ; must come first: header at 0x100000
%include "lib/exit.inc"
%include "lib/idt_pic.inc"

IDT         equ BSS_BOOT_END
AREA        equ BSS_BOOT_END + 0x1000       ; the XSAVE target (page aligned)
BSS_END     equ BSS_BOOT_END + 0x2000
NRESULTS    equ 10

main:
    mov rdi, IDT
    xor ecx, ecx
.idt_loop:
    lea rax, [rel exc_handler]
    IDT64_GATE
    add rdi, 16
    inc ecx
    cmp ecx, 32
    jb .idt_loop
    lidt [rel idt_ptr]

    lea rdi, [rel results]
    mov eax, 1
    cpuid
    bt ecx, 26
    jnc .report                             ; no XSAVE: R0 = 0 and nothing else
    mov qword [rdi], 1
    mov eax, 7
    xor ecx, ecx
    cpuid
    bt ebx, 20
    jnc .no_smap
    or qword [rdi], 2
.no_smap:
    mov rax, cr4
    bts rax, 18                             ; CR4.OSXSAVE
    mov cr4, rax
    mov eax, 1
    cpuid
    shr ecx, 27
    and ecx, 1
    mov [rdi + 16], rcx
    mov eax, 0xd
    xor ecx, ecx
    cpuid
    and eax, 7
    cmp eax, 7
    je .xcr0
    and eax, 3                              ; AVX only with SSE
.xcr0:
    mov [rel xcr0], rax
    xor edx, edx
    xor ecx, ecx
    xsetbv
    xor eax, eax
    xgetbv
    shl rdx, 32
    or rax, rdx
    mov [rdi + 8], rax

    mov rax, [rel xcr0]
    mov [rel image + 512], rax              ; XSTATE_BV: load every enabled component
    mov eax, -1
    mov edx, -1
    xrstor64 [rel image]
    stmxcsr [rel mxcsr]
    mov eax, [rel mxcsr]
    mov [rdi + 24], rax
    mov eax, -1
    mov edx, -1
    xsave64 [AREA]
    mov rax, [AREA]
    mov [rdi + 32], rax
    mov rax, [AREA + 160]
    mov [rdi + 40], rax
    mov rax, [AREA + 160 + 15 * 16 + 8]
    mov [rdi + 48], rax
    mov rax, [AREA + 512]
    mov [rdi + 56], rax
    test qword [rel xcr0], 4
    jz .no_avx
    mov rax, [AREA + 576]
    mov [rdi + 64], rax
.no_avx:
    test qword [rdi], 2
    jz .report
    stac
    pushfq
    pop rax
    clac
    pushfq
    pop rbx
    shr rax, 18
    and eax, 1
    shr rbx, 18
    and ebx, 1
    xor ebx, 1
    shl ebx, 1
    or eax, ebx
    mov [rdi + 72], rax

.report:
    lea rsi, [rel msg_head]
    call puts
    lea rbx, [rel results]
    mov ecx, NRESULTS
.print:
    mov al, ' '
    call putc
    mov rax, [rbx]
    call puthex64
    add rbx, 8
    dec ecx
    jnz .print
    mov al, 10
    call putc
    DEBUG_EXIT_WRITE 0                      ; exit status (0 << 1) | 1 = 1
    HALT_FOREVER

exc_handler:
    lea rsi, [rel msg_exc]
    call puts
    DEBUG_EXIT_WRITE 2                      ; exit status (2 << 1) | 1 = 5
    jmp exc_handler

%include "lib/puthex64.inc"

%include "lib/uart.inc"

align 8
idt_ptr:
    dw 32 * 16 - 1
    dq IDT
xcr0:       dq 0
mxcsr:      dd 0
align 8
results:    times NRESULTS dq 0
msg_head:   db "xsave:", 0
msg_exc:    db "xsave: exception", 10, 0

align 64
image:                                      ; legacy region, header, AVX (standard form)
    dw 0x027f, 0x0100                       ; FCW, FSW
    db 0x81, 0                              ; FTW (abridged), reserved
    dw 0x01ab                               ; FOP
    dq 0, 0                                 ; FIP, FDP
    dd 0x1fa0, 0                            ; MXCSR, MXCSR_MASK
%assign i 0
%rep 8
    times 10 db 0x20 + i                    ; ST(i)
    times 6 db 0
%assign i i + 1
%endrep
%assign i 1
%rep 16
    times 16 db i                           ; XMM(i-1)
%assign i i + 1
%endrep
    times 512 - ($ - image) db 0
    times 64 db 0                           ; header (XSTATE_BV set at run time)
    times 256 db 0x33                       ; AVX: YMM0-15 bits 255:128

load_end:
