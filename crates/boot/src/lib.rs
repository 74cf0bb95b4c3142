//! Booting an image (DESIGN section 5.4): registering the components'
//! export tables, readying the `mpk` gates, and starting the other
//! domains, a process per `proc` compartment and a VM per `kvm` one. The
//! gate crate is the gate; this is what an image does first in `main`.
#![forbid(unsafe_code)]

use flexos_layout::{COMPARTMENTS, Mechanism, domain_of, has_remote_domains};
use flexos_platform::{compartment, domain, process};

/// Starts the image's domains; every image calls it first thing in `main`,
/// with every component's export table (`FLEXOS_EXPORTS`).
///
/// In the host process it starts one process per `proc` compartment and
/// one VM per `kvm` compartment (with a dispatcher thread that gives every
/// chain of calls reaching it a vCPU), and returns. In a compartment's own
/// process it confines the process with its seccomp filter and serves
/// remote calls until the host ends: it never returns.
pub fn boot(exports: &[&'static [flexos_gate::Export]]) {
    flexos_gate::remote::register(exports);
    if flexos_layout::has_mpk() {
        flexos_gate::mpk::prepare();
    }
    if !has_remote_domains() {
        return;
    }
    if domain::child_role().is_some() {
        // The compartment of the network device drives it (tap or forwarder).
        let netdev_here = domain_of(flexos_layout::component::NETDEV.compartment) == flexos_gate::remote::this_domain()
            && flexos_layout::APP_USES_NETWORK;
        let extra = if netdev_here { process::NETWORK_DEVICE } else { &[] };
        if let Err(e) = process::confine(extra) {
            eprintln!(
                "flexos: compartment {:?} cannot confine its process: {e}",
                COMPARTMENTS[compartment::home()].name
            );
            std::process::exit(process::COMPARTMENT_DIED);
        }
        flexos_gate::remote::dispatch_forever(compartment::home(), flexos_gate::remote::start_partner_thread);
    }
    let base = flexos_alloc::region().base.as_ptr() as usize;
    let fd = flexos_alloc::shared_memory_fd().expect("images with remote compartments have shared memory");
    for (i, c) in COMPARTMENTS.iter().enumerate() {
        match c.mechanism {
            Mechanism::Proc => {
                if let Err(e) = process::spawn_compartment(i, c.name, base, fd) {
                    eprintln!("flexos: cannot start the process of compartment {:?}: {e}", c.name);
                    process::kill_all();
                    std::process::exit(process::COMPARTMENT_DIED);
                }
            }
            Mechanism::Kvm => match flexos_kvm::Vm::create(i, c.name, flexos_gate::remote::guest_partner_entry) {
                Ok(vm) => {
                    let vm: &'static flexos_kvm::Vm = Box::leak(Box::new(vm));
                    std::thread::Builder::new()
                        .name(format!("flexos-{}-dispatch", c.name))
                        .spawn(move || flexos_gate::remote::dispatch_forever(i, |chain| vm.start_partner(chain)))
                        .expect("cannot start a VM's dispatcher");
                }
                Err(e) => {
                    eprintln!("flexos: cannot start the VM of compartment {:?}: {e}", c.name);
                    process::kill_all();
                    std::process::exit(process::COMPARTMENT_DIED);
                }
            },
            Mechanism::Fcall | Mechanism::Mpk => {}
        }
    }
}
