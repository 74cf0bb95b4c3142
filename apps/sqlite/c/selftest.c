/* Seeded bugs, run only on request (--flexos-selftest c-BUG, and the older
 * --flexos-selftest NAME INPUT), that show the hardening options of the C
 * component catch what they promise (docs/hardening.md). Compiled with
 * exactly the flags of SQLite itself. Each returns normally, with a value,
 * when no option catches its bug (the negative control). */
#include <assert.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

int flexos_selftest(const char *name, const char *input);

/* Laundered through a volatile, so the compiler cannot see the values. */
static volatile int one = 1;

/* Copies `input` into a 16-byte stack buffer without checking its length. */
static int __attribute__((noinline)) smash_stack(const char *input) {
    char buf[16];
    volatile char *p = buf; /* the stores cannot be optimized away */
    size_t n = strlen(input);
    for (size_t i = 0; i <= n; i++) p[i] = input[i];
    return (int)n;
}

/* Adds the length of `input` to INT_MAX - 1: signed overflow for inputs of two or more bytes. */
static int __attribute__((noinline)) overflow_int(const char *input) {
    int x = INT_MAX - 1;
    return x + (int)strlen(input);
}

/* Writes to the address given in hexadecimal (a wild pointer). */
static int __attribute__((noinline)) wild_write(const char *input) {
    unsigned long addr = 0;
    for (const char *p = input[0] == '0' && input[1] == 'x' ? input + 2 : input; *p; p++)
        addr = addr * 16 + (unsigned long)(*p <= '9' ? *p - '0' : (*p | 0x20) - 'a' + 10);
    *(volatile int *)addr = 1;
    return 0;
}

/* Reads the byte just past a 24-byte heap block. */
static int __attribute__((noinline)) heap_overflow(void) {
    char *p = malloc(24);
    if (!p) return -2;
    memset(p, 1, 24);
    int r = ((volatile char *)p)[23 + one];
    free(p);
    return r;
}

/* Reads a heap block after freeing it. */
static int __attribute__((noinline)) use_after_free(void) {
    char *p = malloc(32);
    if (!p) return -2;
    memset(p, 7, 32);
    free(p);
    return ((volatile char *)p)[3];
}

/* Writes one byte past a 24-byte stack buffer (the size that puts the
 * stack protector's canary right after it, and unused stack without it). */
static int __attribute__((noinline)) stack_overflow(void) {
    char buf[24];
    volatile char *p = buf;
    for (int i = 0; i < 24; i++) p[i] = (char)i;
    p[23 + one] = 'A';
    return p[0] + p[23];
}

static int __attribute__((noinline)) add_one(int x) { return x + 1; }

/* Calls add_one through a pointer of another function type. */
static int __attribute__((noinline)) bad_indirect_call(void) {
    int (*volatile f)(int) = add_one;
    long (*g)(long, long) = (long (*)(long, long))f;
    return (int)g(41, 2);
}

/* INT_MAX plus one. */
static int __attribute__((noinline)) signed_overflow(void) {
    int x = INT_MAX;
    return x + one;
}

/* An assertion that does not hold. */
static int __attribute__((noinline)) failed_assertion(void) {
    int x = one;
    assert(x == 0 && "seeded bug");
    return x;
}

/* Returns the seeded bug's result, or -1 for an unknown name. */
int flexos_selftest(const char *name, const char *input) {
    if (strcmp(name, "c-heap-overflow") == 0) return heap_overflow();
    if (strcmp(name, "c-use-after-free") == 0) return use_after_free();
    if (strcmp(name, "c-stack-overflow") == 0) return stack_overflow();
    if (strcmp(name, "c-bad-indirect-call") == 0) return bad_indirect_call();
    if (strcmp(name, "c-signed-overflow") == 0) return signed_overflow();
    if (strcmp(name, "c-assertion") == 0) return failed_assertion();
    if (!input) return -1;
    if (strcmp(name, "stack-smash") == 0) return smash_stack(input);
    if (strcmp(name, "signed-overflow") == 0) return overflow_int(input);
    if (strcmp(name, "wild-write") == 0) return wild_write(input);
    return -1;
}
