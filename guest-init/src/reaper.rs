//! PID 1's duty: reap every child, orphans included, and hand each exit
//! status to whoever spawned that process.
//!
//! Only the reaper calls waitpid (besides std's spawn, for a child whose exec
//! failed). Spawning and reaping both happen under one lock, so an exit never
//! arrives before its waiter, and the reaper never steals the failed child that
//! std's spawn is about to wait for.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::process::{Child, Command};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use nix::fcntl::{fcntl, FcntlArg, FdFlag};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// As the protocol reports it: (exit code, killing signal).
    pub fn code_and_signal(self) -> (Option<i32>, Option<i32>) {
        match self {
            Exit::Code(c) => (Some(c), None),
            Exit::Signal(s) => (None, Some(s)),
        }
    }
}

type Waiters = Mutex<HashMap<i32, Sender<Exit>>>;

fn waiters() -> &'static Waiters {
    static W: OnceLock<Waiters> = OnceLock::new();
    W.get_or_init(Waiters::default)
}

/// Spawns `cmd`; the receiver yields its exit once the reaper sees it.
pub fn spawn(cmd: &mut Command) -> std::io::Result<(Child, Receiver<Exit>)> {
    spawn_with(cmd, None)
}

/// [`spawn`], with `fd` inherited by the child under its own number. It is
/// inheritable only while the lock is held, so no other child spawned
/// meanwhile gets it (every spawn takes the lock).
pub fn spawn_inheriting(
    cmd: &mut Command,
    fd: BorrowedFd,
) -> std::io::Result<(Child, Receiver<Exit>)> {
    spawn_with(cmd, Some(fd))
}

fn spawn_with(
    cmd: &mut Command,
    inherit: Option<BorrowedFd>,
) -> std::io::Result<(Child, Receiver<Exit>)> {
    let mut w = waiters().lock().unwrap_or_else(|e| e.into_inner());
    let cloexec = |on: bool| -> nix::Result<()> {
        if let Some(fd) = inherit {
            let flags = if on {
                FdFlag::FD_CLOEXEC
            } else {
                FdFlag::empty()
            };
            fcntl(fd.as_raw_fd(), FcntlArg::F_SETFD(flags))?;
        }
        Ok(())
    };
    cloexec(false)?;
    let spawned = cmd.spawn();
    cloexec(true)?;
    let child = spawned?;
    let (tx, rx) = channel();
    w.insert(child.id() as i32, tx);
    Ok((child, rx))
}

/// Blocks SIGCHLD in the calling thread (and the threads it starts later), so
/// that [`run`] can wait for it synchronously. Call before starting threads.
pub fn block_sigchld() -> nix::Result<()> {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGCHLD);
    set.thread_block()
}

/// Reaps children forever.
pub fn run() -> ! {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGCHLD);
    loop {
        reap_all();
        let _ = set.wait();
    }
}

fn reap_all() {
    loop {
        // waitpid runs under the waiters' lock, which spawn holds across
        // fork/exec: std's spawn reaps a child whose exec failed itself, and
        // panics if someone else got there first.
        let mut waiters = waiters().lock().unwrap_or_else(|e| e.into_inner());
        let status = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(_) => return,
            Ok(s) => s,
        };
        let (pid, exit) = match status {
            WaitStatus::Exited(pid, code) => (pid, Exit::Code(code)),
            WaitStatus::Signaled(pid, sig, _) => (pid, Exit::Signal(sig as i32)),
            _ => continue,
        };
        if let Some(tx) = waiters.remove(&pid.as_raw()) {
            drop(waiters);
            let _ = tx.send(exit);
        }
    }
}
