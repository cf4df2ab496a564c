//! okvm-init's side of a container stage: wiring its stdio, spawning it in
//! the right pid namespace from a short-lived thread, and the handshake.
//!
//! A new pid namespace applies to the children of the thread that unshared
//! (or setns'd) it, and such a thread may not create threads afterwards; so
//! each stage is spawned by a thread of its own that ends right after.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio as ProcStdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use nix::sched::{setns, unshare, CloneFlags};
use okvm_protocol::Stdio;

use super::channel::Channel;
use super::config::{StageConfig, StageReport, TermSize};
use super::stage;
use crate::reaper::{self, Exit};
use crate::vsock;

/// Which pid namespace the stage (and so the process) lives in.
#[derive(Debug, Clone, Copy)]
pub enum PidNamespace {
    /// A new one, whose PID 1 the process becomes.
    New,
    /// The one of this (guest) pid: the running container's.
    Of(u32),
}

/// How the process's stdio reaches the host.
enum Wiring {
    Streams([Option<File>; 3]),
    /// The stream the terminal's master is relayed to.
    Terminal(File),
}

impl Wiring {
    /// Connects to the host ports `stdio` names.
    fn connect(stdio: &Stdio) -> Result<Wiring, String> {
        let connect = |port: u32| {
            vsock::connect_host(port)
                .map_err(|e| format!("cannot connect to host port {port}: {e}"))
        };
        match stdio {
            Stdio::Streams {
                stdin,
                stdout,
                stderr,
            } => Ok(Wiring::Streams([
                stdin.map(connect).transpose()?,
                stdout.map(connect).transpose()?,
                stderr.map(connect).transpose()?,
            ])),
            Stdio::Terminal { port, .. } => Ok(Wiring::Terminal(connect(*port)?)),
            Stdio::Capture => Err(
                "a container process's output cannot be captured: use streams or a terminal".into(),
            ),
        }
    }
}

/// A stage that has prepared its process and waits for the start byte.
pub struct Prepared {
    pub pid: u32,
    pub starter: Starter,
    pub exited: Receiver<Exit>,
    /// The terminal's master, already relayed to the host stream.
    pub terminal: Option<OwnedFd>,
}

/// The way to let a prepared stage exec.
pub struct Starter(Channel);

/// The terminal size `stdio` asks for, if it is a terminal.
pub fn terminal_size(stdio: &Stdio) -> Option<TermSize> {
    match stdio {
        Stdio::Terminal { rows, cols, .. } => Some(TermSize {
            rows: *rows,
            cols: *cols,
        }),
        Stdio::Streams { .. } | Stdio::Capture => None,
    }
}

/// Spawns a stage in `ns` and waits until it prepared its process (or failed).
pub fn prepare(
    config: &StageConfig,
    ns: PidNamespace,
    stdio: &Stdio,
    label: &str,
) -> Result<Prepared, String> {
    let wiring = Wiring::connect(stdio)?;
    let (channel, theirs) =
        Channel::pair().map_err(|e| format!("cannot create the stage's socketpair: {e}"))?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0("okvm-init")
        .arg(stage::MARKER)
        .arg(theirs.as_raw_fd().to_string())
        .env_clear();
    let relay_to = match wiring {
        Wiring::Streams(files) => {
            let [i, o, e] = files.map(|f| f.map_or_else(ProcStdio::null, ProcStdio::from));
            cmd.stdin(i).stdout(o).stderr(e);
            None
        }
        Wiring::Terminal(stream) => {
            cmd.stdin(ProcStdio::null())
                .stdout(ProcStdio::null())
                .stderr(ProcStdio::null());
            Some(stream)
        }
    };
    let (pid, exited) = spawn_in(ns, cmd, theirs)?;
    let failed = |why: String| -> String {
        // The stage is gone or going: say how it ended if it says nothing.
        match exited.recv_timeout(Duration::from_secs(2)) {
            Ok(exit) => format!("{why} (the {label} stage ended: {exit:?})"),
            Err(_) => why,
        }
    };
    if let Err(e) = channel.send(config, None) {
        return Err(failed(format!("cannot configure the {label} stage: {e}")));
    }
    let master = match channel.recv::<StageReport>() {
        Ok(Some((StageReport::Prepared { warnings }, fd))) => {
            for w in warnings {
                eprintln!("okvm-init: {label}: {w}");
            }
            fd
        }
        Ok(Some((StageReport::Failed { message }, _))) => return Err(message),
        Ok(None) => return Err(failed(format!("the {label} stage ended without a word"))),
        Err(e) => return Err(failed(format!("the {label} stage: {e}"))),
    };
    let terminal = match (relay_to, master) {
        (None, _) => None,
        (Some(stream), Some(master)) => {
            super::pty::relay(&master, stream)
                .map_err(|e| format!("cannot relay the terminal: {e}"))?;
            Some(master)
        }
        (Some(_), None) => return Err(format!("the {label} stage sent no terminal")),
    };
    Ok(Prepared {
        pid,
        starter: Starter(channel),
        exited,
        terminal,
    })
}

impl Starter {
    /// Lets the process exec; an error if the exec itself failed.
    pub fn start(self) -> Result<(), String> {
        self.0
            .send_start()
            .map_err(|e| format!("cannot start the process: {e}"))?;
        // A successful exec closes the stage's end: EOF.
        match self.0.recv::<StageReport>() {
            Ok(None) => Ok(()),
            Ok(Some((StageReport::Failed { message }, _))) => Err(message),
            Ok(Some((StageReport::Prepared { .. }, _))) => Err("the stage reported twice".into()),
            Err(e) => Err(format!("after the start: {e}")),
        }
    }
}

/// Spawns `cmd` (the stage, inheriting `theirs`) from a thread of its own
/// that first enters `ns`. Our copies of the stage's stdio and socket end
/// are dropped with `cmd` and `theirs` when that thread ends.
fn spawn_in(
    ns: PidNamespace,
    mut cmd: Command,
    theirs: OwnedFd,
) -> Result<(u32, Receiver<Exit>), String> {
    let spawner = std::thread::Builder::new()
        .name("stage-spawn".into())
        .spawn(move || -> Result<(u32, Receiver<Exit>), String> {
            match ns {
                PidNamespace::New => unshare(CloneFlags::CLONE_NEWPID)
                    .map_err(|e| format!("cannot create a pid namespace: {e}"))?,
                PidNamespace::Of(pid) => {
                    let f = File::open(format!("/proc/{pid}/ns/pid"))
                        .map_err(|e| format!("the container is not running: {e}"))?;
                    setns(f, CloneFlags::CLONE_NEWPID)
                        .map_err(|e| format!("cannot join the container's pid namespace: {e}"))?
                }
            }
            let (child, exited) = reaper::spawn_inheriting(&mut cmd, theirs.as_fd())
                .map_err(|e| format!("cannot start the container stage: {e}"))?;
            Ok((child.id(), exited))
        })
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    spawner
        .join()
        .map_err(|_| "the stage's spawning thread failed".to_string())?
}
