/* app_platform.h on Linux, for the baseline: glibc and the kernel's files. */
#define _GNU_SOURCE
#include "app_platform.h"
#include "sqlite3.h"
#include <errno.h>
#include <fcntl.h>
#include <string.h>
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
    if (fd < 0) return -errno;
    struct stat st;
    if (fstat(fd, &st) != 0) { int e = errno; close(fd); return -e; }
    char *buf = sqlite3_malloc64((sqlite3_uint64)st.st_size + 1);
    if (!buf) { close(fd); return -ENOMEM; }
    ssize_t n = pread(fd, buf, (size_t)st.st_size, 0);
    int e = errno;
    close(fd);
    if (n != st.st_size) { sqlite3_free(buf); return n < 0 ? -e : -EIO; }
    buf[n] = 0;
    *out = buf;
    *len = (size_t)n;
    return 0;
}

const char *app_error_text(int rc) { return strerror(-rc); }

/* tmpfs has its own limits (its size= option); nothing to set here. */
int app_fs_limits(uint64_t max_file_size, uint64_t capacity) {
    (void)max_file_size; (void)capacity;
    return 0;
}

void app_remove(const char *path) { unlink(path); }

/* tmpfs, as in FlexOS's Linux baseline. */
const char *app_default_db(void) {
    static char path[64];
    snprintf(path, sizeof path, "/dev/shm/flexos-sqlite-%d.db", (int)getpid());
    return path;
}
