/* SQLite's operating-system layer on FlexOS (SQLITE_OS_OTHER): a VFS whose
 * files are FlexOS vfs files, reached through the FlexOS C library, which
 * calls vfs through gates. Also the driver's app_platform.h. */
#include "sqlite3.h"
#include "flexos_libc.h"
#include "app_platform.h"
#include <string.h>

#define FLEXOS_O_RDONLY 0
#define FLEXOS_O_RDWR 2
#define FLEXOS_O_CREAT 0100
#define FLEXOS_O_EXCL 0200
#define FLEXOS_ENOENT 2
#define FLEXOS_ENOMEM 12
#define FLEXOS_EISDIR 21
#define FLEXOS_EFBIG 27
#define FLEXOS_ENOSPC 28

/* A full file system (or a file at its size limit) is SQLITE_FULL,
 * "database or disk is full"; anything else is an I/O error `other`. */
static int io_error(long long rc, int other) {
    return rc == -FLEXOS_ENOSPC || rc == -FLEXOS_EFBIG ? SQLITE_FULL : other;
}

typedef struct FlexosFile {
    sqlite3_file base;
    int fd;
    char *delete_on_close; /* path to unlink at close, or NULL */
    int sync_behind;       /* the rollback journal: its syncs are queued */
} FlexosFile;

static int fx_close(sqlite3_file *f) {
    FlexosFile *p = (FlexosFile *)f;
    /* Sends the writes still queued (their error is this call's); with none
     * queued, the close goes with the next file call: the journal's is
     * followed by its deletion, and the two cross together. */
    int rc = flexos_libc_close_behind(p->fd);
    if (p->delete_on_close) {
        flexos_libc_unlink(p->delete_on_close);
        sqlite3_free(p->delete_on_close);
        p->delete_on_close = 0;
    }
    return rc < 0 ? io_error(rc, SQLITE_IOERR_CLOSE) : SQLITE_OK;
}

static int fx_read(sqlite3_file *f, void *buf, int amt, sqlite3_int64 off) {
    ssize_t n = flexos_libc_pread(((FlexosFile *)f)->fd, buf, (size_t)amt, off);
    if (n < 0) return io_error(n, SQLITE_IOERR_READ);
    if (n < amt) {
        memset((char *)buf + n, 0, (size_t)(amt - n));
        return SQLITE_IOERR_SHORT_READ;
    }
    return SQLITE_OK;
}

/* Write-behind: SQLite makes what it needs durable with xSync and reads
 * what it wrote through this VFS, and both send the queued writes first; a
 * failed queued write is reported by xSync (or whichever call comes next),
 * as by a write-back cache. */
static int fx_write(sqlite3_file *f, const void *buf, int amt, sqlite3_int64 off) {
    ssize_t n = flexos_libc_pwrite_behind(((FlexosFile *)f)->fd, buf, (size_t)amt, off);
    return n == amt ? SQLITE_OK : io_error(n, SQLITE_IOERR_WRITE);
}

static int fx_truncate(sqlite3_file *f, sqlite3_int64 size) {
    int rc = flexos_libc_ftruncate(((FlexosFile *)f)->fd, size);
    return rc < 0 ? io_error(rc, SQLITE_IOERR_TRUNCATE) : SQLITE_OK;
}

/* The rollback journal's syncs are queued behind its writes (write-behind):
 * SQLite always syncs the database after them before a commit succeeds, and
 * that sync, made at once, sends them and reports any error they meet; a
 * journal write that fails drops everything queued after it, so the database
 * is never written past a journal that did not land. */
static int fx_sync(sqlite3_file *f, int flags) {
    (void)flags;
    FlexosFile *p = (FlexosFile *)f;
    int rc = p->sync_behind ? flexos_libc_fsync_behind(p->fd) : flexos_libc_fsync(p->fd);
    return rc < 0 ? io_error(rc, SQLITE_IOERR_FSYNC) : SQLITE_OK;
}

static int fx_file_size(sqlite3_file *f, sqlite3_int64 *size) {
    int64_t s = flexos_libc_fsize(((FlexosFile *)f)->fd);
    if (s < 0) return io_error(s, SQLITE_IOERR_FSTAT);
    *size = s;
    return SQLITE_OK;
}

/* One process uses the database: locks always succeed. */
static int fx_lock(sqlite3_file *f, int level) { (void)f; (void)level; return SQLITE_OK; }
static int fx_unlock(sqlite3_file *f, int level) { (void)f; (void)level; return SQLITE_OK; }
static int fx_check_reserved(sqlite3_file *f, int *out) { (void)f; *out = 0; return SQLITE_OK; }
static int fx_file_control(sqlite3_file *f, int op, void *arg) { (void)f; (void)op; (void)arg; return SQLITE_NOTFOUND; }
static int fx_sector_size(sqlite3_file *f) { (void)f; return 4096; }
/* As the unix VFS reports by default, so both journal the same way. */
static int fx_device_characteristics(sqlite3_file *f) { (void)f; return SQLITE_IOCAP_POWERSAFE_OVERWRITE; }

static const sqlite3_io_methods fx_io = {
    1, fx_close, fx_read, fx_write, fx_truncate, fx_sync, fx_file_size, fx_lock, fx_unlock,
    fx_check_reserved, fx_file_control, fx_sector_size, fx_device_characteristics,
    0, 0, 0, 0, 0, 0,
};

