//! `okvm kill <id> [SIGNAL]`: deliver a signal to the container process in
//! the guest (not to the VMM), or with `--all` to all its processes.

use anyhow::{anyhow, bail};
use nix::sys::signal::Signal;
use okvm_protocol::{RequestBody, ResponseBody};

use super::Context;
use crate::guest::Address;
use crate::procs::Procs;
use crate::state::{Action, Container, Status};

pub fn run(ctx: &Context, args: liboci_cli::Kill) -> anyhow::Result<()> {
    kill(
        ctx,
        &args.container_id,
        parse_signal(&args.signal)?,
        args.all,
    )
}

/// Delivers `signal` to the container process (with `all`, to all of the
/// container's processes).
pub fn kill(ctx: &Context, id: &str, signal: Signal, all: bool) -> anyhow::Result<()> {
    let container = Container::open(&ctx.root, id)?;
    let state = container.check(Action::Kill)?;
    // SIGKILL needs no answer from the guest: the sandbox dies, and conmon
    // sees the container killed by SIGKILL, as with runc. (A pod's
    // container shares its VM: the guest kills it.)
    if signal == Signal::SIGKILL && state.pod.is_none() {
        if let Some(p) = Procs::load(&container.dir).sandbox {
            p.signal(libc::SIGKILL);
            return Ok(());
        }
    }
    // A paused guest cannot answer.
    if state.status == Status::Paused {
        bail!(
            "container {} is paused: resume it first, or send SIGKILL",
            container.id
        );
    }
    send(&container.address(&state), None, signal, all)
}

/// Delivers `signal` to process `guest_pid` of the container (an exec'd one:
/// the shim knows their guest pids).
pub fn signal_process(
    ctx: &Context,
    id: &str,
    guest_pid: u32,
    signal: Signal,
) -> anyhow::Result<()> {
    let container = Container::open(&ctx.root, id)?;
    let state = container.check(Action::Kill)?;
    if state.status == Status::Paused {
        bail!("container {id} is paused: resume it first");
    }
    send(&container.address(&state), Some(guest_pid), signal, false)
}

pub(crate) fn send(
    address: &Address,
    pid: Option<u32>,
    signal: Signal,
    all: bool,
) -> anyhow::Result<()> {
    answer(address, pid, signal, all)?.map_err(|message| anyhow!("{message}"))
}

/// The guest's answer to a signal: `Err` with its message when it could not
/// deliver it (e.g. it has no such container); the outer error when it gave
/// no answer.
pub(crate) fn answer(
    address: &Address,
    pid: Option<u32>,
    signal: Signal,
    all: bool,
) -> anyhow::Result<Result<(), String>> {
    match address.call(RequestBody::Signal {
        pid,
        signal: signal as i32,
        all,
    })? {
        ResponseBody::Done => Ok(Ok(())),
        ResponseBody::Error { message } => Ok(Err(message)),
        other => bail!(crate::guest::unexpected("kill", &other)),
    }
}

/// "TERM", "SIGTERM", "sigterm" or "15", as runc accepts them.
pub fn parse_signal(s: &str) -> anyhow::Result<Signal> {
    let s = s.trim();
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| anyhow!("invalid signal {s:?}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>()
        .map_err(|_| anyhow!("invalid signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_parse_like_runc() {
        for s in ["TERM", "SIGTERM", "sigterm", "15"] {
            assert_eq!(parse_signal(s).unwrap(), Signal::SIGTERM, "{s}");
        }
        assert_eq!(parse_signal("KILL").unwrap(), Signal::SIGKILL);
        for bad in ["NOPE", "0x", "99", ""] {
            assert!(parse_signal(bad).is_err(), "{bad}");
        }
    }
}
