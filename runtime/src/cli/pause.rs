//! `okvm pause` / `okvm resume`: stop and continue the VM's vCPUs.
//!
//! The sandbox process is stopped as a whole (SIGSTOP), vCPU threads included:
//! the guest does not run at all, as a frozen cgroup does not under runc.
//! virtiofsd keeps running, so nothing the guest holds times out on the host.

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
    let sandbox = Procs::load(&container.dir).sandbox;
    if !sandbox.is_some_and(|p| p.signal(signal)) {
        anyhow::bail!("container {id}: its sandbox process is gone");
    }
    state.status = status;
    container.save(&state)?;
    Ok(())
}
