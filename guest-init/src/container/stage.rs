//! The container stage: okvm-init re-executed as `okvm-init container-stage
//! <fd>` (runc's `runc init`). It is a fresh, single-threaded process, so it
//! may allocate and call anything while it turns itself into the container's
//! process: it reads its [`StageConfig`] from the socketpair at `<fd>`, builds
//! the container's root (or joins a running container's namespaces), applies
//! the OCI process, reports, waits for the start byte, and execve's.
//!
//! Its stderr already belongs to the container, so it prints nothing: every
//! message travels back to okvm-init on the socketpair.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::ExitCode;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use nix::sched::{setns, CloneFlags};
use nix::sys::signal::{signal, SigHandler, Signal};

use super::channel::Channel;
use super::config::{StageConfig, StageReport};
use super::{mounts, process, pty, rootfs};

/// The argument that makes okvm-init a container stage.
pub const MARKER: &str = "container-stage";

/// The stage's whole life; `fd` is its end of the socketpair.
pub fn main(fd: Option<&str>) -> ExitCode {
    let Some(channel) = fd
        .and_then(|f| f.parse().ok())
        .and_then(|f| Channel::inherited(f).ok())
    else {
        return ExitCode::from(2);
    };
    let Ok(Some((config, _))) = channel.recv::<StageConfig>() else {
        return ExitCode::from(2);
    };
    let mut warnings = Vec::new();
    let ready = match prepare(&config, &mut warnings) {
        Ok(r) => r,
        Err(message) => {
            let _ = channel.send(&StageReport::Failed { message }, None);
            return ExitCode::from(1);
        }
    };
    let prepared = StageReport::Prepared { warnings };
    if channel
        .send(&prepared, ready.master.as_ref().map(|m| m.as_fd()))
        .is_err()
    {
        return ExitCode::from(1);
    }
    // Only okvm-init keeps the master.
    drop(ready.master);
    if channel.wait_start().is_err() {
        // okvm-init gave up on this process.
        return ExitCode::from(1);
    }
    let err = exec(&ready.exe);
    let message = format!("cannot exec {:?}: {err}", ready.exe.path);
    let _ = channel.send(&StageReport::Failed { message }, None);
    ExitCode::from(127)
}

struct Ready {
    exe: process::Executable,
    master: Option<OwnedFd>,
}

fn prepare(config: &StageConfig, warnings: &mut Vec<String>) -> Result<Ready, String> {
    let proc_spec = config.process();
    // The guest's /proc is still ours here, whatever the container mounts.
    if let Some(adj) = proc_spec.oom_score_adj() {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("cannot set oom_score_adj {adj}: {e}"))?;
    }
    // Devices and directories get exactly the modes asked for.
    nix::sys::stat::umask(nix::sys::stat::Mode::empty());
    let own_dev = match config {
        StageConfig::Create {
            share, container, ..
        } => rootfs::build(share, container, warnings)?.own_dev,
        StageConfig::Exec { container_pid, .. } => {
            join(*container_pid)?;
            false
        }
    };
    let master = match config.terminal() {
        Some(size) => {
            let pty = pty::open(size)?;
            if own_dev {
                console(&pty.slave_path)?;
            }
            pty::make_controlling(pty.slave)?;
            Some(pty.master)
        }
        None => {
            // A session of its own, as runc gives every process it starts.
            let _ = nix::unistd::setsid();
            None
        }
    };
    if let StageConfig::Create { container, .. } = config {
        rootfs::finish(container)?;
    }
    let exe = process::apply(proc_spec, warnings)?;
    Ok(Ready { exe, master })
}

/// Joins the UTS and mount namespaces of the container whose first process
/// is `pid` (the pid namespace was joined by okvm-init's spawning thread).
/// Entering the mount namespace also makes its root, the container's, ours.
fn join(pid: u32) -> Result<(), String> {
    let open = |ns: &str| {
        std::fs::File::open(format!("/proc/{pid}/ns/{ns}"))
            .map_err(|e| format!("the container is not running ({ns} namespace of {pid}: {e})"))
    };
    // Both are opened first: after the first setns, /proc may be another.
    let uts = open("uts")?;
    let mnt = open("mnt")?;
    setns(uts, CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("cannot join the container's UTS namespace: {e}"))?;
    setns(mnt, CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot join the container's mount namespace: {e}"))
}

/// runc binds the terminal over /dev/console in a /dev of the container's own.
fn console(slave: &str) -> Result<(), String> {
    let console = Path::new("/dev/console");
    mounts::make_target(console, false).map_err(|e| format!("cannot create /dev/console: {e}"))?;
    mount(
        Some(slave),
        console,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| format!("cannot bind the terminal on /dev/console: {e}"))
}

/// Becomes the container's process; returns only on failure.
fn exec(exe: &process::Executable) -> Errno {
    // Rust programs ignore SIGPIPE, and an ignored signal survives execve:
    // the container's process must get the default back.
    // SAFETY: installing SIG_DFL runs no code of ours in a signal context.
    let _ = unsafe { signal(Signal::SIGPIPE, SigHandler::SigDfl) };
    // Nothing of okvm-init's beyond stdio may reach the container (the
    // socketpair is already close-on-exec, and closes on success).
    // SAFETY: close_range only marks descriptors close-on-exec.
    unsafe {
        libc::close_range(
            3,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_int,
        )
    };
    match nix::unistd::execve(&exe.path, &exe.argv, &exe.envp) {
        Err(e) => e,
        Ok(never) => match never {},
    }
}
