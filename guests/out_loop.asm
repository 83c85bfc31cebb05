; out_loop.asm -- "out dx, al" in a tight loop: one IO exit per iteration.
;
; The host sets DX (the port) and AL before the first run. The bytes (EE EB FD)
; mean the same in 16-bit and 64-bit code, so the exit round-trip benchmark
; runs this image in real mode and at CPL3 in long mode (with IOPL=3).
bits 16
org 0x1000

start:
    out dx, al
    jmp start
