; build: nasm -f bin
; mbinfo_high.asm -- lib/mbinfo.inc loaded at 1 MiB with a 1 KiB BSS (its stack).
LOAD_ADDR   equ 0x100000
BSS_SIZE    equ 0x400
%include "lib/mbinfo.inc"
