/* The part of C's stdio that SQLite's debugging code uses (it is compiled
 * in with SQLITE_DEBUG, which the `debug-assertions` option turns on):
 * standard output and error go to the console of the image. The names are
 * the FlexOS C library's (SQLite's references to `printf`, `stdout`, ...
 * are renamed to them when the C part is linked; see build.rs). */
#include <stdarg.h>
#include <string.h>
#include "flexos_libc.h"
#include "sqlite3.h"

struct flexos_file {
    int fd;
};
static struct flexos_file console_out = {1}, console_err = {2};
void *flexos_libc_stdout = &console_out;
void *flexos_libc_stderr = &console_err;

static int put(void *file, const char *s, size_t n) {
    flexos_libc_console_write(((struct flexos_file *)file)->fd, s, n);
    return (int)n;
}

int flexos_libc_vfprintf(void *file, const char *format, va_list ap) {
    char buf[1024];
    sqlite3_vsnprintf(sizeof buf, buf, format, ap);
    return put(file, buf, strlen(buf));
}

int flexos_libc_fprintf(void *file, const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    int n = flexos_libc_vfprintf(file, format, ap);
    va_end(ap);
    return n;
}

int flexos_libc_printf(const char *format, ...) {
    va_list ap;
    va_start(ap, format);
    int n = flexos_libc_vfprintf(&console_out, format, ap);
    va_end(ap);
    return n;
}

int flexos_libc_fputs(const char *s, void *file) { return put(file, s, strlen(s)); }

int flexos_libc_puts(const char *s) {
    put(&console_out, s, strlen(s));
    return put(&console_out, "\n", 1);
}

int flexos_libc_fputc(int c, void *file) {
    char ch = (char)c;
    put(file, &ch, 1);
    return c & 0xff;
}

int flexos_libc_putchar(int c) { return flexos_libc_fputc(c, &console_out); }

size_t flexos_libc_fwrite(const void *p, size_t size, size_t n, void *file) {
    put(file, p, size * n);
    return n;
}

int flexos_libc_fflush(void *file) {
    (void)file;
    return 0;
}

char *flexos_libc_strstr(const char *haystack, const char *needle) {
    size_t n = strlen(needle);
    for (; *haystack; haystack++)
        if (strncmp(haystack, needle, n) == 0) return (char *)haystack;
    return n == 0 ? (char *)haystack : 0;
}
