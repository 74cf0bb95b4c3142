/* The SQLite application: the FlexOS SQLite workload, or a user's SQL.
 *
 *   sqlite [--rows N] [--db PATH]            the workload (default 5000 rows)
 *   sqlite [--db PATH] --sql "SQL"           run SQL, print result rows
 *   sqlite [--db PATH] --script PATH         run the SQL in a file
 *   --fs-max-file-size BYTES, --fs-size BYTES   limits of the image's file
 *                                            system (256 MiB per file, no
 *                                            total limit but memory)
 *
 * The workload is FlexOS's (ASPLOS'22, fig. 10): create a table, then N
 * INSERTs with one prepared statement and no enclosing transaction, so that
 * every insert is its own transaction and commits to the file system. It
 * then checks the row count and PRAGMA integrity_check and prints
 * "rows: N", "integrity_check: ok" and "elapsed_s: S" (the INSERTs only).
 * The same program runs on FlexOS and, as the baseline, on Linux.
 *
 *   sqlite --flexos-selftest NAME [INPUT]    run a seeded bug (selftest.c) */
#include "sqlite3.h"
#include "app_platform.h"
#include <stdarg.h>
#include <string.h>

/* A decimal number up to `max`, or -1 if the text is not one. */
static long long parse_number(const char *s, long long max) {
    long long v = 0;
    if (!*s) return -1;
    for (; *s; s++) {
        if (*s < '0' || *s > '9' || v > max / 10) return -1;
        v = v * 10 + (*s - '0');
    }
    return v > max ? -1 : v;
}

static long long parse_count(const char *s) { return parse_number(s, 1000000000LL); }

static void say(int fd, const char *fmt, ...) {
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    sqlite3_vsnprintf(sizeof buf, buf, fmt, ap);
    va_end(ap);
    app_write(fd, buf, strlen(buf));
}

static int fail(sqlite3 *db, const char *what) {
    say(2, "error: %s: %s\n", what, db ? sqlite3_errmsg(db) : "out of memory");
    return 1;
}

static int print_row(void *unused, int n, char **values, char **names) {
    (void)unused; (void)names;
    for (int i = 0; i < n; i++) {
        const char *v = values[i] ? values[i] : "NULL";
        if (i) app_write(1, "|", 1);
        app_write(1, v, strlen(v));
    }
    app_write(1, "\n", 1);
    return 0;
}

static int run_sql(sqlite3 *db, const char *sql) {
    char *err = 0;
    if (sqlite3_exec(db, sql, print_row, 0, &err) != SQLITE_OK) {
        say(2, "error: %s\n", err ? err : "unknown");
        sqlite3_free(err);
        return 1;
    }
    return 0;
}

