//! A process's stdio between the host and the guest.
//!
//! Without a terminal the host side's fds 0, 1 and 2 (conmon's pipes, a shell's
//! terminal, files) are copied to and from one raw vsock stream each, which
//! okvm-init hands to the process as its fds: the guest copies nothing. With a
//! terminal, okvm makes a pty on the host, sends its master over the console
//! socket (as runc does), and carries the slave's bytes over one stream to the
//! guest's own pty; the host pty is raw, so only the guest's line discipline
//! acts. Window-size changes arrive as SIGWINCH on the host slave (which is
//! the relaying process's controlling terminal) and go on as `Resize`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use okvm_protocol::Stdio;

use crate::guest::host_port_path;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for the guest's {what} stream on {path}: {err}")]
    Listen {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error("the guest did not open its {0} stream")]
    NoStream(&'static str),
    #[error("cannot make a pty: {0}")]
    Pty(nix::Error),
    #[error("console socket {path}: {err}")]
    ConsoleSocket { path: PathBuf, err: io::Error },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Stdin,
    Stdout,
    Stderr,
    Tty,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Stdin => "stdin",
            Role::Stdout => "stdout",
            Role::Stderr => "stderr",
            Role::Tty => "terminal",
        }
    }
}

/// Listeners waiting for the guest's streams, and the stdio to ask it for.
pub struct Pending {
    pub stdio: Stdio,
    listeners: Vec<(Role, UnixListener, PathBuf)>,
    tty: Option<OwnedFd>,
}

/// Streams being copied.
pub struct Attached {
    outputs: Vec<JoinHandle<()>>,
    tty: Option<OwnedFd>,
}

/// Whether fd `fd` is /dev/null (then the guest gets its own /dev/null and
/// no stream is needed).
fn is_dev_null(fd: RawFd) -> bool {
    let f = ManuallyDrop::new(
        // SAFETY: the fd belongs to this process for its whole life (0, 1 or
        // 2); ManuallyDrop keeps it open.
        unsafe { File::from_raw_fd(fd) },
    );
    let (Ok(m), Ok(null)) = (f.metadata(), std::fs::metadata("/dev/null")) else {
        return false;
    };
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    m.file_type().is_char_device() && m.rdev() == null.rdev()
}

fn listen(uds: &Path, port: u32, role: Role) -> Result<(Role, UnixListener, PathBuf), Error> {
    let path = host_port_path(uds, port);
    let _ = std::fs::remove_file(&path);
    let l = UnixListener::bind(&path).map_err(|err| Error::Listen {
        what: role.name(),
        path: path.clone(),
        err,
    })?;
    Ok((role, l, path))
}

/// Prepares the streams of one process. Ports `base..base+3` are used; with
/// `console_socket`, the pty master is sent there before this returns.
pub fn prepare(uds: &Path, base: u32, console_socket: Option<&Path>) -> Result<Pending, Error> {
    if let Some(sock) = console_socket {
        let (master, slave) = open_pty()?;
        send_master(sock, &master).map_err(|err| Error::ConsoleSocket {
            path: sock.into(),
            err,
        })?;
        drop(master);
        let ws = winsize(slave.as_raw_fd()).unwrap_or((24, 80));
        let l = listen(uds, base + 3, Role::Tty)?;
        return Ok(Pending {
            stdio: Stdio::Terminal {
                port: base + 3,
                rows: ws.0,
                cols: ws.1,
            },
            listeners: vec![l],
            tty: Some(slave),
        });
    }
    let mut listeners = Vec::new();
    let mut port = |fd: RawFd, role: Role, offset: u32| -> Result<Option<u32>, Error> {
        if is_dev_null(fd) {
            return Ok(None);
        }
        listeners.push(listen(uds, base + offset, role)?);
        Ok(Some(base + offset))
    };
    let stdio = Stdio::Streams {
        stdin: port(0, Role::Stdin, 0)?,
        stdout: port(1, Role::Stdout, 1)?,
        stderr: port(2, Role::Stderr, 2)?,
    };
    Ok(Pending {
        stdio,
        listeners,
        tty: None,
    })
}

impl Pending {
    /// Accepts the guest's streams (it opened them while preparing the
    /// process) and starts copying.
    pub fn attach(self, timeout: Duration) -> Result<Attached, Error> {
        let mut outputs = Vec::new();
        let tty_fd = self.tty.as_ref().map(|t| t.as_raw_fd());
        for (role, listener, path) in self.listeners {
            let deadline = Instant::now() + timeout;
            let stream = accept_while(&listener, || Instant::now() < deadline)
                .ok()
                .flatten()
                .ok_or(Error::NoStream(role.name()));
            let _ = std::fs::remove_file(&path);
            let stream = stream?;
            match role {
                Role::Stdin => {
                    spawn_copy(stdio_file(0), stream, true);
                }
                Role::Stdout => outputs.push(spawn_copy(stream, stdio_file(1), false)),
                Role::Stderr => outputs.push(spawn_copy(stream, stdio_file(2), false)),
                Role::Tty => {
                    let fd = tty_fd.expect("a terminal stream comes with a pty");
                    let writer = stream
                        .try_clone()
                        .map_err(|_| Error::NoStream("terminal"))?;
                    spawn_copy(borrowed_file(fd), writer, true);
                    outputs.push(spawn_copy(stream, borrowed_file(fd), false));
                }
            }
        }
        Ok(Attached {
            outputs,
            tty: self.tty,
        })
    }

    /// [`Pending::attach`], for the process that relays the streams in its
    /// own session: a terminal's slave becomes its controlling tty, so that
    /// window-size changes reach it as SIGWINCH.
    pub fn attach_session(self, timeout: Duration) -> Result<Attached, Error> {
        let attached = self.attach(timeout)?;
        if let Some(tty) = attached.tty() {
            if let Err(e) = take_controlling_tty(tty) {
                log::warn!("terminal size changes will not reach the process: {e}");
            }
        }
        Ok(attached)
    }
}

