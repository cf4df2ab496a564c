//! `okvm delete [--force]`: stop what runs, then remove everything the
//! container had on the host.

use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, Context as _};

use nix::sys::signal::Signal;

use super::Context;
use crate::procs::Procs;
use crate::state::{Action, Container, Error, Status};

/// How long a killed process may take to disappear.
const KILL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(ctx: &Context, args: liboci_cli::Delete) -> anyhow::Result<()> {
    delete(ctx, &args.container_id, args.force)
}

/// Removes the container; with `force` also a running one (killed first),
/// and a container that does not exist is not an error then.
pub fn delete(ctx: &Context, id: &str, force: bool) -> anyhow::Result<()> {
    let container = match Container::open(&ctx.root, id) {
        Ok(c) => c,
        // runc: --force on a container that does not exist is not an error.
        Err(Error::NotFound(_)) if force => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let action = if force {
        Action::ForceDelete
    } else {
        Action::Delete
    };
    let state = container.check(action)?;
    if state.status != Status::Stopped {
        log::debug!("deleting {} container {}", state.status, container.id);
    }
    let procs = Procs::load(&container.dir);
    match leave_pod(ctx, &container, &procs) {
        Ok(()) => {}
        // Its processes may still run in the pod's VM: only --force removes
        // what the host has of it all the same.
        Err(e) if !force => return Err(e),
        Err(e) => log::warn!("{e:#}; removing it all the same"),
    }
    remove(container, procs);
    Ok(())
}

/// A pod's container that still runs is killed in the guest, and its helper
/// given the time to notice and exit as the container did; killing the
/// helper instead would leave the process running in the pod's VM. An error
/// means the guest did not confirm the kill.
///
/// When its helper died (killed, crashed) while the pod's VM runs, what it
/// left there is ended from here: a container it had handed to the guest is
/// killed there (a guest that has no such container, or no process of it
/// left, is fine), and its part of the share then stays until the pod ends,
/// as every container's part does; a part the guest never saw is taken out
/// of the share (docs/oci.md, "Crashes").
fn leave_pod(ctx: &Context, container: &Container, procs: &Procs) -> anyhow::Result<()> {
    let Ok(state) = container.load() else {
        return Ok(());
    };
    let Some(pod) = &state.pod else {
        return Ok(());
    };
    let ended = || format!("cannot end container {} in its pod's VM", container.id);
    let address = container.address(&state);
    if let Some(helper) = procs.sandbox.filter(|p| p.alive()) {
        super::kill::send(&address, None, Signal::SIGKILL, true).with_context(ended)?;
        helper.wait_gone(KILL_TIMEOUT);
        return Ok(());
    }
    let pod_dir = container.dir.with_file_name(pod);
    let Some(vm) = Procs::load(&pod_dir).sandbox.filter(|p| p.alive()) else {
        // The pod's VM is gone, and its share with it.
        return Ok(());
    };
    if crate::sandbox::handed_to_guest(&container.dir) {
        if let Err(message) =
            super::kill::answer(&address, None, Signal::SIGKILL, true).with_context(ended)?
        {
            log::debug!("container {}: the guest says: {message}", container.id);
        }
        return Ok(());
    }
    let share = pod_dir.join(crate::sandbox::SHARE);
    let part = Path::new("/proc")
        .join(vm.pid.to_string())
        .join("root")
        .join(share.strip_prefix("/").unwrap_or(&share))
        .join(crate::sandbox::share::POD_CONTAINERS)
        .join(&container.id);
    if part.symlink_metadata().is_err() {
        return Ok(());
    }
    let task = crate::internal::Task::RemovePart(crate::sandbox::PartArgs {
        root: ctx.root.clone(),
        id: container.id.clone(),
        pod: pod.clone(),
    });
    let (_, outcome) = crate::internal::spawn(ctx, task, None)?;
    let error = match outcome {
        Some(o) => o.error(),
        None => Some(anyhow!("its helper ended without a word")),
    };
    match error {
        Some(e) => Err(e.context(format!(
            "cannot take container {}'s part out of pod {pod}'s share",
            container.id
        ))),
        None => Ok(()),
    }
}

/// Removes everything of the container on the host, whatever state it is
/// in (a failed create, the end of `run`).
pub fn destroy(ctx: &Context, container: Container) {
    let procs = Procs::load(&container.dir);
    if let Err(e) = leave_pod(ctx, &container, &procs) {
        log::warn!("{e:#}; removing it all the same");
    }
    remove(container, procs);
}

/// Kills every process the container's sandbox recorded (the sandbox, and
/// virtiofsd, which would die with it anyway), removes its network (tap, tc
/// state, address lease), then removes the state directory. The share's
/// mounts lived in the sandbox's own mount namespace and are gone with it.
fn remove(container: Container, procs: Procs) {
    for p in procs.all() {
        if !p.kill_and_wait(KILL_TIMEOUT) {
            log::warn!(
                "container {}: process {} did not exit after SIGKILL",
                container.id,
                p.pid
            );
        }
    }
    crate::network::teardown(&container.dir);
    let id = container.id.clone();
    if let Err(e) = container.remove() {
        log::warn!("container {id}: {e}");
    }
}
