; dirty.asm -- writes one byte into three pages of a dirty-logged slot.
;
; Real mode, load at 0x1000, CS=0:IP=0x1000, RAM 0..64 KiB in one slot and a
; second 64 KiB slot at 0x10000 (ES=0x1000) with KVM_MEM_LOG_DIRTY_PAGES.
; Writes 0xa1/0xa5/0xac at offsets 0x1000, 0x5000, 0xc000 of that slot
; (pages 1, 5 and 12), then OUT 0x3f8 '!' and HLT.
bits 16
org 0x1000

start:
    mov ax, 0x1000
    mov es, ax
    mov byte [es:0x1000], 0xa1
    mov byte [es:0x5000], 0xa5
    mov byte [es:0xc000], 0xac
    mov al, '!'
    mov dx, 0x3f8
    out dx, al
    hlt
    jmp start
