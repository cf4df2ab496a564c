//! The host-side Unix sockets: the device's listener, which must survive a
//! stale file from an earlier run without stealing a live one, and connects
//! that never block the device thread.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use super::SetupError;

/// The socket file this device created, told apart from whatever may replace
/// it later so that dropping the device never removes somebody else's socket.
#[derive(Debug)]
pub struct BoundPath {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for BoundPath {
    fn drop(&mut self) {
        if let Ok(md) = std::fs::symlink_metadata(&self.path) {
            if md.dev() == self.dev && md.ino() == self.ino {
                let _ = std::fs::remove_file(&self.path);
            }
        }
    }
}

/// Listens on `path` (non-blocking), replacing a socket file nobody listens on.
pub fn bind_listener(path: &Path) -> Result<(UnixListener, BoundPath), SetupError> {
    let dir = match path.parent() {
        Some(d) if d.as_os_str().is_empty() => Path::new("."),
        Some(d) => d,
        None => {
            return Err(SetupError::NotASocket {
                path: path.to_path_buf(),
            })
        }
    };
    if !dir.is_dir() {
        return Err(SetupError::NoDirectory {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    match std::fs::symlink_metadata(path) {
        Ok(md) if md.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(SetupError::InUse {
                    path: path.to_path_buf(),
                });
            }
            std::fs::remove_file(path).map_err(|source| SetupError::RemoveStale {
                path: path.to_path_buf(),
                source,
            })?;
        }
        Ok(_) => {
            return Err(SetupError::NotASocket {
                path: path.to_path_buf(),
            })
        }
        Err(_) => {}
    }
    let bind_err = |source| SetupError::Bind {
        path: path.to_path_buf(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    listener.set_nonblocking(true).map_err(bind_err)?;
    let md = std::fs::symlink_metadata(path).map_err(bind_err)?;
    Ok((
        listener,
        BoundPath {
            path: path.to_path_buf(),
            dev: md.dev(),
            ino: md.ino(),
        },
    ))
}

/// Where the host listens for guest connections to `port`: `<uds>_<port>`.
pub fn port_path(uds: &Path, port: u32) -> PathBuf {
    let mut p = OsString::from(uds.as_os_str());
    p.push(format!("_{port}"));
    PathBuf::from(p)
}

/// Connects to a Unix stream socket without blocking: a listener with a full
/// backlog (a host service that stopped accepting) fails with EAGAIN instead
/// of stalling every connection of the device. The stream is non-blocking.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    let mut addr = libc::sockaddr_un {
        sun_family: libc::AF_UNIX as libc::sa_family_t,
        sun_path: [0; 108],
    };
    // Keep the terminating NUL: the kernel reads a pathname address up to it.
    if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a usable Unix socket path", path.display()),
        ));
    }
    for (dst, &src) in addr.sun_path.iter_mut().zip(bytes) {
        *dst = src as libc::c_char;
    }
    // SAFETY: socket() takes no pointers and only returns a new descriptor.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns or closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::offset_of!(libc::sockaddr_un, sun_path) + bytes.len() + 1;
    // SAFETY: `addr` is an initialized sockaddr_un that lives across the call
    // and `len` does not exceed its size; connect() does not keep the pointer.
    let rc = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast::<libc::sockaddr>(),
            len as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(fd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_socket_is_replaced_and_a_live_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let (first, bound) = bind_listener(&path).unwrap();
        assert!(matches!(
            bind_listener(&path),
            Err(SetupError::InUse { .. })
        ));
        drop(first);
        std::mem::forget(bound); // leave the file behind, as a crash would
        assert!(path.exists());
        let (_l, bound) = bind_listener(&path).unwrap();
        drop(bound);
        assert!(!path.exists(), "the device removes its own socket file");
    }

    #[test]
    fn a_missing_directory_or_a_regular_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = bind_listener(&dir.path().join("nope/v.sock")).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"keep me").unwrap();
        assert!(matches!(
            bind_listener(&file),
            Err(SetupError::NotASocket { .. })
        ));
        assert_eq!(std::fs::read(&file).unwrap(), b"keep me");
    }

    #[test]
    fn connects_without_blocking_and_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let _l = UnixListener::bind(&path).unwrap();
        let s = connect_nonblocking(&path).unwrap();
        assert!(s.peer_addr().is_ok());
        assert!(connect_nonblocking(&dir.path().join("none")).is_err());
        let long = dir.path().join("x".repeat(200));
        assert_eq!(
            connect_nonblocking(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        assert_eq!(
            port_path(Path::new("/run/v.sock"), 52),
            Path::new("/run/v.sock_52")
        );
    }
}