static long long query_int(sqlite3 *db, const char *sql) {
    sqlite3_stmt *st = 0;
    long long v = -1;
    if (sqlite3_prepare_v2(db, sql, -1, &st, 0) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    return v;
}

static int workload(sqlite3 *db, int rows) {
    sqlite3_stmt *st = 0;
    if (sqlite3_exec(db, "CREATE TABLE tab (id INTEGER PRIMARY KEY, text TEXT NOT NULL)", 0, 0, 0) != SQLITE_OK)
        return fail(db, "create table");
    if (sqlite3_prepare_v2(db, "INSERT INTO tab VALUES (null, 'value')", -1, &st, 0) != SQLITE_OK)
        return fail(db, "prepare insert");
    uint64_t start = app_monotonic_ns();
    for (int i = 0; i < rows; i++) {
        if (sqlite3_step(st) != SQLITE_DONE) {
            sqlite3_finalize(st);
            return fail(db, "insert");
        }
        sqlite3_reset(st);
    }
    uint64_t elapsed = app_monotonic_ns() - start;
    sqlite3_finalize(st);

    say(1, "rows: %lld\n", query_int(db, "SELECT count(*) FROM tab"));
    sqlite3_stmt *check = 0;
    if (sqlite3_prepare_v2(db, "PRAGMA integrity_check", -1, &check, 0) != SQLITE_OK)
        return fail(db, "integrity_check");
    int ok = 1;
    while (sqlite3_step(check) == SQLITE_ROW) {
        const char *r = (const char *)sqlite3_column_text(check, 0);
        say(1, "integrity_check: %s\n", r ? r : "NULL");
        ok = ok && r && strcmp(r, "ok") == 0;
    }
    sqlite3_finalize(check);
    say(1, "elapsed_s: %.6f\n", elapsed / 1e9);
    return ok ? 0 : 1;
}

int flexos_selftest(const char *name, const char *input);

int main(int argc, char **argv) {
    if ((argc == 3 || argc == 4) && strcmp(argv[1], "--flexos-selftest") == 0) {
        int r = flexos_selftest(argv[2], argc == 4 ? argv[3] : 0);
        say(1, "selftest %s: %d\n", argv[2], r);
        return r == -1 ? 2 : 0;
    }
    int rows = 5000;
    const char *db_path = 0, *sql = 0, *script = 0;
    long long max_file = 0, fs_size = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *next = i + 1 < argc ? argv[i + 1] : 0;
        if (strcmp(a, "--rows") == 0 && next) { rows = (int)parse_count(next); i++; }
        else if (strcmp(a, "--db") == 0 && next) { db_path = next; i++; }
        else if (strcmp(a, "--sql") == 0 && next) { sql = next; i++; }
        else if (strcmp(a, "--script") == 0 && next) { script = next; i++; }
        else if (strcmp(a, "--fs-max-file-size") == 0 && next) { max_file = parse_number(next, 1LL << 50); i++; }
        else if (strcmp(a, "--fs-size") == 0 && next) { fs_size = parse_number(next, 1LL << 50); i++; }
        else {
            say(2, "usage: %s [--rows N] [--db PATH] [--sql SQL | --script PATH] "
                   "[--fs-max-file-size BYTES] [--fs-size BYTES]\n"
                   "  (SQL on standard input runs as a script: %s < FILE.sql)\n", argv[0], argv[0]);
            return 2;
        }
    }
    if (rows < 0) { say(2, "error: --rows must be a non-negative number\n"); return 2; }
    if (max_file < 0 || fs_size < 0) { say(2, "error: --fs-max-file-size and --fs-size take a number of bytes\n"); return 2; }
    if ((max_file || fs_size) && app_fs_limits((uint64_t)max_file, (uint64_t)fs_size) != 0) {
        say(2, "error: cannot set the file system's limits\n");
        return 2;
    }
    int default_db = !db_path;
    if (default_db) db_path = app_default_db();
    int fresh = !sql && !script;
    if (fresh) {
        char journal[512];
        sqlite3_snprintf(sizeof journal, journal, "%s-journal", db_path);
        app_remove(db_path);
        app_remove(journal);
    }
    sqlite3 *db = 0;
    if (sqlite3_open(db_path, &db) != SQLITE_OK) return fail(db, "open");
    int rc;
    if (sql) {
        rc = run_sql(db, sql);
    } else if (script) {
        char *text = 0;
        size_t len = 0;
        int read = app_read_file(script, &text, &len);
        if (read != 0) {
            say(2, "error: cannot read script %s: %s\n", script, app_error_text(read));
            rc = 1;
        } else {
            rc = run_sql(db, text);
            sqlite3_free(text);
        }
    } else {
        rc = workload(db, rows);
    }
    if (sqlite3_close(db) != SQLITE_OK) rc = fail(db, "close");
    if (fresh && default_db) {
        /* The workload's database is scratch: leave nothing behind. */
        char journal[512];
        sqlite3_snprintf(sizeof journal, journal, "%s-journal", db_path);
        app_remove(db_path);
        app_remove(journal);
    }
    return rc;
}
