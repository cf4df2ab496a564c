//! The helper processes okvm's front ends start from their own binary: the
//! sandbox (one per container, the VMM), the exec proxy (one per process
//! run with `exec` from the shim), and the short-lived one that takes a
//! pod container's part out of its pod's share after its helper died.
//!
//! Both `okvm` and `containerd-shim-okvm-v2` call [`dispatch`] first thing in
//! `main`, so the library can start either of them as `current_exe()` with a
//! marker argument and the task as JSON: no front end has to parse the
//! other's flags, and the shim never runs the `okvm` CLI.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;

use anyhow::Context as _;
use serde::{Deserialize, Serialize};

use crate::cli::Context;
use crate::sandbox;

/// argv[1] of a helper process.
pub const MARKER: &str = "--okvm-internal";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Task {
    Sandbox(sandbox::Args),
    ExecProxy(crate::cli::exec::ProxyArgs),
    RemovePart(sandbox::PartArgs),
}

/// What a container's helper reports when the process creating the
/// container went away before it heard that the container exists.
#[derive(Debug, thiserror::Error)]
#[error(
    "the process creating this container (okvm create, or the shim) is gone: ending the container"
)]
pub struct StarterGone;

#[derive(Debug, Serialize, Deserialize)]
struct Invocation {
    log: Option<PathBuf>,
    log_format: Option<String>,
    debug: bool,
    task: Task,
}

/// Runs the helper named on the command line, if this process is one, and
/// never returns then; returns when this is an ordinary invocation.
pub fn dispatch() {
    let mut args = std::env::args_os().skip(1);
    if args.next().as_deref() != Some(MARKER.as_ref()) {
        return;
    }
    let parsed = args
        .next()
        .and_then(|a| a.into_string().ok())
        .and_then(|s| serde_json::from_str::<Invocation>(&s).ok());
    let Some(inv) = parsed else {
        eprintln!("okvm: error: {MARKER} is for okvm's own helper processes");
        std::process::exit(2)
    };
    // Before any thread exists, so that every thread inherits the mask and
    // only the relay thread receives these.
    let _ = sandbox::relayed_signals().thread_block();
    // A session of its own: a terminal's slave becomes its controlling tty.
    let _ = nix::unistd::setsid();
    // The sync pipe is not for virtiofsd or anything else the helper starts.
    let _ = nix::fcntl::fcntl(
        sandbox::SYNC_FD,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    );
    let level = if inv.debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let format = inv
        .log_format
        .as_deref()
        .and_then(|f| f.parse().ok())
        .unwrap_or_default();
    // The helpers' stdio belong to the container's process: without a log
    // file they log into the container's state directory.
    let (root, id) = match &inv.task {
        Task::Sandbox(a) => (&a.root, &a.id),
        Task::ExecProxy(a) => (&a.root, &a.id),
        Task::RemovePart(a) => (&a.root, &a.id),
    };
    let log_file = inv
        .log
        .clone()
        .unwrap_or_else(|| root.join(id).join(sandbox::LOG));
    crate::logger::init(level, Some(&log_file), format);
    match inv.task {
        Task::Sandbox(a) => sandbox::main(a),
        Task::ExecProxy(a) => crate::cli::exec::proxy_main(a),
        Task::RemovePart(a) => sandbox::remove_part_main(a),
    }
}

/// A helper's start-up is over: tells the starter how it went (with the guest
/// pid of the process it follows), and on failure logs it and exits 1.
pub fn started<T>(result: anyhow::Result<T>, guest_pid: impl Fn(&T) -> u32) -> T {
    let _ = sandbox::Outcome::report(&result, guest_pid);
    or_exit(result)
}

/// [`started`] for a container's helper (the sandbox, a pod container's
/// helper): when the starter is gone, and so never learns that the
/// container exists, the helper ends instead of keeping a container no one
/// created (docs/oci.md, "Crashes").
pub fn created<T>(result: anyhow::Result<T>, guest_pid: impl Fn(&T) -> u32) -> T {
    let delivered = sandbox::Outcome::report(&result, guest_pid);
    let value = or_exit(result);
    if delivered.is_err() {
        log::error!("{StarterGone}");
        std::process::exit(1)
    }
    value
}

