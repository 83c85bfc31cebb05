; io_real.asm -- every basic exit kind, in 16-bit real mode.
;
; Load at guest-physical 0x1000 and start with CS=0, IP=0x1000 (RAM 0..64 KiB;
; nothing mapped at 0x20000, which is where the MMIO accesses go).
; Exit sequence (tests/guests.py: IO_SEQUENCE describes it):
;   1. OUT  0x3f8, 1 byte  '4'          (2 + 2 computed by the guest)
;   2. OUT  0x402, 2 bytes 0x1234
;   3. OUT  0x404, 4 bytes 0xdeadbeef
;   4. IN   0x3fd, 1 byte               (the host completes it)
;   5. OUT  0x3f8, 1 byte  <value read in 4>
;   6. MMIO write 0x20010, 4 bytes 0xcafef00d
;   7. MMIO read  0x20020, 4 bytes      (the host completes it)
;   8. OUT  0x404, 4 bytes <value read in 7>
;   9. HLT
; Steps 1-5 are lib/io_sequence.inc's IO_PORT_EXITS, shared with io_long.asm.
bits 16
org 0x1000

%include "lib/io_sequence.inc"

start:
    IO_PORT_EXITS                           ; steps 1-5
    mov ax, 0x2000
    mov es, ax
    mov dword [es:0x10], 0xcafef00d
    mov eax, [es:0x20]
    mov dx, 0x404
    out dx, eax
    hlt
    jmp start
