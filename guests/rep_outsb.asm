; rep_outsb.asm -- 5 bytes "hello" to port 0x3f8 with one REP OUTSB, then HLT.
;
; Real mode, load at 0x1000, CS=0:IP=0x1000. KVM may report this as one exit of
; count 5 or as several exits (this host's emulator gives 5 exits of count 1);
; either way the data of all exits concatenated is "hello".
bits 16
org 0x1000

start:
    cld
    mov si, msg
    mov cx, 5
    mov dx, 0x3f8
    rep outsb
    hlt
    jmp start
msg:
    db "hello"
