/*
 * exit_loop.c -- the C baseline of benchmarks/bench_exit_roundtrip.py.
 *
 * Runs guests/out_loop.bin ("out dx, al; jmp $-1") and counts KVM_RUN round
 * trips: each iteration is one KVM_RUN returning KVM_EXIT_IO, checked the way
 * a minimal VMM does (exit_reason and port), and nothing else.
 *
 *   exit_loop real|cpl0|cpl3 EXITS IMAGE
 *
 * real: 16-bit real mode, image at 0x1000, CS=0.
 * cpl0/cpl3: 64-bit long mode with identity-mapped 2 MiB pages (the same
 * tables and GDT as kvmcpu.backends.modes.set_long_mode), image at 0x1000;
 * cpl3 sets RFLAGS.IOPL=3 so that OUT is allowed in user mode.
 *
 * Prints one line: "<exits> <seconds>".
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define RAM_SIZE 0x10000
#define CODE 0x1000
#define PT 0x9000
#define PORT 0x3f8

static void die(const char *what)
{
    fprintf(stderr, "exit_loop: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, uint8_t dpl, int l, int db)
{
    memset(s, 0, sizeof(*s));
    s->base = 0;
    s->limit = 0xffffffff;
    s->selector = sel;
    s->type = type;
    s->present = 1;
    s->dpl = dpl;
    s->db = db;
    s->s = 1;
    s->l = l;
    s->g = 1;
}

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: exit_loop real|cpl0|cpl3 EXITS IMAGE\n");
        return 2;
    }
    const char *mode = argv[1];
    long n = atol(argv[2]);
    int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
    if (kvm < 0)
        die("/dev/kvm");
    int vm = ioctl(kvm, KVM_CREATE_VM, 0);
    if (vm < 0)
        die("KVM_CREATE_VM");
    uint8_t *ram = mmap(NULL, RAM_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (ram == MAP_FAILED)
        die("mmap");
    FILE *f = fopen(argv[3], "rb");
    if (!f)
        die(argv[3]);
    if (fread(ram + CODE, 1, 64, f) == 0)
        die("read image");
    fclose(f);
    struct kvm_userspace_memory_region region = {
        .slot = 0, .guest_phys_addr = 0, .memory_size = RAM_SIZE,
        .userspace_addr = (uintptr_t)ram,
    };
    if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
        die("KVM_SET_USER_MEMORY_REGION");
    int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
    if (vcpu < 0)
        die("KVM_CREATE_VCPU");
    int size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
    struct kvm_run *run = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
    if (run == MAP_FAILED)
        die("mmap vcpu");

    struct kvm_sregs sregs;
    if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0)
        die("KVM_GET_SREGS");
    struct kvm_regs regs;
    memset(&regs, 0, sizeof(regs));
    regs.rip = CODE;
    regs.rdx = PORT;
    regs.rax = 'x';
    regs.rflags = 0x2;
    if (strcmp(mode, "real") == 0) {
        sregs.cs.base = 0;
        sregs.cs.selector = 0;
    } else {
        int cpl = strcmp(mode, "cpl3") == 0 ? 3 : 0;
        uint64_t *pml4 = (uint64_t *)(ram + PT);
        uint64_t *pdpt = (uint64_t *)(ram + PT + 0x1000);
        uint64_t *pd = (uint64_t *)(ram + PT + 0x2000);
        pml4[0] = (PT + 0x1000) | 7;
        pdpt[0] = (PT + 0x2000) | 7;
        for (int i = 0; i < 512; i++)
            pd[i] = ((uint64_t)i << 21) | 0x87;
        uint64_t *gdt = (uint64_t *)(ram + PT + 0x3000);
        gdt[0] = 0;
        gdt[1] = 0x00AF9B000000FFFFull;
        gdt[2] = 0x00CF93000000FFFFull;
        gdt[3] = 0x00AFFB000000FFFFull;
        gdt[4] = 0x00CFF3000000FFFFull;
        seg(&sregs.cs, cpl ? 0x1b : 0x08, 0xb, cpl, 1, 0);
        seg(&sregs.ds, cpl ? 0x23 : 0x10, 0x3, cpl, 0, 1);
        sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
        sregs.gdt.base = PT + 0x3000;
        sregs.gdt.limit = 5 * 8 - 1;
        sregs.cr3 = PT;
        sregs.cr4 = (1 << 5) | (1 << 9) | (1 << 10);
        sregs.cr0 = 0x80050033;
        sregs.efer = (1 << 8) | (1 << 10) | 1;
        if (cpl)
            regs.rflags |= 3 << 12;
    }
    if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0)
        die("KVM_SET_SREGS");
    if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0)
        die("KVM_SET_REGS");

    /* Warm up (first entries fault in the pages), then time n round trips. */
    for (int i = 0; i < 100; i++)
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            die("KVM_RUN");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long i = 0; i < n; i++) {
        if (ioctl(vcpu, KVM_RUN, 0) < 0)
            die("KVM_RUN");
        if (run->exit_reason != KVM_EXIT_IO || run->io.port != PORT) {
            fprintf(stderr, "exit_loop: unexpected exit %u\n", run->exit_reason);
            return 1;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("%ld %.9f\n", n, secs);
    munmap(run, size);
    close(vcpu);
    close(vm);
    close(kvm);
    return 0;
}
