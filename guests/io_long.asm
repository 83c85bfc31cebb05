; io_long.asm -- the exit sequence of io_real.asm in 64-bit long mode.
;
; Load at guest-physical 0x2000 with identity-mapped paging (set_long_mode);
; RAM 0..64 KiB, nothing mapped at 0x20000.
; Two entry points:
;   0x2000  CPL0 entry: ends with HLT (exit 9 = HLT), like io_real.
;   0x2010  CPL3 entry (needs RFLAGS.IOPL=3 for IN/OUT): HLT is privileged at
;           CPL3, so exit 9 is instead OUT 0x3ff, 1 byte 0x00 ("done").
bits 64
org 0x2000

%include "lib/io_sequence.inc"

cpl0_entry:
    xor ebp, ebp
    jmp body
    times 0x10 - ($ - $$) db 0x90
cpl3_entry:
    mov ebp, 1
    jmp body

body:
    IO_PORT_EXITS                           ; steps 1-5 of io_real.asm
    mov dword [abs 0x20010], 0xcafef00d
    mov eax, [abs 0x20020]
    mov dx, 0x404
    out dx, eax
    test ebp, ebp
    jnz .done
    hlt
    jmp cpl0_entry
.done:
    xor eax, eax
    mov dx, 0x3ff
    out dx, al
    jmp .done
