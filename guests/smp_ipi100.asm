; build: nasm -f bin
; smp_ipi100.asm -- guests/smp.asm's bring-up and IPI ping-pong only, 100 rounds
; (BSP -> cpu 1 vector 0x40, cpu 1 -> BSP vector 0x41, each side waiting with
; `sti; hlt`), then "smp: done" and isa-debug-exit. benchmarks/bench_ipi_roundtrip.py
; takes the round trip from the host time of smp_ipi1000 less smp_ipi10's.

%define IPI_ROUNDS 100
%include "smp.asm"
