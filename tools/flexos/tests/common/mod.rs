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

/// A started process, stopped and reaped when dropped, also when the test
/// fails: SIGTERM first (a `flexos run` then stops its image and removes
/// its namespace), SIGKILL after 5 s.
pub struct Running(pub std::process::Child);

impl Running {
    /// Starts `cmd`.
    pub fn spawn(cmd: &mut std::process::Command) -> Running {
        Running(cmd.spawn().unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}")))
    }
}

impl std::ops::Deref for Running {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for Running {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if !matches!(self.0.try_wait(), Ok(None)) {
            return;
        }
        // Not reaped yet, so the pid is still this child's.
        signal(self.0.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.0.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Cleans up after a test that starts processes tagged `tag` (the
/// `FLEXOS_TEST_TAG` environment variable), also when it fails: on drop,
/// every process still tagged gets SIGKILL, and the network namespaces of
/// `flexos` processes that no longer run are removed. A test that passes
/// has checked that nothing was left before this runs.
pub struct Cleanup(pub String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for process in tagged_processes(&self.0) {
            if let Some(pid) = process.split(':').next().and_then(|p| p.parse::<u32>().ok()) {
                signal(pid, "KILL");
            }
        }
        flexos::netns::remove_stale();
    }
}

/// Sends signal `name` (`TERM`, `KILL`, ...) to process `pid`.
pub fn signal(pid: u32, name: &str) {
    let _ = std::process::Command::new("kill").args(["-s", name, &pid.to_string()]).status();
}
