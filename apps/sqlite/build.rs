//! Builds the C part of the SQLite image: the SQLite amalgamation (from the
//! `libsqlite3-sys` crate), its FlexOS OS layer and the driver program.
//!
//! The objects are linked into one relocatable object in which every
//! undefined symbol, i.e. every call into a C library, is renamed to the
//! FlexOS libc's `flexos_libc_<name>`: the C code cannot reach the host's
//! libc. `main` becomes `flexos_c_main`, which `flexos_libc::run_c_main`
//! calls. Hardening flags come from the image configuration (`FLEXOS_CONFIG`).
//! Also packs the configuration's `files` folder into the image.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap());
    let amalgamation = PathBuf::from(
        std::env::var("DEP_SQLITE3_INCLUDE").expect("libsqlite3-sys (bundled) provides the amalgamation"),
    );
    println!("cargo:rerun-if-changed=c");
    println!("cargo:rerun-if-env-changed=FLEXOS_C_CACHE");

    let layout = flexos_config::layout_for_build("sqlite");
    let harden = layout.placement("sqlite").map(|p| p.harden.clone()).unwrap_or_default();

    let mut build = cc::Build::new();
    build
        .include(&amalgamation)
        .include("c")
        .file(amalgamation.join("sqlite3.c"))
        .file("c/os_flexos.c")
        .file("c/sqlite_main.c")
        .file("c/selftest.c")
        .file("c/stdio_debug.c")
        .opt_level(2)
        .define("SQLITE_OS_OTHER", "1")
        .define("SQLITE_THREADSAFE", "0")
        .define("SQLITE_OMIT_LOAD_EXTENSION", None)
        .define("SQLITE_OMIT_LOCALTIME", None)
        .flag("-fno-stack-protector")
        .warnings(false);
    // kcfi exists only in clang; the other options work with either compiler.
    let clang = harden.contains(&flexos_config::Hardening::Cfi);
    if clang {
        build.compiler(find_clang());
    }
    if !harden.contains(&flexos_config::Hardening::DebugAssertions) {
        build.define("NDEBUG", None);
    }
    for h in &harden {
        match h {
            flexos_config::Hardening::StackProtector => {
                build.flag("-fstack-protector-all");
            }
            flexos_config::Hardening::Ubsan if clang => {
                // clang's `function` check (the type of an indirect call's
                // target) is what kcfi does, and clang refuses both together.
                build.flag("-fsanitize=undefined").flag("-fno-sanitize=function").flag("-fsanitize-trap=undefined");
            }
            flexos_config::Hardening::Ubsan => {
                build.flag("-fsanitize=undefined").flag("-fsanitize-undefined-trap-on-error");
            }
            flexos_config::Hardening::DebugAssertions => {
                // `assert()` is on without NDEBUG; SQLite's own assertions need SQLITE_DEBUG.
                build.define("SQLITE_DEBUG", None);
            }
            // The image's KASan-style runtime (flexos_platform::kasan): shadow
            // at the user-space offset, no globals registered.
            flexos_config::Hardening::Kasan if clang => {
                build.flag("-fsanitize=kernel-address").flag("-mllvm").flag("-asan-mapping-offset=0x7fff8000");
                build.flag("-mllvm").flag("-asan-globals=0");
            }
            flexos_config::Hardening::Kasan => {
                build.flag("-fsanitize=kernel-address").flag("-fasan-shadow-offset=0x7fff8000");
                build.flag("--param=asan-globals=0").flag("--param=asan-stack=1");
            }
            flexos_config::Hardening::Cfi => {
                build.flag("-fsanitize=kcfi");
            }
            other => panic!("hardening {} does not apply to C code", other.name()),
        }
    }
    let combined = out.join("sqlite_combined.o");
    // The C part depends only on its sources and flags: with a cache folder
    // (`flexos build` sets one), configurations that differ elsewhere reuse
    // the object instead of compiling the amalgamation again.
    let cached = std::env::var_os("FLEXOS_C_CACHE").map(|dir| {
        let key = c_cache_key(&amalgamation, &harden);
        PathBuf::from(dir).join(format!("sqlite-{key:016x}.o"))
    });
    match &cached {
        Some(c) if c.exists() => {
            std::fs::copy(c, &combined).unwrap_or_else(|e| panic!("cannot copy {}: {e}", c.display()));
        }
        _ => {
            compile_c(&build, &out, &combined);
            if let Some(c) = &cached {
                // Copied beside and renamed over: parallel builds never see half an object.
                let dir = c.parent().expect("a cache file has a folder");
                let _ = std::fs::create_dir_all(dir);
                let beside = dir.join(format!(".{}.{}", c.file_name().unwrap().to_string_lossy(), std::process::id()));
                if std::fs::copy(&combined, &beside).is_ok() && std::fs::rename(&beside, c).is_err() {
                    let _ = std::fs::remove_file(&beside);
                }
            }
        }
    }

    let archive = out.join("libflexos_app_sqlite_c.a");
    let _ = std::fs::remove_file(&archive);
    run(Command::new("ar").arg("crs").arg(&archive).arg(&combined));
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=flexos_app_sqlite_c");

    // Files packed into the image.
    flexos_config::write_packed_files(&layout, &out);
}

