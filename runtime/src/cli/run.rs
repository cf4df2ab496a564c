//! `okvm run`: create and start; without `--detach`, stay until the container
//! ends, pass on signals, delete it (unless `--keep`) and exit as it did.

use std::process::ExitCode;

use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::create::{create, Options};
use super::Context;
use crate::sandbox::{exit_like, relayed_signals};
use crate::state::Container;

pub fn run(ctx: &Context, args: liboci_cli::Run) -> anyhow::Result<ExitCode> {
    // Blocked before anything starts, so a ^C while the VM boots is not lost:
    // it is passed on once the container runs.
    if !args.detach {
        let _ = relayed_signals().thread_block();
    }
    let pid = create(
        ctx,
        &Options {
            id: &args.container_id,
            bundle: &args.bundle,
            console_socket: args.console_socket.as_deref(),
            pid_file: args.pid_file.as_deref(),
            stdio: None,
        },
    )?;
    if let Err(e) = super::start::start(ctx, &args.container_id) {
        if let Ok(c) = Container::open(&ctx.root, &args.container_id) {
            super::delete::destroy(ctx, c);
        }
        return Err(e);
    }
    if args.detach {
        return Ok(ExitCode::SUCCESS);
    }
    let sandbox = Pid::from_raw(pid as i32);
    std::thread::spawn(move || loop {
        if let Ok(sig) = relayed_signals().wait() {
            let _ = nix::sys::signal::kill(sandbox, sig);
        }
    });
    // The sandbox is our child: it exits as the container process did.
    let status = loop {
        match waitpid(sandbox, None) {
            Ok(WaitStatus::Exited(_, code)) => break (Some(code), None),
            Ok(WaitStatus::Signaled(_, sig, _)) => break (None, Some(sig as i32)),
            Ok(_) => continue,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => anyhow::bail!("lost the sandbox process: {e}"),
        }
    };
    if !args.keep {
        if let Ok(c) = Container::open(&ctx.root, &args.container_id) {
            super::delete::destroy(ctx, c);
        }
    }
    exit_like(status.0, status.1)
}
