//! Booting an image (DESIGN section 5.4): registering the components'
//! export tables, readying the `mpk` gates, and starting the other
//! domains, a process per `proc` compartment and a VM per `kvm` one. The
//! gate crate is the gate; this is what an image does first in `main`.
//!
//! The `proc` and `kvm` mechanisms are features (`flexos build` turns on
//! what the configuration uses), so an image links the code of its own
//! mechanisms only; a configuration that needs a mechanism built without
//! it does not compile.
#![forbid(unsafe_code)]

use flexos_layout::{COMPARTMENTS, Mechanism, has_mechanism, has_remote_domains};
use flexos_platform::process;

const _: () = assert!(
    !has_mechanism(Mechanism::Proc) || cfg!(feature = "proc"),
    "this configuration has `proc` compartments: build it with `flexos build` (feature flexos-boot/proc)"
);
const _: () = assert!(
    !has_mechanism(Mechanism::Kvm) || cfg!(feature = "kvm"),
    "this configuration has `kvm` compartments: build it with `flexos build` (feature flexos-boot/kvm)"
);

/// Starts the image's domains; every image calls it first thing in `main`
/// (the export tables of every component linked into the image come from
/// the `flexos_exports` section: `flexos_gate::remote::linked_tables`).
///
/// In the host process it starts one process per `proc` compartment and
/// one VM per `kvm` compartment (with a dispatcher thread that gives every
/// chain of calls reaching it a vCPU), and returns. In a compartment's own
/// process it confines the process with its seccomp filter and serves
/// remote calls until the host ends: it never returns.
pub fn boot() {
    // kasan's shadow, in every process of an image that uses it (docs/hardening.md).
    flexos_platform::kasan::init();
    flexos_gate::remote::register(&flexos_gate::remote::linked_tables());
    if flexos_layout::has_mpk() {
        flexos_gate::stats::move_off_the_statics();
        flexos_gate::mpk::prepare();
    }
    flexos_platform::hardening::install_panic_report();
    if has_remote_domains() {
        start_remote_compartments();
    }
    if drives_network_device() {
        flexos_platform::net::open_device_at_boot();
    }
    // Last: the processes and VMs just started mapped memory at fixed
    // addresses, which the memory-call filter denies (and a process
    // inherits it).
    if flexos_layout::has_mpk() {
        flexos_gate::mpk::confine_memory();
    }
}

/// Starts the `proc` and `kvm` compartments (in a compartment's own
/// process: serves its calls instead, and never returns).
fn start_remote_compartments() {
    #[cfg(feature = "proc")]
    if flexos_platform::domain::child_role().is_some() {
        serve_as_compartment_process();
    }
    let base = flexos_alloc::region().base.as_ptr() as usize;
    let fd = flexos_alloc::shared_memory_fd().expect("images with remote compartments have shared memory");
    for (i, c) in COMPARTMENTS.iter().enumerate() {
        let started = match c.mechanism {
            Mechanism::Proc => start_process(i, c.name, base, fd),
            Mechanism::Kvm => start_vm(i, c.name),
            Mechanism::Fcall | Mechanism::Mpk => Ok(()),
        };
        if let Err(e) = started {
            eprintln!("flexos: cannot start compartment {:?}: {e}", c.name);
            process::kill_all();
            std::process::exit(process::COMPARTMENT_DIED);
        }
    }
}

/// In a compartment's own process: confine it and serve remote calls until
/// the host ends.
#[cfg(feature = "proc")]
fn serve_as_compartment_process() -> ! {
    // The compartment of the network device drives it (tap or forwarder),
    // and opens a tap before its filter denies what that takes.
    let netdev_here = drives_network_device();
    if netdev_here {
        flexos_platform::net::open_device_at_boot();
    }
    let extra = if netdev_here { flexos_proc::NETWORK_DEVICE } else { &[] };
    if let Err(e) = flexos_proc::confine(extra) {
        eprintln!(
            "flexos: compartment {:?} cannot confine its process: {e}",
            COMPARTMENTS[flexos_platform::compartment::home()].name
        );
        std::process::exit(process::COMPARTMENT_DIED);
    }
    flexos_gate::remote::dispatch_forever(
        flexos_platform::compartment::home(),
        flexos_gate::remote::start_partner_thread,
    )
}

/// Whether this process drives the image's network device: the
/// application uses the network, and the device's compartment runs here.
fn drives_network_device() -> bool {
    flexos_layout::APP_USES_NETWORK
        && flexos_layout::domain_of(flexos_layout::component::NETDEV.compartment) == flexos_gate::remote::this_domain()
}

/// Starts the process of `proc` compartment `i`.
fn start_process(i: usize, name: &'static str, base: usize, fd: i32) -> Result<(), String> {
    #[cfg(feature = "proc")]
    return flexos_proc::spawn_compartment(i, name, base, fd).map_err(|e| format!("its process: {e}"));
    #[cfg(not(feature = "proc"))]
    {
        let _ = (i, base, fd);
        Err(format!("{name}: this image was built without the proc mechanism"))
    }
}

/// Starts the VM of `kvm` compartment `i`, with a dispatcher thread that
/// gives every chain of calls reaching it a vCPU.
fn start_vm(i: usize, name: &'static str) -> Result<(), String> {
    #[cfg(feature = "kvm")]
    {
        let vm = flexos_kvm::Vm::create(i, name, flexos_gate::remote::guest_partner_entry)
            .map_err(|e| format!("its VM: {e}"))?;
        let vm: &'static flexos_kvm::Vm = Box::leak(Box::new(vm));
        std::thread::Builder::new()
            .name(format!("flexos-{name}-dispatch"))
            .spawn(move || flexos_gate::remote::dispatch_forever(i, |chain| vm.start_partner(chain)))
            .map_err(|e| format!("its VM's dispatcher: {e}"))?;
        Ok(())
    }
    #[cfg(not(feature = "kvm"))]
    {
        let _ = i;
        Err(format!("{name}: this image was built without the kvm mechanism"))
    }
}
