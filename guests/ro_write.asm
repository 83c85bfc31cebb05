; ro_write.asm -- reads, then writes, a read-only memory slot.
;
; Real mode, load at 0x1000, CS=0:IP=0x1000; a read-only slot at 0x30000
; (ES=0x3000). Exit sequence:
;   1. OUT 0x3f8, 1 byte  <byte at 0x30010>   (reads of a read-only slot work)
;   2. MMIO write 0x30010, 1 byte 0x77        (writes exit; memory unchanged)
;   3. OUT 0x3f8, 1 byte  <byte at 0x30010 re-read>
;   4. HLT
bits 16
org 0x1000

start:
    mov ax, 0x3000
    mov es, ax
    mov al, [es:0x10]
    mov dx, 0x3f8
    out dx, al
    mov byte [es:0x10], 0x77
    mov al, [es:0x10]
    out dx, al
    hlt
    jmp start
