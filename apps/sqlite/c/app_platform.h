/* What the SQLite driver program needs from the system it runs on.
 * The FlexOS image implements it in os_flexos.c, the Linux baseline in
 * baseline_platform.c, so that the driver itself is the same program. */
#ifndef APP_PLATFORM_H
#define APP_PLATFORM_H
#include <stddef.h>
#include <stdint.h>

/* Writes n bytes to standard output (fd 1) or standard error (fd 2). */
void app_write(int fd, const char *s, size_t n);
/* Nanoseconds of a monotonic clock. */
uint64_t app_monotonic_ns(void);
/* Reads a whole file into memory from sqlite3_malloc; returns 0 on
 * success, else a negative errno that app_error_text describes. */
int app_read_file(const char *path, char **out, size_t *len);
/* Why app_read_file failed, for people. */
const char *app_error_text(int rc);
/* Sets the file system's largest file and capacity in bytes (0: keep);
 * 0 on success. */
int app_fs_limits(uint64_t max_file_size, uint64_t capacity);
/* Removes a file if it exists. */
void app_remove(const char *path);
/* Where the database goes when --db is not given. */
const char *app_default_db(void);
#endif
