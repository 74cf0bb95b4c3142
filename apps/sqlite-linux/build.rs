//! Builds the baseline: the same SQLite amalgamation and driver program as
//! the FlexOS image (apps/sqlite/c), with the same optimization and SQLite
//! options, but with SQLite's own unix VFS over glibc and the Linux kernel.

use std::path::PathBuf;

fn main() {
    let amalgamation = PathBuf::from(
        std::env::var("DEP_SQLITE3_INCLUDE").expect("libsqlite3-sys (bundled) provides the amalgamation"),
    );
    let app = PathBuf::from("../sqlite/c");
    println!("cargo:rerun-if-changed=../sqlite/c");
    cc::Build::new()
        .include(&amalgamation)
        .include(&app)
        .file(amalgamation.join("sqlite3.c"))
        .file(app.join("sqlite_main.c"))
        .file(app.join("selftest.c"))
        .file(app.join("baseline_platform.c"))
        .opt_level(2)
        .define("SQLITE_THREADSAFE", "0")
        .define("SQLITE_OMIT_LOAD_EXTENSION", None)
        .define("SQLITE_OMIT_LOCALTIME", None)
        .flag("-fno-stack-protector")
        .warnings(false)
        .link_lib_modifier("+whole-archive")
        .compile("sqlite_linux");
}
