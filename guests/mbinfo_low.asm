; build: nasm -f bin
; mbinfo_low.asm -- lib/mbinfo.inc loaded at 0x8000 with a 1 KiB BSS (its stack).
;
; The kernel ends below 0x9000, so QEMU's boot buffer (the module list, the
; command lines, the boot loader name: the page after the kernel) starts at
; 0x9000, where the option ROM wrote the e820 map before it copied the kernel
; and that buffer: the first bytes of the map the kernel finds are the buffer's.
LOAD_ADDR   equ 0x8000
BSS_SIZE    equ 0x400
%include "lib/mbinfo.inc"
