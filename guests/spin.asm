; spin.asm -- "jmp $" forever: never exits on its own.
;
; The two bytes EB FE mean the same in 16-, 32- and 64-bit code, so this image
; runs in any mode at any address. Used by the kick / immediate_exit / timer
; and watchdog tests: only a signal or immediate_exit gets the vCPU back.
bits 16
org 0x1000

start:
    jmp $
