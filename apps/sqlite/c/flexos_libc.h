/* The FlexOS C library as C sees it (components/libc). File functions
 * return a non-negative result or -errno. */
#ifndef FLEXOS_LIBC_H
#define FLEXOS_LIBC_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

int flexos_libc_open(const char *path, int flags, int mode);
int flexos_libc_close(int fd);
ssize_t flexos_libc_pread(int fd, void *buf, size_t n, int64_t offset);
ssize_t flexos_libc_pwrite(int fd, const void *buf, size_t n, int64_t offset);
/* pwrite with write-behind: queued, reported done at once; errors come from the next file call (fsync). */
ssize_t flexos_libc_pwrite_behind(int fd, const void *buf, size_t n, int64_t offset);
/* close with write-behind: behind queued writes it sends them (their error is
 * its own); with nothing queued it is queued and sent by the next file call
 * (unlink in the same crossing), whose error an error of the close becomes. */
int flexos_libc_close_behind(int fd);
/* fsync with write-behind: queued after the writes before it, reported done at
 * once; an error it or they meet is the next file call's, and the records
 * queued after a failed one are dropped (for SQLite's rollback journal, whose
 * sync is always followed by the database's, made at once). */
int flexos_libc_fsync_behind(int fd);
int flexos_libc_ftruncate(int fd, int64_t size);
int flexos_libc_fsync(int fd);
int64_t flexos_libc_fsize(int fd);
int flexos_libc_unlink(const char *path);
int flexos_libc_access(const char *path);
int flexos_libc_mkdir(const char *path, int mode);
uint64_t flexos_libc_clock_ns(int clock);
void flexos_libc_sleep_ns(uint64_t ns);
void flexos_libc_random(void *buf, size_t n);
ssize_t flexos_libc_console_write(int fd, const void *buf, size_t n);
int flexos_libc_fs_limits(uint64_t max_file_size, uint64_t capacity);
#endif