fn or_exit<T>(result: anyhow::Result<T>) -> T {
    result.unwrap_or_else(|e| {
        log::error!("{e:#}");
        std::process::exit(1)
    })
}

/// Whether the starter is gone before this helper reported its start-up:
/// nothing reads the sync pipe any more (its read end was closed).
pub fn starter_gone() -> bool {
    let mut fds = [libc::pollfd {
        fd: sandbox::SYNC_FD,
        events: 0,
        revents: 0,
    }];
    // SAFETY: one pollfd on the stack and its count; a zero timeout. Only
    // looks at the fd, which stays this process's.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n == 1 && fds[0].revents & libc::POLLERR != 0
}

/// Starts `task` as a child of this process, logging as `ctx` says, with
/// `stdio` as its fds 0..2 (this process's own when None), and waits until it
/// reports its start-up over its fd 3. Returns its pid and what it said
/// (None: it ended without a word). The child is not waited for: it lives on
/// as the caller's (conmon's, the shim's) to reap.
pub fn spawn(
    ctx: &Context,
    task: Task,
    stdio: Option<[BorrowedFd<'_>; 3]>,
) -> anyhow::Result<(u32, Option<sandbox::Outcome>)> {
    let inv = Invocation {
        log: ctx.log.clone(),
        log_format: ctx.log_format.clone(),
        debug: ctx.debug,
        task,
    };
    let json = serde_json::to_string(&inv).context("cannot encode the helper's task")?;
    let (read, write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).context("cannot make the sync pipe")?;
    let mut cmd = Command::new(std::env::current_exe().context("cannot find okvm itself")?);
    cmd.args([OsString::from(MARKER), OsString::from(json)]);
    if let Some([stdin, stdout, stderr]) = stdio {
        cmd.stdin(stdin.try_clone_to_owned()?)
            .stdout(stdout.try_clone_to_owned()?)
            .stderr(stderr.try_clone_to_owned()?);
    }
    let raw = write.as_raw_fd();
    // SAFETY: dup2 and umask are async-signal-safe; the new fd 3 loses
    // O_CLOEXEC, so the helper inherits exactly that one end of the pipe.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, sandbox::SYNC_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // What the helpers and their virtiofsd make in the state dir
            // (sockets, console.log, logs) is root's alone, as runc keeps it.
            libc::umask(0o077);
            Ok(())
        });
    }
    let child = cmd.spawn().context("cannot start okvm's helper process")?;
    // Only the child may hold the write end, or the read never ends.
    drop(write);
    drop(cmd);
    let pid = child.id();
    Ok((pid, sandbox::Outcome::read(read)))
}

/// How helper `pid`, which ended without reporting its start-up, ended
/// (for the error message; it is left for its parent to reap): e.g.
/// " (killed: signal 9, SIGKILL)", or nothing if that is not known within a
/// second.
pub fn how_it_ended(pid: u32) -> String {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        match crate::procs::ended(pid, false) {
            Some(e @ crate::procs::Exit::Signal(_)) => return format!(" (killed: {e})"),
            Some(e) => return format!(" ({e})"),
            None if std::time::Instant::now() > deadline => return String::new(),
            None => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invocation_survives_the_command_line() {
        let inv = Invocation {
            log: Some("/tmp/l".into()),
            log_format: Some("json".into()),
            debug: true,
            task: Task::Sandbox(sandbox::Args {
                root: "/run/okvm".into(),
                id: "c1".into(),
                bundle: "/b".into(),
                console_socket: None,
                pod: Some("p1".into()),
                config: crate::config::Config::default(),
            }),
        };
        let back: Invocation = serde_json::from_str(&serde_json::to_string(&inv).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{inv:?}"));
        let inv = Invocation {
            log: None,
            log_format: None,
            debug: false,
            task: Task::RemovePart(sandbox::PartArgs {
                root: "/run/okvm".into(),
                id: "c2".into(),
                pod: "p1".into(),
            }),
        };
        let back: Invocation = serde_json::from_str(&serde_json::to_string(&inv).unwrap()).unwrap();
        assert_eq!(format!("{back:?}"), format!("{inv:?}"));
    }
}
