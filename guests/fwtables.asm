; build: nasm -f bin
; fwtables.asm -- a Multiboot kernel that finds and walks the firmware tables.
;
; Loaded at 1 MiB (a.out kludge), it stays in 32-bit flat protected mode
; (paging off) and prints one line per structure to COM1, `KIND key=value ...`:
;   RSDP at= rev= csum=ok|bad [xcsum=]   found as ACPI 5.2.5.1 says: the first
;                                         KiB of the EBDA (segment at 0x40e), then
;                                         0xe0000-0xfffff on 16-byte boundaries
;   RSDT at= len= rev= csum= n=           (and XSDT when the RSDP's rev >= 2)
;   TABLE sig= at= len= rev= csum=        each RSDT entry, and the FADT's DSDT
;   FACS at= len=                         the FADT's FIRMWARE_CTRL
;   MADT types= ...                       each entry's type; an interrupt source
;                                         override as 2/<its ISA IRQ>
;   MP at= csum= tcsum= n= types= ...     the floating pointer (EBDA's first
;                                         KiB, then 0xf0000-0xfffff) and the
;                                         configuration table's entry types
;   SMBIOS ver= csum= dmicsum= n= types=  the "_SM_" entry point in 0xf0000-0xfffff
;                                         and each structure's type
;   END
; then writes 0 to isa-debug-exit (QEMU status 1) and halts.
; Costs: 47,487 instructions on kvmcpu (the mock's exact count; KVM emulates
; this ring-0 code instruction by instruction on a nested host).

bits 32
org 0x100000

LOAD_ADDR   equ 0x100000
MB_FLAGS    equ 0x00010000

header:
    dd 0x1BADB002, MB_FLAGS, -(0x1BADB002 + MB_FLAGS)
    dd header, LOAD_ADDR, load_end, bss_end, start

start:
    mov esp, stack_top
    cld

    ; --- the RSDP -----------------------------------------------------------
    movzx eax, word [0x40e]
    shl eax, 4
    mov ecx, 1024 / 16
    call find_rsdp
    jnc .rsdp
    mov eax, 0xe0000
    mov ecx, 0x20000 / 16
    call find_rsdp
    jnc .rsdp
    mov esi, msg_none
    call puts
    jmp finish
.rsdp:
    mov ebp, ebx                            ; EBP = RSDP
    mov esi, msg_rsdp
    call puts
    mov eax, ebp
    call puthex
    mov esi, msg_rev
    call puts
    movzx eax, byte [ebp + 15]
    call putdec
    mov esi, msg_csum
    call puts
    mov esi, ebp
    mov ecx, 20
    call sum_ok
    cmp byte [ebp + 15], 2
    jb .no_x
    mov esi, msg_xcsum
    call puts
    mov esi, ebp
    mov ecx, [ebp + 20]
    call sum_ok
.no_x:
    call putnl

    mov ebx, [ebp + 16]
    mov esi, msg_rsdt
    mov edi, 4
    call walk_sdt
    cmp byte [ebp + 15], 2
    jb .mp
    mov ebx, [ebp + 24]
    mov esi, msg_xsdt
    mov edi, 8
    call walk_sdt

    ; --- the MP floating pointer --------------------------------------------
.mp:
    movzx eax, word [0x40e]
    shl eax, 4
    mov ecx, 1024 / 16
    mov edx, '_MP_'
    call find_sig
    jnc .mp_found
    mov eax, 0xf0000
    mov ecx, 0x10000 / 16
    call find_sig
    jc .smbios
.mp_found:
    mov ebp, ebx
    mov esi, msg_mp
    call puts
    mov eax, ebp
    call puthex
    mov esi, msg_csum
    call puts
    mov esi, ebp
    mov ecx, 16
    call sum_ok
    mov ebx, [ebp + 4]                      ; the configuration table
    mov esi, msg_tcsum
    call puts
    mov esi, ebx
    movzx ecx, word [ebx + 4]
    call sum_ok
    mov esi, msg_n
    call puts
    movzx eax, word [ebx + 34]
    call putdec
    mov esi, msg_types
    call puts
    movzx ecx, word [ebx + 34]
    lea esi, [ebx + 44]
.mp_entry:
    test ecx, ecx
    jz .mp_done
    movzx eax, byte [esi]
    call putsp
    call putdec
    add esi, 8
    test eax, eax                           ; a processor entry is 20 bytes
    jnz .mp_next
    add esi, 12
.mp_next:
    dec ecx
    jmp .mp_entry
.mp_done:
    call putnl

    ; --- SMBIOS ---------------------------------------------------------------
.smbios:
    mov eax, 0xf0000
    mov ecx, 0x10000 / 16
    mov edx, '_SM_'
    call find_sig
    jc finish
    mov ebp, ebx
    mov esi, msg_smbios
    call puts
    movzx eax, byte [ebp + 6]
    call putdec
    mov al, '.'
    call putc
    movzx eax, byte [ebp + 7]
    call putdec
    mov esi, msg_csum
    call puts
    mov esi, ebp
    movzx ecx, byte [ebp + 5]
    call sum_ok
    mov esi, msg_dmicsum
    call puts
    lea esi, [ebp + 16]
    mov ecx, 15
    call sum_ok
    mov esi, msg_n
    call puts
    movzx eax, word [ebp + 28]
    call putdec
    mov esi, msg_types
    call puts
    movzx ecx, word [ebp + 28]
    mov esi, [ebp + 24]
.sm_struct:
    test ecx, ecx
    jz .sm_done
    movzx eax, byte [esi]
    call putsp
    call putdec
    movzx eax, byte [esi + 1]
    add esi, eax                            ; past the formatted area
.sm_strings:
    cmp word [esi], 0
    je .sm_next
    inc esi
    jmp .sm_strings
.sm_next:
    add esi, 2
    dec ecx
    jmp .sm_struct
.sm_done:
    call putnl

finish:
    mov esi, msg_end
    call puts
    xor eax, eax
    out 0xf4, al
.halt:
    cli
    hlt
    jmp .halt

; find_rsdp: EAX = start, ECX = 16-byte steps. CF clear and EBX = the first
; "RSD PTR " whose first 20 bytes sum to 0; CF set when there is none.
find_rsdp:
    cmp dword [eax], 'RSD '
    jne .skip
    cmp dword [eax + 4], 'PTR '
    jne .skip
    push ecx
    push eax
    mov esi, eax
    mov ecx, 20
    call sum8
    pop eax
    pop ecx
    test dl, dl
    jnz .skip
    mov ebx, eax
    clc
    ret
.skip:
    add eax, 16
    loop find_rsdp
    stc
    ret

; find_sig: EAX = start, ECX = 16-byte steps, EDX = the signature dword.
; CF clear and EBX = its first occurrence on a 16-byte boundary; CF set: none.
find_sig:
    cmp [eax], edx
    je .found
    add eax, 16
    loop find_sig
    stc
    ret
.found:
    mov ebx, eax
    clc
    ret

; sum8: DL = the sum of ECX (> 0) bytes at ESI. Clobbers ECX, ESI.
sum8:
    xor edx, edx
.add:
    add dl, [esi]
    inc esi
    loop .add
    ret

; sum_ok: print "ok" when the ECX bytes at ESI sum to 0, else "bad".
sum_ok:
    push edx
    call sum8
    mov esi, msg_ok
    test dl, dl
    jz .print
    mov esi, msg_bad
.print:
    call puts
    pop edx
    ret

; header_line: print " at=<EBX> len= rev= csum=" of the table at EBX.
header_line:
    push esi
    push ecx
    mov esi, msg_at
    call puts
    mov eax, ebx
    call puthex
    mov esi, msg_len
    call puts
    mov eax, [ebx + 4]
    call puthex
    mov esi, msg_rev
    call puts
    movzx eax, byte [ebx + 8]
    call putdec
    mov esi, msg_csum
    call puts
    mov esi, ebx
    mov ecx, [ebx + 4]
    call sum_ok
    pop ecx
    pop esi
    ret

; table_line: "TABLE sig=XXXX" and header_line for the table at EBX; for the
; FADT also its DSDT and FACS, for the MADT its entry types.
table_line:
    pushad
    mov esi, msg_table
    call puts
    mov eax, [ebx]
    mov [sigbuf], eax
    mov esi, sigbuf
    call puts
    call header_line
    call putnl
    cmp dword [ebx], 'FACP'
    je .fadt
    cmp dword [ebx], 'APIC'
    je .madt
    popad
    ret
.fadt:
    mov ebp, ebx
    mov ebx, [ebp + 40]                     ; DSDT
    call table_line
    mov esi, msg_facs
    call puts
    mov eax, [ebp + 36]
    call puthex
    mov esi, msg_len
    call puts
    mov eax, [eax + 4]
    call puthex
    call putnl
    popad
    ret
.madt:
    mov esi, msg_madt
    call puts
    lea esi, [ebx + 44]
    mov edi, ebx
    add edi, [ebx + 4]
.entry:
    cmp esi, edi
    jae .madt_done
    call putsp
    movzx eax, byte [esi]
    call putdec
    cmp al, 2
    jne .next
    mov al, '/'
    call putc
    movzx eax, byte [esi + 3]
    call putdec
.next:
    movzx eax, byte [esi + 1]
    add esi, eax
    jmp .entry
.madt_done:
    call putnl
    popad
    ret

; walk_sdt: ESI = the line's name, EBX = an RSDT (EDI = 4) or XSDT (EDI = 8).
walk_sdt:
    call puts
    call header_line
    mov esi, msg_n
    call puts
    mov eax, [ebx + 4]
    sub eax, 36
    xor edx, edx
    div edi
    mov ecx, eax
    call putdec
    call putnl
    lea esi, [ebx + 36]
.each:
    test ecx, ecx
    jz .done
    push ebx
    mov ebx, [esi]                          ; the low 32 bits of an XSDT entry too
    call table_line
    pop ebx
    add esi, edi
    dec ecx
    jmp .each
.done:
    ret

%include "lib/uart32.inc"

msg_none:    db "RSDP none", 10, 0
msg_rsdp:    db "RSDP at=", 0
msg_rsdt:    db "RSDT", 0
msg_xsdt:    db "XSDT", 0
msg_table:   db "TABLE sig=", 0
msg_facs:    db "FACS at=", 0
msg_madt:    db "MADT types=", 0
msg_mp:      db "MP at=", 0
msg_smbios:  db "SMBIOS ver=", 0
msg_at:      db " at=", 0
msg_len:     db " len=", 0
msg_rev:     db " rev=", 0
msg_csum:    db " csum=", 0
msg_xcsum:   db " xcsum=", 0
msg_tcsum:   db " tcsum=", 0
msg_dmicsum: db " dmicsum=", 0
msg_n:       db " n=", 0
msg_types:   db " types=", 0
msg_ok:      db "ok", 0
msg_bad:     db "bad", 0
msg_end:     db "END", 10, 0
sigbuf:      db 0, 0, 0, 0, 0

load_end:
; A 1 KiB stack in the BSS, after the image.
bss_end     equ LOAD_ADDR + ((load_end - $$ + 15) & ~15) + 1024
stack_top   equ bss_end
