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

use std::path::{Path, PathBuf};

use anyhow::{anyhow, Context as _};
use serde::{Deserialize, Serialize};

use super::{check_console, create_in_guest, exit_like, share, wait_end, Args, SHARE, VSOCK};
use crate::bundle::Bundle;
use crate::guest::{Address, Client};
use crate::procs::{Proc, Procs};
use crate::relay;
use crate::state::Container;

/// In a pod container's state directory once its helper handed the
/// container to the guest (sent `Create`): the guest may hold it, and may
/// have looked into its part of the share.
const IN_GUEST: &str = "in-guest";

/// Whether the pod container in state directory `dir` was handed to its
/// pod's guest (see [`IN_GUEST`]).
pub fn handed_to_guest(dir: &Path) -> bool {
    dir.join(IN_GUEST).exists()
}

/// The helper's whole life; never returns.
pub fn main(args: Args, pod: String) -> ! {
    crate::internal::created(join(&args, &pod), |m| m.guest_pid).run()
}

/// What the helper that takes a part out of a pod's share needs.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PartArgs {
    pub root: PathBuf,
    /// The pod container whose part it is.
    pub id: String,
    /// The pod's sandbox container.
    pub pod: String,
}

/// Takes pod container `id`'s part out of its pod's share, in the pod
/// sandbox's mount namespace, for `delete` (which may run in a
/// multi-threaded shim, where setns cannot): its own helper died before it
/// handed the container to the guest, so the guest never saw the part, and
/// nothing else would ever detach it before the pod ends.
pub fn remove_part_main(args: PartArgs) -> ! {
    let removed = (|| {
        let sandbox = Container::open(&args.root, &args.pod)?;
        let vm = Procs::load(&sandbox.dir)
            .sandbox
            .filter(Proc::alive)
            .ok_or_else(|| anyhow!("the VM of pod sandbox {} is not running", args.pod))?;
        share::enter_namespace_of(vm.pid)?;
        share::remove_part(&sandbox.dir.join(SHARE), &args.id)?;
        anyhow::Ok(())
    })();
    crate::internal::started(removed, |()| 0);
    std::process::exit(0)
}

struct Member {
    client: Client,
    guest_pid: u32,
    address: Address,
    attached: relay::Attached,
}

fn join(args: &Args, pod: &str) -> anyhow::Result<Member> {
    let dir = args.root.join(&args.id);
    // First of all, so that `delete` finds this helper whenever it comes.
    Procs::record_sandbox(&dir).context("cannot record the container's helper")?;
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
        std::fs::write(dir.join(IN_GUEST), b"")
            .with_context(|| format!("cannot write {}", dir.display()))?;
        let (guest_pid, attached) = create_in_guest(&mut client, plan.container, pending)?;
        Ok(Member {
            client,
            guest_pid,
            address,
            attached,
        })
    })();
    if result.is_err() {
        if let Err(e) = share::remove_part(&share, &args.id) {
            log::warn!("{e}");
        }
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
            None => std::process::exit(super::LOST.into()),
        }
    }
}
