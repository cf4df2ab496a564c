//! `okvm pause` / `okvm resume`: stop and continue the VM's vCPUs.
//!
//! The sandbox process is stopped as a whole (SIGSTOP), vCPU threads included:
//! the guest does not run at all, as a frozen cgroup does not under runc.
//! virtiofsd keeps running, so nothing the guest holds times out on the host.
//! A pod's container shares its pod's VM: its processes get SIGSTOP and
//! SIGCONT in the guest instead.

use super::Context;
use crate::procs::Procs;
use crate::state::{Action, Container, Status};

pub fn pause(ctx: &Context, args: liboci_cli::Pause) -> anyhow::Result<()> {
    set(ctx, &args.container_id, Action::Pause)
}

pub fn resume(ctx: &Context, args: liboci_cli::Resume) -> anyhow::Result<()> {
    set(ctx, &args.container_id, Action::Resume)
}

/// `Action::Pause` or `Action::Resume` the container's VM.
pub fn set(ctx: &Context, id: &str, action: Action) -> anyhow::Result<()> {
    let container = Container::open(&ctx.root, id)?;
    let mut state = container.check(action)?;
    let (signal, status) = match action {
        Action::Pause => (libc::SIGSTOP, Status::Paused),
        _ => (libc::SIGCONT, Status::Running),
    };
    if state.pod.is_some() {
        // A pod's container shares the VM: its processes stop, not the VM.
        let signal = nix::sys::signal::Signal::try_from(signal)?;
        super::kill::send(&container.address(&state), None, signal, true)?;
    } else {
        let sandbox = Procs::load(&container.dir).sandbox;
        if !sandbox.is_some_and(|p| p.signal(signal)) {
            anyhow::bail!("container {id}: its sandbox process is gone");
        }
    }
    state.status = status;
    container.save(&state)?;
    Ok(())
}
