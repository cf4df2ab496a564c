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

use crate::guest::{host_port_path, Deadline, Op, TimedOut};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for the guest's {what} stream on {path}: {err}")]
    Listen {
        what: &'static str,
        path: PathBuf,
        err: io::Error,
    },
    #[error(transparent)]
    NoStream(TimedOut),
    #[error("the guest's {what} stream: {err}")]
    Stream { what: &'static str, err: io::Error },
    #[error("no free host vsock ports for a process's streams beside {}: all {FREE_SETS} sets are taken", .uds.display())]
    NoFreePorts { uds: PathBuf },
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

    /// Its port in a set of [`PORTS_PER_SET`].
    fn offset(self) -> u32 {
        match self {
            Role::Stdin => 0,
            Role::Stdout => 1,
            Role::Stderr => 2,
            Role::Tty => 3,
        }
    }
}

/// Which host vsock ports a process's streams use: a set of
/// [`PORTS_PER_SET`] from `base`, one per [`Role`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ports {
    /// The set at this base (the sandbox's own process: its state directory
    /// is new, nothing else listens there yet).
    At(u32),
    /// A free set among [`FREE_SETS`] from port [`FIRST_FREE_PORT`]: exec
    /// proxies and a pod's containers share their VM's ports, and each
    /// claims a set of its own.
    Free,
}

pub const PORTS_PER_SET: u32 = 4;
pub const FIRST_FREE_PORT: u32 = 20_000;
pub const FREE_SETS: u32 = 10_000;

