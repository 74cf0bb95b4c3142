//! What several integration tests share.

use flexos::build::{BuildOptions, build_image};
use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

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
    let options = BuildOptions { release: true, gate_stats, progress: false };
    let path = build_image(&root, &layout, &options).unwrap_or_else(|e| panic!("{e}"));
    built.push((config.to_string(), gate_stats, path.clone()));
    path
}
