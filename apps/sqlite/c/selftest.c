/* Seeded bugs, run only on request (--flexos-selftest NAME INPUT), that show
 * the hardening options of the C component catch what they promise
 * (DESIGN section 6). Compiled with exactly the flags of SQLite itself. */
#include <limits.h>
#include <string.h>

int flexos_selftest(const char *name, const char *input);

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

/* Returns the seeded bug's result, or -1 for an unknown name. */
int flexos_selftest(const char *name, const char *input) {
    if (strcmp(name, "stack-smash") == 0) return smash_stack(input);
    if (strcmp(name, "signed-overflow") == 0) return overflow_int(input);
    if (strcmp(name, "wild-write") == 0) return wild_write(input);
    return -1;
}
