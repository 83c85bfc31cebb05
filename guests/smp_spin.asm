; build: nasm -f bin
; smp_spin.asm -- guests/smp_compute.asm with 2147483647 iterations per CPU: every
; CPU computes for seconds on KVM (and far longer on the mock), so a test can
; interrupt all of them while they run (tests/system/test_gdb_smp.py: Ctrl-C
; under the GDB stub). See smp.asm for the rest.

%define COMPUTE
%define COMPUTE_ITERATIONS 0x7FFFFFFF
%include "smp.asm"
