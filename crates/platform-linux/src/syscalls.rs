//! What a booted image asks of the kernel through calls whose arguments
//! choose what they do (`clone`'s flags, `ioctl`'s request): the values
//! the mechanisms' seccomp filters let through after boot (the `mpk`
//! allowlist, a `proc` compartment's filter). Plain data, so that both
//! filters agree and an image links no filter code it does not use.

/// The flags every `clone` after boot carries: a thread, sharing the
/// image's memory and signal handlers. An image starts its compartment
/// processes and its fault supervisor during boot, and only threads
/// afterwards; a process made later could outlive the image with its
/// descriptors (the tap, listening sockets).
pub const THREAD_FLAGS: u64 = (libc::CLONE_VM | libc::CLONE_THREAD | libc::CLONE_SIGHAND) as u64;

/// The flags no `clone` after boot carries: new namespaces, which would
/// make it `unshare` by another name.
pub const NAMESPACE_FLAGS: u64 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWCGROUP
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET) as u64;

/// The `ioctl` requests a booted image makes (the kernel reads a request
/// as 32 bits): switching a descriptor to non-blocking (std's sockets) or
/// close-on-exec, asking how much is readable, and asking whether a
/// descriptor is a terminal and its size (a C library's standard output).
/// The tap device is opened at boot (`net::open_device_at_boot`), so its
/// requests (`if_nametoindex`'s `SIOCGIFINDEX`, `TUNSETIFF`, which as
/// root makes a device, `TUNSETOFFLOAD`) are not here. Left out, among the
/// rest: changing the host's interfaces and routes (`SIOCSIF*`,
/// `SIOCADDRT`), keeping a tap device after the image (`TUNSETPERSIST`)
/// or giving it away (`TUNSETOWNER`), and typing into a terminal
/// (`TIOCSTI`).
pub const IOCTL_REQUESTS: &[u32] = &[
    libc::FIONBIO as u32,
    libc::FIOCLEX as u32,
    libc::FIONCLEX as u32,
    libc::FIONREAD as u32,
    libc::TCGETS as u32,
    libc::TIOCGWINSZ as u32,
];

/// The type byte (bits 8 to 15 of a request) of every KVM `ioctl`
/// (`KVMIO`): an image with a `kvm` compartment runs its vCPUs after boot
/// (`KVM_RUN`, and reading their registers for a fault's report). They act
/// only on descriptors of `/dev/kvm` and of the VMs and vCPUs made from it.
/// An image without `kvm` compartments makes none: a compartment that
/// opened `/dev/kvm` (reading is enough) could otherwise make VMs.
pub const KVM_IOCTL_TYPE: u32 = 0xae;

/// Whether a booted image makes `ioctl` request `request`, in an image
/// that runs VMs (`kvm`) or not (the filters' rule, in Rust, for tests and
/// reports).
pub fn ioctl_request_allowed(request: u32, kvm: bool) -> bool {
    IOCTL_REQUESTS.contains(&request) || (kvm && (request >> 8) & 0xff == KVM_IOCTL_TYPE)
}

/// Whether a booted image makes a `clone` with `flags` (the filters' rule,
/// in Rust): a thread, in no new namespace.
pub fn clone_allowed(flags: u64) -> bool {
    flags & THREAD_FLAGS == THREAD_FLAGS && flags & NAMESPACE_FLAGS == 0
}

/// The seccomp rules of this module's lists, for the mechanisms' filters.
#[cfg(feature = "seccomp")]
pub mod rules {
    use super::{IOCTL_REQUESTS, KVM_IOCTL_TYPE, NAMESPACE_FLAGS, THREAD_FLAGS};
    use seccompiler::SeccompCmpArgLen::{Dword, Qword};
    use seccompiler::SeccompCmpOp::{Eq, MaskedEq};
    use seccompiler::{SeccompCondition, SeccompRule};

    fn text(e: seccompiler::BackendError) -> String {
        format!("seccomp rule: {e}")
    }

    /// `clone`'s rule: a thread ([`THREAD_FLAGS`] set), in no new namespace.
    pub fn thread_clone() -> Result<Vec<SeccompRule>, String> {
        let flags = |mask: u64, value: u64| SeccompCondition::new(0, Qword, MaskedEq(mask), value).map_err(text);
        Ok(vec![SeccompRule::new(vec![flags(THREAD_FLAGS, THREAD_FLAGS)?, flags(NAMESPACE_FLAGS, 0)?]).map_err(text)?])
    }

    /// `ioctl`'s rules: one of [`IOCTL_REQUESTS`], or, where the image
    /// runs VMs (`kvm`), a KVM request. The kernel reads a request as 32
    /// bits, and so do these rules.
    pub fn ioctl_requests(kvm: bool) -> Result<Vec<SeccompRule>, String> {
        let request = |op, value: u32| {
            SeccompRule::new(vec![SeccompCondition::new(1, Dword, op, value.into()).map_err(text)?]).map_err(text)
        };
        let mut rules: Vec<SeccompRule> = IOCTL_REQUESTS.iter().map(|&r| request(Eq, r)).collect::<Result<_, _>>()?;
        if kvm {
            rules.push(request(MaskedEq(0xff00), KVM_IOCTL_TYPE << 8)?);
        }
        Ok(rules)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lists_hold_what_an_image_makes_and_leave_out_what_changes_the_host() {
        for ok in [libc::FIONBIO as u32, libc::TCGETS as u32] {
            assert!(ioctl_request_allowed(ok, false), "{ok:#x}");
        }
        for kvm in [0xae80 /* KVM_RUN */, 0x8090_ae81 /* KVM_GET_REGS */] {
            assert!(ioctl_request_allowed(kvm, true), "{kvm:#x}");
            assert!(!ioctl_request_allowed(kvm, false), "{kvm:#x} without VMs");
        }
        for bad in [
            libc::TIOCSTI,
            libc::SIOCSIFFLAGS,
            libc::SIOCSIFADDR,
            libc::SIOCADDRT,
            libc::TUNSETPERSIST,
            libc::TUNSETIFF,
            libc::SIOCGIFINDEX,
        ] {
            assert!(!ioctl_request_allowed(bad as u32, true), "{bad:#x}");
        }
        assert!(clone_allowed(THREAD_FLAGS | libc::CLONE_SETTLS as u64));
        assert!(!clone_allowed(libc::SIGCHLD as u64));
        assert!(!clone_allowed(THREAD_FLAGS | libc::CLONE_NEWNET as u64));
    }
}
