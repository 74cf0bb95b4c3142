//! Network namespaces for images that use a tap device: `flexos run
//! --netns` and the network benchmarks make one namespace per image, with
//! a tap device whose host side is [`HOST_IP`] and whose image side is
//! [`IMAGE_IP`]; all traffic stays inside the namespace. Clients run in it
//! with `ip netns exec NAME ...` ([`NetNs::exec`]).
//!
//! A namespace is named `flexos-PID-N` after the tool's process and
//! removed when the [`NetNs`] is dropped; namespaces of `flexos` processes
//! that no longer run (killed before they could clean up) are removed by
//! [`remove_stale`], which every [`NetNs::create`] calls first.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The namespace's side of the tap device.
pub const HOST_IP: &str = "172.31.77.1";
/// The image's address.
pub const IMAGE_IP: &str = "172.31.77.2";
/// Prefix length of the tap network.
pub const PREFIX: u8 = 24;
/// The tap device's name inside the namespace.
pub const TAP: &str = "flxtap0";

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A network namespace with a tap device, removed on drop.
#[derive(Debug)]
pub struct NetNs {
    /// The namespace's name (for `ip netns exec`).
    pub name: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip").args(args).stdin(Stdio::null()).output().map_err(|e| format!("cannot run ip: {e}"))?;
    if !out.status.success() {
        return Err(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// The names of all namespaces made by `flexos` tools.
pub fn list() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().map(|o| o.stdout).unwrap_or_default();
    String::from_utf8_lossy(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("flexos-"))
        .map(str::to_owned)
        .collect()
}

/// Removes the namespaces of `flexos` processes that no longer run.
pub fn remove_stale() {
    for name in list() {
        let pid = name.split('-').nth(1).and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()) {
            let _ = ip(&["netns", "del", &name]);
        }
    }
}

impl NetNs {
    /// Creates a namespace with loopback up and the tap device
    /// [`TAP`] (host side [`HOST_IP`]). Needs root (CAP_NET_ADMIN).
    pub fn create() -> Result<NetNs, String> {
        remove_stale();
        let name = format!("flexos-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        ip(&["netns", "add", &name]).map_err(|e| {
            format!("{e}\n(a network namespace needs root; without --netns the image is reached through 127.0.0.1)")
        })?;
        let ns = NetNs { name };
        let host = format!("{HOST_IP}/{PREFIX}");
        ip(&["-n", &ns.name, "link", "set", "lo", "up"])?;
        ip(&["-n", &ns.name, "tuntap", "add", "dev", TAP, "mode", "tap"])?;
        ip(&["-n", &ns.name, "addr", "add", &host, "dev", TAP])?;
        ip(&["-n", &ns.name, "link", "set", TAP, "up"])?;
        Ok(ns)
    }

    /// The `FLEXOS_NET` value that attaches an image to this namespace's tap.
    pub fn flexos_net(&self) -> String {
        format!("tap:{TAP}:{IMAGE_IP}/{PREFIX}:{HOST_IP}")
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("warning: cannot remove network namespace {}: {e}", self.name);
        }
    }
}
