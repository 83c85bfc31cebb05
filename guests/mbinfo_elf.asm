; build: nasm -f bin
; mbinfo_elf.asm -- lib/mbinfo.inc as an ELF32 Multiboot kernel at 2 MiB, whose
; segment has a 16 KiB BSS beyond the file (QEMU loads the ELF, not the header's
; address fields).
%define MB_ELF
LOAD_ADDR   equ 0x200000
BSS_SIZE    equ 0x4000
%include "lib/mbinfo.inc"
