//! A process's stdio between containerd's fifos and the helper process
//! (sandbox or exec proxy) that carries it to the guest.
//!
//! Without a terminal the helper gets pipes as fds 0..2 and the shim copies
//! between them and the fifos, as the runc shim does between the fifos and
//! runc's pipes: that is what makes CloseIO mean EOF on the process's stdin,
//! and what keeps output flowing when containerd restarts. With a terminal
//! the helper sends the host pty's master over a console socket, and the
//! shim copies between the master and the fifos; resizing the master is how
//! ResizePty reaches the guest. Copies run on plain threads: a few per
//! process, blocked in read or write most of their life.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::errors::{Result, ShimError};

/// How long a finished process's output may take to reach containerd.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// The fifos containerd gave a process (empty: not wanted).
#[derive(Debug, Clone, Default)]
pub struct Fifos {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

/// The shim's own writer on a stdin fifo: while it is open, containerd's
/// writers may come and go without the process seeing EOF; CloseIO drops it.
#[derive(Default)]
enum Hold {
    #[default]
    Pending,
    Open(#[allow(dead_code)] File),
    Released,
}

/// The copies of one process, shared by its entry and the exit handling.
#[derive(Clone, Default)]
pub struct Copies {
    outputs: Arc<Mutex<Vec<JoinHandle<()>>>>,
    stdin: Arc<Mutex<Hold>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn open_fifo(path: &str, read: bool, write: bool) -> io::Result<File> {
    let f = File::options()
        .read(read)
        .write(write)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)?;
    // Opened without waiting for the other end; used blocking from here on.
    let flags = nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
    let flags = nix::fcntl::OFlag::from_bits_truncate(flags) & !nix::fcntl::OFlag::O_NONBLOCK;
    nix::fcntl::fcntl(f.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(flags))?;
    Ok(f)
}

fn copy(mut from: impl io::Read, mut to: impl io::Write) {
    match io::copy(&mut from, &mut to) {
        Ok(_) => {}
        // A terminal hanging up (EIO) or a reader going away (EPIPE) is how
        // a copy normally ends.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe || e.raw_os_error() == Some(libc::EIO) => {}
        Err(e) => log::warn!("stdio copy failed: {e}"),
    }
}

impl Copies {
    /// Copies the process's input from the fifo at `path` into `to`, until
    /// CloseIO and containerd's writers are gone.
    fn copy_in(&self, path: &str, to: File) -> io::Result<()> {
        // Open for reading too, so it cannot fail for want of a reader; it
        // bridges the time until the hold proper is in place.
        let bridge = open_fifo(path, true, true)?;
        let fifo = open_fifo(path, true, false)?;
        let hold = open_fifo(path, false, true)?;
        drop(bridge);
        let mut stdin = lock(&self.stdin);
        if !matches!(*stdin, Hold::Released) {
            *stdin = Hold::Open(hold);
        }
        drop(stdin);
        std::thread::Builder::new()
            .name("stdin".into())
            .spawn(move || copy(fifo, to))?;
        Ok(())
    }

    /// Copies the process's output from `from` into the fifo at `path` until
    /// `from` ends. The shim holds the fifo open for reading as well, so
    /// output survives containerd going away and coming back.
    fn copy_out(&self, from: File, path: &str) -> io::Result<()> {
        let hold = open_fifo(path, true, false)?;
        let fifo = open_fifo(path, false, true)?;
        let h = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || {
                copy(from, fifo);
                drop(hold);
            })?;
        lock(&self.outputs).push(h);
        Ok(())
    }

    /// CloseIO: lets go of the shim's hold on stdin.
    pub fn close_input(&self) {
        *lock(&self.stdin) = Hold::Released;
    }

    /// Once the process ended: waits (a while) for its output to reach the
    /// fifos, then lets go of stdin. A copy blocked on a fifo nobody reads is
    /// left behind, with its thread.
    pub async fn drain(&self) {
        let outputs = std::mem::take(&mut *lock(&self.outputs));
        let _ = tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + DRAIN_TIMEOUT;
            for h in outputs {
                while !h.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
        .await;
        self.close_input();
    }
}

/// One process's stdio, wired.
pub struct Wiring {
    /// The helper's fds 0, 1 and 2, until it has started.
    child: Option<[OwnedFd; 3]>,
    pub copies: Copies,
    console: Option<(UnixListener, PathBuf)>,
    pty: Option<File>,
    fifos: Fifos,
}

fn internal(context: String) -> impl FnOnce(io::Error) -> ShimError {
    move |e| ShimError::Internal(format!("{context}: {e}"))
}

fn fifo_error<'a>(field: &'static str, path: &'a str) -> impl FnOnce(io::Error) -> ShimError + 'a {
    move |e| ShimError::InvalidRequest {
        field,
        reason: format!("{path}: {e}"),
    }
}

fn dev_null() -> Result<OwnedFd> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(internal("cannot open /dev/null".into()))
}

fn pipe() -> Result<(File, File)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ShimError::Internal(format!("cannot make a pipe: {e}")))?;
    Ok((File::from(r), File::from(w)))
}

