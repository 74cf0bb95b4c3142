/* app_platform.h on Linux, for the baseline: glibc and the kernel's files. */
#define _GNU_SOURCE
#include "app_platform.h"
#include "sqlite3.h"
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

void app_write(int fd, const char *s, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, s, n);
        if (w <= 0) return;
        s += w;
        n -= (size_t)w;
    }
}

uint64_t app_monotonic_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int app_read_file(const char *path, char **out, size_t *len) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    struct stat st;
    if (fstat(fd, &st) != 0) { close(fd); return -1; }
    char *buf = sqlite3_malloc64((sqlite3_uint64)st.st_size + 1);
    ssize_t n = buf ? pread(fd, buf, (size_t)st.st_size, 0) : -1;
    close(fd);
    if (n != st.st_size) { sqlite3_free(buf); return -1; }
    buf[n] = 0;
    *out = buf;
    *len = (size_t)n;
    return 0;
}

void app_remove(const char *path) { unlink(path); }

/* tmpfs, as in FlexOS's Linux baseline. */
const char *app_default_db(void) {
    static char path[64];
    snprintf(path, sizeof path, "/dev/shm/flexos-sqlite-%d.db", (int)getpid());
    return path;
}
