; coalesced.asm -- MMIO stores into a coalesced zone, then one OUT.
;
; Real mode, load at 0x1000, CS=0:IP=0x1000; the host registers a coalesced
; MMIO zone at 0x40000 (ES=0x4000, not backed by RAM). The stores land in the
; coalesced ring without exits:
;   0x40000 <- byte 0x11, 0x40002 <- word 0x2222, 0x40004 <- dword 0x44444444,
;   0x40008 <- byte 0x88
; then OUT 0x3f8 'c' (the first exit) and HLT.
bits 16
org 0x1000

start:
    mov ax, 0x4000
    mov es, ax
    mov byte [es:0x0], 0x11
    mov word [es:0x2], 0x2222
    mov dword [es:0x4], 0x44444444
    mov byte [es:0x8], 0x88
    mov al, 'c'
    mov dx, 0x3f8
    out dx, al
    hlt
    jmp start