impl Wiring {
    /// Prepares the pipes (or the console socket at `console`) for a process
    /// whose fifos are `fifos`.
    pub fn new(fifos: &Fifos, console: &Path) -> Result<Wiring> {
        let copies = Copies::default();
        if fifos.terminal {
            let _ = std::fs::remove_file(console);
            let listener = UnixListener::bind(console)
                .map_err(internal(format!("cannot listen on {}", console.display())))?;
            return Ok(Wiring {
                child: Some([dev_null()?, dev_null()?, dev_null()?]),
                copies,
                console: Some((listener, console.into())),
                pty: None,
                fifos: fifos.clone(),
            });
        }
        let stdin = if fifos.stdin.is_empty() {
            dev_null()?
        } else {
            let (r, w) = pipe()?;
            copies
                .copy_in(&fifos.stdin, w)
                .map_err(fifo_error("stdin", &fifos.stdin))?;
            r.into()
        };
        let output = |path: &str, field: &'static str| -> Result<OwnedFd> {
            if path.is_empty() {
                return dev_null();
            }
            let (r, w) = pipe()?;
            copies.copy_out(r, path).map_err(fifo_error(field, path))?;
            Ok(w.into())
        };
        let stdout = output(&fifos.stdout, "stdout")?;
        let stderr = output(&fifos.stderr, "stderr")?;
        Ok(Wiring {
            child: Some([stdin, stdout, stderr]),
            copies,
            console: None,
            pty: None,
            fifos: fifos.clone(),
        })
    }

    /// The fds the helper gets as its stdin, stdout and stderr (None once it
    /// has started).
    pub fn child_fds(&self) -> Option<[BorrowedFd<'_>; 3]> {
        let [a, b, c] = self.child.as_ref()?;
        Some([a.as_fd(), b.as_fd(), c.as_fd()])
    }

    /// The console socket to hand the helper, with a terminal.
    pub fn console_socket(&self) -> Option<&Path> {
        self.console.as_ref().map(|(_, p)| p.as_path())
    }

    /// Once the helper has started: lets go of its ends of the pipes (so the
    /// copies see EOF when it ends) or takes the pty master it sent and
    /// starts copying the terminal.
    pub fn started(&mut self) -> Result<()> {
        self.child = None;
        let Some((listener, path)) = self.console.take() else {
            return Ok(());
        };
        // The helper sent the master before it reported its start.
        listener
            .set_nonblocking(true)
            .map_err(internal("console socket".into()))?;
        let master = okvm::relay::receive_master(&listener).map_err(internal(format!(
            "no terminal arrived on {}",
            path.display()
        )));
        let _ = std::fs::remove_file(&path);
        let master = File::from(master?);
        let clone = || master.try_clone().map_err(internal("terminal".into()));
        if !self.fifos.stdin.is_empty() {
            self.copies
                .copy_in(&self.fifos.stdin, clone()?)
                .map_err(fifo_error("stdin", &self.fifos.stdin))?;
        }
        if !self.fifos.stdout.is_empty() {
            self.copies
                .copy_out(clone()?, &self.fifos.stdout)
                .map_err(fifo_error("stdout", &self.fifos.stdout))?;
        }
        self.pty = Some(master);
        Ok(())
    }

    /// ResizePty: the helper holds the slave as its controlling terminal, so
    /// the size change raises SIGWINCH there, which it passes to the guest.
    pub fn resize(&self, rows: u16, cols: u16) -> Result<()> {
        let Some(pty) = &self.pty else {
            return Err(ShimError::InvalidRequest {
                field: "exec_id",
                reason: "the process has no terminal".into(),
            });
        };
        let ws = libc::winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCSWINSZ reads one winsize, which lives across the call.
        if unsafe { libc::ioctl(pty.as_raw_fd(), libc::TIOCSWINSZ, &ws) } != 0 {
            return Err(ShimError::Internal(format!(
                "cannot resize the terminal: {}",
                io::Error::last_os_error()
            )));
        }
        Ok(())
    }
}
