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

/* Returns the seeded bug's result, or -1 for an unknown name. */
int flexos_selftest(const char *name, const char *input) {
    if (strcmp(name, "stack-smash") == 0) return smash_stack(input);
    if (strcmp(name, "signed-overflow") == 0) return overflow_int(input);
    return -1;
}
