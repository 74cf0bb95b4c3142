/*
 * How long does a futex wake-up take when the sleeper's core went idle?
 * (docs/benchmarks.md, "Dear wake-ups".) Two threads hand a word back and
 * forth, each sleeping on a futex until the other wakes it; with a GAP,
 * each side first works GAP microseconds (a spin on the clock), so the
 * other's core has been idle that long when the wake-up comes.
 *
 *   gcc -O2 -pthread -o /tmp/futex-wake-idle docs/repro/futex-wake-idle.c
 *   /tmp/futex-wake-idle 0    # wake-ups of a thread that has just slept
 *   /tmp/futex-wake-idle 20   # wake-ups of a thread idle for 20 us
 *
 * Prints the round trip (two wake-ups) less the gaps.
 */
#define _GNU_SOURCE
#include <linux/futex.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ROUNDS 2000

static _Atomic int word;
static int gap_us;

static void futex(int op, int val) { syscall(SYS_futex, &word, op, val, NULL, NULL, 0); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

static void work(void) {
    double start = now();
    while (now() - start < gap_us * 1e-6) {
    }
}

static void *other(void *arg) {
    (void)arg;
    for (int i = 0; i < ROUNDS; i++) {
        while (atomic_load(&word) != 1) futex(FUTEX_WAIT, 0);
        work();
        atomic_store(&word, 0);
        futex(FUTEX_WAKE, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    gap_us = argc > 1 ? atoi(argv[1]) : 0;
    pthread_t t;
    pthread_create(&t, NULL, other, NULL);
    double start = now();
    for (int i = 0; i < ROUNDS; i++) {
        atomic_store(&word, 1);
        futex(FUTEX_WAKE, 1);
        while (atomic_load(&word) != 0) futex(FUTEX_WAIT, 1);
        work();
    }
    double elapsed = now() - start;
    pthread_join(t, NULL);
    printf("round trip of two wake-ups: %.1f us (each side working %d us first)\n",
           elapsed / ROUNDS * 1e6 - 2 * gap_us, gap_us);
    return 0;
}