/// A listening socket on a path this process created, removed again when
/// dropped (after the guest's stream came, or when start-up failed).
struct Listening {
    role: Role,
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for Listening {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Listeners waiting for the guest's streams, and the stdio to ask it for.
pub struct Pending {
    pub stdio: Stdio,
    listeners: Vec<Listening>,
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

/// Binds the socket for `role` at `port`. Binding creates the path and fails
/// when anything is there: whatever is, maybe another process's live
/// listener, is never removed.
fn listen(uds: &Path, port: u32, role: Role) -> Result<Listening, Error> {
    let path = host_port_path(uds, port);
    let listener = UnixListener::bind(&path).map_err(|err| Error::Listen {
        what: role.name(),
        path: path.clone(),
        err,
    })?;
    Ok(Listening {
        role,
        listener,
        path,
    })
}

/// Listens for every role in the set at `base`; none of it stays on failure.
fn listen_set(uds: &Path, base: u32, roles: &[Role]) -> Result<Vec<Listening>, Error> {
    roles
        .iter()
        .map(|&role| listen(uds, base + role.offset(), role))
        .collect()
}

/// Claims a set of ports for `roles`: the one `ports` names, or the first
/// free one from set `hint` on. A set taken by a live process, or left by
/// one that crashed, is skipped; as each port is created exclusively, two
/// processes can never hold the same one.
fn claim(
    uds: &Path,
    ports: Ports,
    roles: &[Role],
    hint: u32,
) -> Result<(u32, Vec<Listening>), Error> {
    let base = match ports {
        Ports::At(base) => return Ok((base, listen_set(uds, base, roles)?)),
        Ports::Free => {
            |i: u32| FIRST_FREE_PORT + (hint.wrapping_add(i) % FREE_SETS) * PORTS_PER_SET
        }
    };
    for i in 0..FREE_SETS {
        match listen_set(uds, base(i), roles) {
            Ok(l) => return Ok((base(i), l)),
            Err(Error::Listen { err, .. }) if err.kind() == io::ErrorKind::AddrInUse => {}
            Err(e) => return Err(e),
        }
    }
    Err(Error::NoFreePorts { uds: uds.into() })
}

/// Prepares the streams of one process on the host `ports`; with
/// `console_socket`, the pty master is sent there before this returns.
pub fn prepare(uds: &Path, ports: Ports, console_socket: Option<&Path>) -> Result<Pending, Error> {
    // Concurrent processes start their search at different sets.
    let hint = std::process::id();
    if let Some(sock) = console_socket {
        let (base, listeners) = claim(uds, ports, &[Role::Tty], hint)?;
        let (master, slave) = open_pty()?;
        send_master(sock, &master).map_err(|err| Error::ConsoleSocket {
            path: sock.into(),
            err,
        })?;
        drop(master);
        let ws = winsize(slave.as_raw_fd()).unwrap_or((24, 80));
        return Ok(Pending {
            stdio: Stdio::Terminal {
                port: base + Role::Tty.offset(),
                rows: ws.0,
                cols: ws.1,
            },
            listeners,
            tty: Some(slave),
        });
    }
    let roles: Vec<Role> = [(0, Role::Stdin), (1, Role::Stdout), (2, Role::Stderr)]
        .into_iter()
        .filter(|&(fd, _)| !is_dev_null(fd))
        .map(|(_, role)| role)
        .collect();
    let (base, listeners) = claim(uds, ports, &roles, hint)?;
    let port = |role: Role| roles.contains(&role).then(|| base + role.offset());
    Ok(Pending {
        stdio: Stdio::Streams {
            stdin: port(Role::Stdin),
            stdout: port(Role::Stdout),
            stderr: port(Role::Stderr),
        },
        listeners,
        tty: None,
    })
}

impl Pending {
    /// Accepts the guest's streams (it opened them while preparing the
    /// process, so they are all due within one deadline) and starts copying.
    pub fn attach(self) -> Result<Attached, Error> {
        let mut outputs = Vec::new();
        let tty_fd = self.tty.as_ref().map(|t| t.as_raw_fd());
        let deadline = Deadline::start(Op::Streams, None);
        for listening in self.listeners {
            let role = listening.role;
            let stream = accept_while(&listening.listener, || !deadline.is_over())
                .ok()
                .flatten()
                .ok_or(Error::NoStream(deadline.timed_out()))?;
            // The port is free for another process again.
            drop(listening);
            match role {
                Role::Stdin => {
                    spawn_copy(stdio_file(0), stream, true);
                }
                Role::Stdout => outputs.push(spawn_copy(stream, stdio_file(1), false)),
                Role::Stderr => outputs.push(spawn_copy(stream, stdio_file(2), false)),
                Role::Tty => {
                    let Some(fd) = tty_fd else { continue };
                    let writer = stream.try_clone().map_err(|err| Error::Stream {
                        what: role.name(),
                        err,
                    })?;
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
    pub fn attach_session(self) -> Result<Attached, Error> {
        let attached = self.attach()?;
        if let Some(tty) = attached.tty() {
            if let Err(e) = take_controlling_tty(tty) {
                log::warn!("terminal size changes will not reach the process: {e}");
            }
        }
        Ok(attached)
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Role; 3] = [Role::Stdin, Role::Stdout, Role::Stderr];

    fn ports_of(l: &[Listening]) -> Vec<PathBuf> {
        l.iter().map(|l| l.path.clone()).collect()
    }

    #[test]
    fn two_processes_with_the_same_hint_get_different_ports() {
        // Two exec proxies whose pids are equal modulo the number of sets:
        // the same starting point.
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let (a, first) = claim(&uds, Ports::Free, &ALL, 7).unwrap();
        let (b, second) = claim(&uds, Ports::Free, &ALL, 7).unwrap();
        assert_eq!(a, FIRST_FREE_PORT + 7 * PORTS_PER_SET);
        assert_eq!(b, a + PORTS_PER_SET);
        for p in ports_of(&first) {
            assert!(!ports_of(&second).contains(&p));
        }
    }

    #[test]
    fn a_live_listener_is_never_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let base = FIRST_FREE_PORT + 3 * PORTS_PER_SET;
        let theirs = UnixListener::bind(host_port_path(&uds, base + 1)).unwrap();
        let (got, mine) = claim(&uds, Ports::Free, &ALL, 3).unwrap();
        assert_ne!(got, base);
        // Theirs still answers at its path, and the port we passed over
        // (`base`, bound and given back) is gone again.
        UnixStream::connect(host_port_path(&uds, base + 1)).unwrap();
        theirs.set_nonblocking(true).unwrap();
        assert!(theirs.accept().is_ok());
        assert!(!host_port_path(&uds, base).exists());
        drop(mine);
        assert!(host_port_path(&uds, base + 1).exists());
    }

    #[test]
    fn a_crashed_processs_socket_is_skipped_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let stale = host_port_path(&uds, FIRST_FREE_PORT + 2);
        // Its listener is gone (the process was killed); the file stays.
        drop(UnixListener::bind(&stale).unwrap());
        let (got, _mine) = claim(&uds, Ports::Free, &ALL, 0).unwrap();
        assert_eq!(got, FIRST_FREE_PORT + PORTS_PER_SET);
        assert!(stale.exists());
    }

    #[test]
    fn the_search_wraps_around_and_ends_when_every_set_is_taken() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let last = FREE_SETS - 1;
        let (got, _a) = claim(&uds, Ports::Free, &[Role::Tty], last).unwrap();
        assert_eq!(got, FIRST_FREE_PORT + last * PORTS_PER_SET);
        let (got, _b) = claim(&uds, Ports::Free, &[Role::Tty], last).unwrap();
        assert_eq!(got, FIRST_FREE_PORT);
        let full = tempfile::tempdir().unwrap();
        let uds = full.path().join("vsock");
        for set in 0..FREE_SETS {
            let port = FIRST_FREE_PORT + set * PORTS_PER_SET + Role::Tty.offset();
            std::fs::write(host_port_path(&uds, port), b"").unwrap();
        }
        match claim(&uds, Ports::Free, &[Role::Tty], 0) {
            Err(e @ Error::NoFreePorts { .. }) => {
                assert!(e.to_string().contains("all 10000 sets are taken"), "{e}")
            }
            other => panic!("{:?}", other.map(|(b, _)| b)),
        }
    }

    #[test]
    fn concurrent_claims_never_share_a_port_and_leave_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let barrier = std::sync::Barrier::new(16);
        let claimed: Vec<Vec<PathBuf>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..16)
                .map(|_| {
                    s.spawn(|| {
                        barrier.wait();
                        claim(&uds, Ports::Free, &ALL, 42).unwrap().1
                    })
                })
                .collect();
            let held: Vec<Vec<Listening>> =
                handles.into_iter().map(|h| h.join().unwrap()).collect();
            held.iter().map(|l| ports_of(l)).collect()
        });
        let mut all: Vec<&PathBuf> = claimed.iter().flatten().collect();
        let n = all.len();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), n);
        assert_eq!(n, 16 * 3);
        // Every listener was dropped with its claim: its path went too.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn fixed_ports_are_claimed_exclusively_too() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let (_, first) = claim(&uds, Ports::At(1100), &ALL, 0).unwrap();
        let err = claim(&uds, Ports::At(1100), &ALL, 0).map(drop).unwrap_err();
        assert!(matches!(err, Error::Listen { .. }), "{err}");
        // The failed claim removed nothing of the first one's.
        assert!(ports_of(&first).iter().all(|p| p.exists()));
    }
}
