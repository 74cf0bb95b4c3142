//! What several integration tests share.
#![allow(dead_code)] // Each test binary uses a part of what is here.

use flexos::build::{BuildOptions, build_image};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The release image of `config` (counting gate crossings if `gate_stats`),
/// built once per test binary; builds are serialized (two cores) and shared
/// between the tests of a binary.
pub fn image(config: &str, gate_stats: bool) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<(String, bool, PathBuf)>>> = OnceLock::new();
    let mut built = BUILT.get_or_init(|| Mutex::new(Vec::new())).lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, _, p)) = built.iter().find(|(c, s, _)| c == config && *s == gate_stats) {
        return p.clone();
    }
    let root = flexos::workspace_root();
    let layout = flexos_config::load(&root.join(config)).unwrap();
    let options = BuildOptions { release: true, gate_stats, progress: false, static_link: false };
    let path = build_image(&root, &layout, &options).unwrap_or_else(|e| panic!("{e}"));
    built.push((config.to_string(), gate_stats, path.clone()));
    path
}

/// Processes whose environment holds `FLEXOS_TEST_TAG=tag`.
pub fn tagged_processes(tag: &str) -> Vec<String> {
    let needle = format!("FLEXOS_TEST_TAG={tag}\0");
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(env) = std::fs::read(entry.path().join("environ"))
            && String::from_utf8_lossy(&env).contains(&needle)
        {
            let cmd = std::fs::read_to_string(entry.path().join("cmdline")).unwrap_or_default();
            found.push(format!("{name}: {}", cmd.replace('\0', " ")));
        }
    }
    found
}

pub fn assert_no_process_left(tag: &str, args: &[&str]) {
    // Compartment processes get SIGKILL when the host ends; the kernel needs a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = tagged_processes(tag);
        if left.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "{args:?} left processes behind: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
