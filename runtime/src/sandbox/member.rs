//! A pod's container: it runs in the VM its pod's sandbox booted, so its
//! helper boots nothing. It places the container's rootfs and bind sources
//! in the pod's share (under `containers/<id>/`, in the sandbox's mount
//! namespace, where virtiofsd serves them), has okvm-init create the
//! container there, and then follows its process like the sandbox follows
//! the pod's first one: stdio, signals, and an exit like the process's.
//!
//! The container shares the guest's network and IPC (the pod's): okvm-init
//! gives it its own mount, UTS and pid namespaces, and it gets the pod's
//! hostname unless its spec names one.

use anyhow::{anyhow, Context as _};

use super::{check_console, create_in_guest, exit_like, share, wait_end, Args, SHARE, VSOCK};
use crate::bundle::Bundle;
use crate::guest::{Address, Client};
use crate::procs::{Proc, Procs};
use crate::relay;
use crate::state::Container;

/// The helper's whole life; never returns.
pub fn main(args: Args, pod: String) -> ! {
    crate::internal::started(join(&args, &pod), |m| m.guest_pid).run()
}

struct Member {
    client: Client,
    guest_pid: u32,
    address: Address,
    attached: relay::Attached,
}

fn join(args: &Args, pod: &str) -> anyhow::Result<Member> {
    let bundle = Bundle::load(&args.bundle)?;
    let part = format!("{}/{}", share::POD_CONTAINERS, args.id);
    let mut plan = bundle.plan_in(&args.id, &part, &args.config)?;
    check_console(plan.terminal, args.console_socket.as_deref())?;
    let sandbox = Container::open(&args.root, pod)?;
    // The pod's containers share its UTS namespace (their specs name the
    // sandbox's): in the guest each gets the pod's hostname instead.
    if plan.container.hostname.is_none() {
        plan.container.hostname = sandbox
            .load()
            .ok()
            .and_then(|s| Bundle::load(&s.bundle).ok())
            .and_then(|b| b.spec.hostname().clone());
    }
    let vm = Procs::load(&sandbox.dir)
        .sandbox
        .filter(Proc::alive)
        .ok_or_else(|| anyhow!("the VM of pod sandbox {pod} is not running"))?;
    // The sources are taken here, in the engine's namespace, where
    // containerd mounted the rootfs after the sandbox's namespace was made.
    let trees = share::take(&plan.entries)?;
    share::enter_namespace_of(vm.pid)?;
    let share = sandbox.dir.join(SHARE);
    share::add_part(&share, &args.id, trees)?;
    let result = (|| {
        Procs {
            sandbox: Some(Proc::me()),
            helpers: Vec::new(),
        }
        .save(&args.root.join(&args.id))
        .context("cannot record the container's helper")?;
        let address = Address {
            uds: sandbox.dir.join(VSOCK),
            container: Some(args.id.clone()),
        };
        let pending = relay::prepare(
            &address.uds,
            relay::Ports::Free,
            args.console_socket.as_deref(),
        )?;
        let mut client = address.connect()?;
        let (guest_pid, attached) = create_in_guest(&mut client, plan.container, pending)?;
        Ok(Member {
            client,
            guest_pid,
            address,
            attached,
        })
    })();
    if result.is_err() {
        share::remove_part(&share, &args.id);
    }
    result
}

impl Member {
    fn run(self) -> ! {
        // The container's part of the share stays until the pod's VM ends
        // (with the sandbox's mount namespace): taking it away under a guest
        // that still caches its inodes crashed the guest kernel (a
        // use-after-free in iput) when the pod's next container exited.
        match wait_end(self.client, &self.address, None, self.attached) {
            Some((code, signal)) => exit_like(code, signal),
            None => std::process::exit(255),
        }
    }
}