/// The first of four host vsock ports for the streams of a process this
/// process relays: distinct per live relaying process, as pids are, so that
/// exec proxies and a pod's containers share a VM's port space.
pub fn ports_of_this_process() -> u32 {
    20_000 + (std::process::id() % 10_000) * 4
}

impl Attached {
    /// The host pty slave, whose size changes are relayed.
    pub fn tty(&self) -> Option<RawFd> {
        self.tty.as_ref().map(|t| t.as_raw_fd())
    }

    /// Waits (up to `timeout`) until everything the process wrote has been
    /// passed on: the guest closes its streams once the process is gone.
    pub fn drain(self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        for h in self.outputs {
            while !h.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
}

/// Accepts one connection on `l`, polling while `keep_waiting` says so:
/// None once it says stop. The stream returned is blocking.
pub fn accept_while(
    l: &UnixListener,
    mut keep_waiting: impl FnMut() -> bool,
) -> io::Result<Option<UnixStream>> {
    l.set_nonblocking(true)?;
    loop {
        match l.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false)?;
                return Ok(Some(s));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        if !keep_waiting() {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// This process's fd 0, 1 or 2, owned by the copy (nobody else uses it).
fn stdio_file(fd: RawFd) -> File {
    // SAFETY: fds 0-2 are open for the life of the process; only this copy
    // thread uses them from now on.
    unsafe { File::from_raw_fd(fd) }
}

/// A second File on an fd that stays owned elsewhere (the pty slave); it is
/// never closed through this handle.
struct Borrowed(ManuallyDrop<File>);

fn borrowed_file(fd: RawFd) -> Borrowed {
    // SAFETY: the owner (Attached) keeps the fd open while the process runs;
    // ManuallyDrop never closes it.
    Borrowed(ManuallyDrop::new(unsafe { File::from_raw_fd(fd) }))
}

impl Read for Borrowed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Borrowed {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

trait HalfClose {
    fn close_write(&mut self);
}
impl HalfClose for UnixStream {
    fn close_write(&mut self) {
        let _ = self.shutdown(std::net::Shutdown::Write);
    }
}
impl HalfClose for File {
    fn close_write(&mut self) {}
}
impl HalfClose for Borrowed {
    fn close_write(&mut self) {}
}

/// Copies until EOF (or an error, such as a pty whose other side is gone);
/// with `half_close`, the writer learns of the end.
fn spawn_copy<R, W>(mut from: R, mut to: W, half_close: bool) -> JoinHandle<()>
where
    R: Read + Send + 'static,
    W: Write + HalfClose + Send + 'static,
{
    std::thread::spawn(move || {
        // A plain loop, not io::copy: its splice path may hold bytes from a
        // socket until much more has arrived, and a container's log lines
        // must show up as they are written.
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if to.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        let _ = to.flush();
        if half_close {
            to.close_write();
        }
    })
}

fn open_pty() -> Result<(OwnedFd, OwnedFd), Error> {
    let pty = nix::pty::openpty(None, None).map_err(Error::Pty)?;
    // Raw: the guest's pty does echo, line editing and signals.
    let mut t = nix::sys::termios::tcgetattr(&pty.slave).map_err(Error::Pty)?;
    nix::sys::termios::cfmakeraw(&mut t);
    nix::sys::termios::tcsetattr(&pty.slave, nix::sys::termios::SetArg::TCSANOW, &t)
        .map_err(Error::Pty)?;
    for fd in [&pty.master, &pty.slave] {
        nix::fcntl::fcntl(
            fd.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(Error::Pty)?;
    }
    Ok((pty.master, pty.slave))
}

/// runc's console-socket convention: one message carrying the master fd
/// (SCM_RIGHTS) and the pty's name.
fn send_master(sock: &Path, master: &OwnedFd) -> io::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let s = UnixStream::connect(sock)?;
    let name = nix::unistd::ttyname(master).unwrap_or_else(|_| "/dev/ptmx".into());
    let name = name.to_string_lossy().into_owned();
    let iov = [io::IoSlice::new(name.as_bytes())];
    let fds = [master.as_raw_fd()];
    sendmsg::<()>(
        s.as_raw_fd(),
        &iov,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// The other end of [`send_master`]: accepts one connection on a console
/// socket and takes the pty master sent over it (the containerd shim's side,
/// which conmon plays for the CLI).
pub fn receive_master(listener: &UnixListener) -> io::Result<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let (s, _) = listener.accept()?;
    let mut name = [0u8; 256];
    let mut iov = [io::IoSliceMut::new(&mut name)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        s.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for c in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            let mut owned = fds.into_iter().map(|fd| {
                // SAFETY: the kernel just installed these fds in this process
                // for us alone; each is owned exactly once here.
                unsafe { OwnedFd::from_raw_fd(fd) }
            });
            if let Some(master) = owned.next() {
                return Ok(master);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "nothing was sent over the console socket",
    ))
}

/// Makes the pty slave this process's controlling terminal, so that a size
/// change on the master (conmon, a terminal emulator) raises SIGWINCH here.
/// The caller must be a session leader without one (after setsid).
pub fn take_controlling_tty(fd: RawFd) -> io::Result<()> {
    // SAFETY: TIOCSCTTY takes an int argument and touches no memory.
    if unsafe { libc::ioctl(fd, libc::TIOCSCTTY, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// (rows, cols) of a terminal.
pub fn winsize(fd: RawFd) -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one struct winsize, which `ws` is.
    let r = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}
