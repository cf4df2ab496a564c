//! AF_VSOCK sockets from the guest's side: the host is CID 2.

use std::fs::File;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use nix::sys::socket::{
    accept, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};

fn stream_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

/// A connected stream as a File, which reads and writes like any fd.
fn file(fd: OwnedFd) -> File {
    File::from(fd)
}

/// Connects to `port` on the host.
pub fn connect_host(port: u32) -> io::Result<File> {
    let fd = stream_socket()?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &VsockAddr::new(okvm_protocol::HOST_CID, port),
    )?;
    Ok(file(fd))
}

/// A listening socket on `port`, for any peer.
pub struct Listener(OwnedFd);

impl Listener {
    pub fn bind(port: u32) -> io::Result<Self> {
        let fd = stream_socket()?;
        bind(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            &VsockAddr::new(libc::VMADDR_CID_ANY, port),
        )?;
        listen(&fd, Backlog::new(64)?)?;
        Ok(Listener(fd))
    }

    pub fn accept(&self) -> io::Result<File> {
        let raw = accept(std::os::fd::AsRawFd::as_raw_fd(&self.0))?;
        // SAFETY: accept(2) just returned this descriptor; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )?;
        Ok(file(fd))
    }
}

/// Whether the VMM gave this guest a virtio-vsock device (virtio device id 19).
pub fn device_present() -> bool {
    let Ok(dir) = std::fs::read_dir("/sys/bus/virtio/devices") else {
        return false;
    };
    dir.flatten().any(|d| {
        std::fs::read_to_string(d.path().join("device"))
            .map(|id| id.trim() == "0x0013")
            .unwrap_or(false)
    })
}
