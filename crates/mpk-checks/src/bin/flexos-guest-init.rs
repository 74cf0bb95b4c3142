//! `/init` of the guest that `flexos guest-test` boots under QEMU: mounts
//! /proc and /dev, runs every check of `flexos_mpk_checks` against the
//! images in `/images` (each in a child process, so that a crash cannot
//! take the guest down), prints one line per check on the console and
//! powers the machine off.
//!
//! Lines: `flexos-guest: pku=yes|no`, `flexos-check NAME pass` or
//! `flexos-check NAME fail: REASON`, and `flexos-guest: done` last.

use flexos_mpk_checks::{Outcome, checks, cpu_has_pku, run};
use std::path::Path;
use std::time::Duration;

fn mount(source: &std::ffi::CStr, target: &std::ffi::CStr, fstype: &std::ffi::CStr) {
    let _ = std::fs::create_dir_all(target.to_str().unwrap_or("/"));
    // SAFETY: every argument is a NUL-terminated string; no data argument.
    let rc = unsafe { libc::mount(source.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        println!("flexos-guest: mounting {target:?} failed: {}", std::io::Error::last_os_error());
    }
}

fn power_off() -> ! {
    // SAFETY: sync and reboot have no memory effects; RB_POWER_OFF ends the guest.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

fn main() {
    mount(c"proc", c"/proc", c"proc");
    mount(c"devtmpfs", c"/dev", c"devtmpfs");
    mount(c"tmpfs", c"/tmp", c"tmpfs");
    println!("flexos-guest: pku={}", if cpu_has_pku() { "yes" } else { "no" });
    let limit =
        Duration::from_secs(std::env::var("FLEXOS_CHECK_LIMIT_S").ok().and_then(|s| s.parse().ok()).unwrap_or(300));
    let mut earlier: Vec<(String, Outcome)> = Vec::new();
    for check in checks() {
        let image = Path::new("/images").join(check.image);
        let outcome = run(&image, &check.args, limit);
        match check.verdict(&outcome, &earlier) {
            Ok(()) => println!("flexos-check {} pass", check.name),
            Err(why) => println!("flexos-check {} fail: {}", check.name, why.replace('\n', " ")),
        }
        earlier.push((check.name.clone(), outcome));
    }
    println!("flexos-guest: done");
    power_off()
}