/// Compiles the C sources of `build` into one relocatable object `combined`
/// whose external references all go to the FlexOS libc.
fn compile_c(build: &cc::Build, out: &std::path::Path, combined: &std::path::Path) {
    let objects = build.compile_intermediates();

    let cc = build.get_compiler();
    run(Command::new(cc.path()).arg("-r").arg("-nostdlib").arg("-o").arg(combined).args(&objects));

    // Rename every external reference to the FlexOS libc.
    let undefined: Vec<String> = run(Command::new("nm").arg("-u").arg(combined))
        .lines()
        .filter_map(|l| l.split_whitespace().last().map(str::to_owned))
        .collect();
    let mut renames = String::from("main flexos_c_main\n");
    for sym in &undefined {
        // The sanitizer's entry points and the stack protector's failure
        // function are the image's own (flexos_platform::kasan, ::hardening).
        if !sym.starts_with("flexos_libc_") && !sym.starts_with("__asan_") && sym != "__stack_chk_fail" {
            writeln!(renames, "{sym} flexos_libc_{sym}").unwrap();
        }
    }
    let renames_file = out.join("renames.txt");
    std::fs::write(&renames_file, &renames).unwrap();
    run(Command::new("objcopy").arg(format!("--redefine-syms={}", renames_file.display())).arg(combined));
    let remaining = run(Command::new("nm").arg("-u").arg(combined));
    for sym in remaining.lines().filter_map(|l| l.split_whitespace().last()) {
        assert!(
            sym.starts_with("flexos_libc_") || sym.starts_with("__asan_") || sym == "__stack_chk_fail",
            "C code references {sym} outside the FlexOS libc"
        );
    }
}

/// The clang that compiles C code with `cfi` (kcfi exists only in clang):
/// `$FLEXOS_CLANG`, else the first of `clang-19`, `clang-18`, `clang-17`,
/// `clang-16`, `clang` on the PATH.
fn find_clang() -> String {
    println!("cargo:rerun-if-env-changed=FLEXOS_CLANG");
    if let Ok(c) = std::env::var("FLEXOS_CLANG") {
        return c;
    }
    let found = ["clang-19", "clang-18", "clang-17", "clang-16", "clang"]
        .into_iter()
        .find(|c| Command::new(c).arg("--version").output().is_ok_and(|o| o.status.success()));
    found.map(str::to_owned).unwrap_or_else(|| {
        panic!("hardening \"cfi\" of a C component needs clang 16 or newer (kcfi); install it: apt-get install clang-19 (`cargo xtask setup` does)")
    })
}

/// What the C object depends on: this build script (its flags), the
/// hardening, the compiler and the contents of every C source and header.
fn c_cache_key(amalgamation: &std::path::Path, harden: &[flexos_config::Hardening]) -> u64 {
    use std::hash::{DefaultHasher, Hash, Hasher};
    let mut h = DefaultHasher::new();
    let read = |p: PathBuf| std::fs::read(&p).unwrap_or_else(|e| panic!("cannot read {}: {e}", p.display()));
    read(PathBuf::from("build.rs")).hash(&mut h);
    format!("{harden:?}").hash(&mut h);
    std::env::var("CC").ok().hash(&mut h);
    std::env::var("FLEXOS_CLANG").ok().hash(&mut h);
    std::env::var("TARGET").ok().hash(&mut h);
    let mut sources: Vec<PathBuf> = std::fs::read_dir("c").expect("the c folder").flatten().map(|e| e.path()).collect();
    sources.sort();
    sources.push(amalgamation.join("sqlite3.c"));
    sources.push(amalgamation.join("sqlite3.h"));
    for p in sources {
        p.hash(&mut h);
        read(p).hash(&mut h);
    }
    h.finish()
}
