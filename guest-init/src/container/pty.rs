//! Terminals. As runc does, the stage opens the pty inside the container
//! (its /dev/ptmx, so the slave is a /dev/pts/N the process can name), makes
//! the slave its controlling terminal and stdio, and hands the master to
//! okvm-init, which carries its bytes to and from one host vsock stream.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use super::config::TermSize;

/// A pty the stage opened: the master goes to okvm-init, the slave becomes
/// the process's terminal.
pub struct Pty {
    pub master: OwnedFd,
    pub slave: OwnedFd,
    /// `/dev/pts/N` in the container.
    pub slave_path: String,
}

/// Opens a pty on the container's /dev/ptmx, sized `size`.
pub fn open(size: TermSize) -> Result<Pty, String> {
    let fail = |what: &str, e: io::Error| format!("cannot {what} for the terminal: {e}");
    let master: OwnedFd = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY)
        .open("/dev/ptmx")
        .map_err(|e| fail("open /dev/ptmx in the container", e))?
        .into();
    let fd = master.as_raw_fd();
    // SAFETY: unlockpt only reads the descriptor number, which is ours.
    if unsafe { libc::unlockpt(fd) } != 0 {
        return Err(fail("unlock the pty", io::Error::last_os_error()));
    }
    let mut name = [0 as libc::c_char; 64];
    // SAFETY: ptsname_r writes at most name.len() bytes into our buffer.
    let r = unsafe { libc::ptsname_r(fd, name.as_mut_ptr(), name.len()) };
    if r != 0 {
        return Err(fail("name the pty", io::Error::from_raw_os_error(r)));
    }
    // SAFETY: ptsname_r succeeded, so the buffer holds a NUL-terminated name.
    let slave_path = unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    // TIOCGPTPEER opens the slave through the master, with no path lookup.
    // SAFETY: the ioctl takes open(2) flags by value and returns a new fd.
    let raw = unsafe {
        libc::ioctl(
            fd,
            libc::TIOCGPTPEER,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(fail("open the pty's slave", io::Error::last_os_error()));
    }
    // SAFETY: the ioctl just returned this new descriptor; we own it.
    let slave = unsafe { OwnedFd::from_raw_fd(raw) };
    set_size(master.as_fd(), size).map_err(|e| fail("size the pty", e))?;
    Ok(Pty {
        master,
        slave,
        slave_path,
    })
}

/// Sets a terminal's size (through the master; the kernel then sends
/// SIGWINCH to the terminal's foreground process group).
pub fn set_size(fd: BorrowedFd, size: TermSize) -> io::Result<()> {
    let ws = libc::winsize {
        ws_row: size.rows,
        ws_col: size.cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads one winsize from the pointer, which outlives the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The stage: a new session whose controlling terminal is `slave`, which
/// also becomes stdin, stdout and stderr.
pub fn make_controlling(slave: OwnedFd) -> Result<(), String> {
    // setsid fails only for a process group leader, which the stage is not.
    let _ = nix::unistd::setsid();
    // SAFETY: TIOCSCTTY takes an int by value (0: do not steal the terminal).
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!(
            "cannot make the pty the controlling terminal: {}",
            io::Error::last_os_error()
        ));
    }
    for target in 0..=2 {
        nix::unistd::dup2(slave.as_raw_fd(), target)
            .map_err(|e| format!("cannot make the pty fd {target}: {e}"))?;
    }
    Ok(())
}

/// okvm-init: copies bytes between the pty `master` and the host's `stream`,
/// one thread each way. When the process side is gone (the master reads
/// EIO: no slave left open) the stream is shut down, so the host sees the
/// end of the output and the other thread stops reading.
pub fn relay(master: &OwnedFd, stream: File) -> io::Result<()> {
    let mut from_pty = File::from(master.try_clone()?);
    let mut to_pty = File::from(master.try_clone()?);
    let mut to_host = stream.try_clone()?;
    let mut from_host = stream;
    std::thread::Builder::new()
        .name("pty-out".into())
        .spawn(move || {
            copy(&mut from_pty, &mut to_host);
            let _ =
                nix::sys::socket::shutdown(to_host.as_raw_fd(), nix::sys::socket::Shutdown::Both);
        })?;
    std::thread::Builder::new()
        .name("pty-in".into())
        .spawn(move || copy(&mut from_host, &mut to_pty))?;
    Ok(())
}

/// Copies until the reader ends or either side fails (EIO from a master
/// whose slave is gone is the normal end).
fn copy(from: &mut File, to: &mut File) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if to.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}
