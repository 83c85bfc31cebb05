; build: nasm -f bin
; smp_compute.asm -- guests/smp.asm's bring-up, then every CPU runs a CPL3 compute
; loop of its own (100000000 iterations of imul, add, dec, jnz; no shared data
; but the final `lock add` of its count) and the BSP prints the total:
;
;   smp: cpus N / smp: cpu K apic K cpuid K (each CPU) / smp: all N up
;   smp: counter N00000000 = N x 100000000
;   smp: done
;
; benchmarks/bench_smp_scaling.py runs it on 1 and 2 vCPUs (the throughput of
; several host threads). See smp.asm for the rest.

%define COMPUTE
%include "smp.asm"