static int fx_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out_flags) {
    FlexosFile *p = (FlexosFile *)file;
    char tmp[64];
    (void)vfs;
    memset(p, 0, sizeof(*p));
    if (!name) {
        unsigned long long r;
        flexos_libc_random(&r, sizeof r);
        sqlite3_snprintf(sizeof tmp, tmp, "/tmp/etilqs_%llx", r);
        name = tmp;
        flags |= SQLITE_OPEN_DELETEONCLOSE | SQLITE_OPEN_CREATE;
    }
    int oflags = (flags & SQLITE_OPEN_READWRITE) ? FLEXOS_O_RDWR : FLEXOS_O_RDONLY;
    if (flags & SQLITE_OPEN_CREATE) oflags |= FLEXOS_O_CREAT;
    if (flags & SQLITE_OPEN_EXCLUSIVE) oflags |= FLEXOS_O_EXCL;
    int fd = flexos_libc_open(name, oflags, 0644);
    if (fd < 0) return SQLITE_CANTOPEN;
    p->fd = fd;
    p->sync_behind = (flags & SQLITE_OPEN_MAIN_JOURNAL) != 0;
    if (flags & SQLITE_OPEN_DELETEONCLOSE) p->delete_on_close = sqlite3_mprintf("%s", name);
    if (out_flags) *out_flags = flags;
    p->base.pMethods = &fx_io;
    return SQLITE_OK;
}

static int fx_delete(sqlite3_vfs *vfs, const char *name, int sync_dir) {
    (void)vfs; (void)sync_dir;
    int rc = flexos_libc_unlink(name);
    if (rc == -FLEXOS_ENOENT) return SQLITE_IOERR_DELETE_NOENT;
    return rc < 0 ? io_error(rc, SQLITE_IOERR_DELETE) : SQLITE_OK;
}

static int fx_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
    (void)vfs; (void)flags;
    int rc = flexos_libc_access(name);
    *out = rc > 0;
    /* Absent is an answer; any other error (a queued write's) is not. */
    return rc < 0 && rc != -FLEXOS_ENOENT ? io_error(rc, SQLITE_IOERR_ACCESS) : SQLITE_OK;
}

static int fx_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out) {
    (void)vfs;
    sqlite3_snprintf(n, out, name[0] == '/' ? "%s" : "/%s", name);
    return SQLITE_OK;
}

static int fx_randomness(sqlite3_vfs *vfs, int n, char *out) {
    (void)vfs;
    flexos_libc_random(out, (size_t)n);
    return n;
}

static int fx_sleep(sqlite3_vfs *vfs, int us) {
    (void)vfs;
    flexos_libc_sleep_ns((uint64_t)us * 1000);
    return us;
}

static int fx_current_time_int64(sqlite3_vfs *vfs, sqlite3_int64 *t) {
    (void)vfs;
    /* Julian day number in milliseconds: the Unix epoch is day 2440587.5. */
    *t = (sqlite3_int64)210866760000000LL + (sqlite3_int64)(flexos_libc_clock_ns(1) / 1000000);
    return SQLITE_OK;
}

static int fx_current_time(sqlite3_vfs *vfs, double *t) {
    sqlite3_int64 ms;
    fx_current_time_int64(vfs, &ms);
    *t = ms / 86400000.0;
    return SQLITE_OK;
}

static int fx_get_last_error(sqlite3_vfs *vfs, int n, char *out) {
    (void)vfs; (void)n; (void)out;
    return 0;
}

static sqlite3_vfs flexos_sqlite_vfs = {
    2, sizeof(FlexosFile), 512, 0, "flexos", 0,
    fx_open, fx_delete, fx_access, fx_full_pathname,
    0, 0, 0, 0,
    fx_randomness, fx_sleep, fx_current_time, fx_get_last_error,
    fx_current_time_int64,
    0, 0, 0,
};

int sqlite3_os_init(void) {
    flexos_libc_mkdir("/tmp", 0755);
    return sqlite3_vfs_register(&flexos_sqlite_vfs, 1);
}

int sqlite3_os_end(void) { return SQLITE_OK; }

void app_write(int fd, const char *s, size_t n) { flexos_libc_console_write(fd, s, n); }

uint64_t app_monotonic_ns(void) { return flexos_libc_clock_ns(0); }

int app_read_file(const char *path, char **out, size_t *len) {
    int fd = flexos_libc_open(path, FLEXOS_O_RDONLY, 0);
    if (fd < 0) return fd;
    int64_t size = flexos_libc_fsize(fd);
    if (size < 0) { flexos_libc_close(fd); return (int)size; }
    char *buf = sqlite3_malloc64((sqlite3_uint64)size + 1);
    if (!buf) { flexos_libc_close(fd); return -FLEXOS_ENOMEM; }
    int64_t done = 0;
    while (done < size) {
        ssize_t n = flexos_libc_pread(fd, buf + done, (size_t)(size - done), done);
        if (n <= 0) { flexos_libc_close(fd); sqlite3_free(buf); return n < 0 ? (int)n : -FLEXOS_ENOENT; }
        done += n;
    }
    flexos_libc_close(fd);
    buf[size] = 0;
    *out = buf;
    *len = (size_t)size;
    return 0;
}

const char *app_error_text(int rc) {
    switch (-rc) {
    case FLEXOS_ENOENT:
        return "no such file in the image's file system (an image sees only the files packed into it with "
               "`files = FOLDER` in its configuration; give a host file on standard input instead: "
               "flexos run CONFIG < FILE)";
    case FLEXOS_EISDIR: return "it is a directory";
    case FLEXOS_ENOMEM: return "out of memory";
    case FLEXOS_EFBIG: return "file too large";
    default: return "error";
    }
}

int app_fs_limits(uint64_t max_file_size, uint64_t capacity) {
    return flexos_libc_fs_limits(max_file_size, capacity);
}

void app_remove(const char *path) { flexos_libc_unlink(path); }

const char *app_default_db(void) { return "/test.db"; }
