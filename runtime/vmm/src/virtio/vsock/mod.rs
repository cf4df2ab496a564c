//! virtio-vsock (virtio 1.2, section 5.10) served in userspace, with host
//! sockets on Unix domain sockets in Firecracker's "hybrid vsock" style:
//!
//! * Host to guest: a host process connects to the device's socket
//!   (`uds_path`) and writes `CONNECT <port>\n`. The guest gets a REQUEST from
//!   [`HOST_CID`] and a host port of ours (from [`HOST_PORT_FIRST`] up); when it
//!   accepts, the client reads `OK <host port>\n` and from then on the socket
//!   is the stream. If nothing listens on that port in the guest the client
//!   is simply closed.
//! * Guest to host: a guest connection to CID 2, port P is connected to the
//!   Unix socket `<uds_path>_P`, which the host service must listen on.
//!
//! Clients may connect before the guest driver is up: they wait in the
//! listener's backlog until the device is activated.
//!
//! Only stream sockets exist (no SEQPACKET feature). All buffering is
//! bounded, per connection and per VM ([`MAX_BUFFERED`]); see `connection`
//! for the credit the guest gets and `muxer` for the caps.

mod connection;
#[cfg(feature = "fuzzing")]
pub(crate) mod fuzzing;
mod handler;
mod handshake;
mod muxer;
mod packet;
mod unix;

#[cfg(test)]
mod tests;

use std::io;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::worker::Worker;
use super::{read_config_bytes, ActivateError, Activation, VirtioDevice, VIRTIO_F_VERSION_1};
use handler::{Queues, VsockHandler};
use muxer::{Limits, Muxer};
use unix::BoundPath;

pub use connection::{BUF_ALLOC, FIRST_WINDOW, FLOOR, TO_GUEST_BUF};
pub use muxer::{HOST_PORT_FIRST, MAX_BUFFERED, MAX_CONNECTIONS, MAX_GUEST_CONNECTIONS, POOL};
/// Where a host process listens for the guest's connections to host `port`.
pub use unix::port_path as host_port_path;

/// virtio device ID of a socket device.
pub const DEVICE_TYPE: u32 = 19;
/// The host's CID (VMADDR_CID_HOST): where guest connections go and where
/// host-initiated ones come from.
pub const HOST_CID: u64 = 2;
/// Size of each of the three queues (rx, tx, event).
pub const QUEUE_SIZE: u16 = 256;

/// Why a vsock device could not be set up. `Vsock::new` returns these inside an
/// `io::Error`; its message is this one.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("guest CID {0} is reserved or out of range: use 3 to 4294967294")]
    InvalidCid(u64),
    #[error("cannot create the vsock socket {path}: directory {dir} does not exist", path = .path.display(), dir = .dir.display())]
    NoDirectory { path: PathBuf, dir: PathBuf },
    #[error("{} exists and is not a socket; not replacing it", .path.display())]
    NotASocket { path: PathBuf },
    #[error("another process is listening on {}", .path.display())]
    InUse { path: PathBuf },
    #[error("cannot remove the stale socket {}: {source}", .path.display())]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot listen on {}: {source}", .path.display())]
    Bind { path: PathBuf, source: io::Error },
}

impl From<SetupError> for io::Error {
    fn from(e: SetupError) -> io::Error {
        let kind = match &e {
            SetupError::InvalidCid(_) => io::ErrorKind::InvalidInput,
            SetupError::NoDirectory { .. } => io::ErrorKind::NotFound,
            SetupError::NotASocket { .. } | SetupError::InUse { .. } => {
                io::ErrorKind::AlreadyExists
            }
            SetupError::RemoveStale { source, .. } | SetupError::Bind { source, .. } => {
                source.kind()
            }
        };
        io::Error::new(kind, e)
    }
}

/// A virtio-vsock device whose host side is a Unix socket.
pub struct Vsock {
    // Dropped first: the thread stops before the listener and its file go.
    worker: Option<Worker>,
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    _socket_file: BoundPath,
    limits: Limits,
    /// What the connections hold in buffers, in all.
    held: Arc<AtomicUsize>,
}

impl Vsock {
    /// A device for the guest with CID `guest_cid`, listening on `uds_path`
    /// right away. A stale socket file there is replaced; a socket somebody
    /// listens on, or a file that is not a socket, is an error, as is a
    /// missing directory. The file is removed when the device is dropped.
    pub fn new(guest_cid: u64, uds_path: PathBuf) -> io::Result<Vsock> {
        // The CID travels in 64 bits but only 32 are used; 0-2 and
        // VMADDR_CID_ANY are reserved.
        if !(3..u64::from(u32::MAX)).contains(&guest_cid) {
            return Err(SetupError::InvalidCid(guest_cid).into());
        }
        let (listener, socket_file) = unix::bind_listener(&uds_path)?;
        Ok(Vsock {
            worker: None,
            guest_cid,
            uds_path,
            listener,
            _socket_file: socket_file,
            limits: Limits::DEFAULT,
            held: Arc::default(),
        })
    }

    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        DEVICE_TYPE
    }

    fn features(&self) -> u64 {
        VIRTIO_F_VERSION_1
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE; 3]
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {
        // The config space (guest_cid) is read-only.
    }

    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        self.reset();
        let interrupt = a.interrupt.clone();
        let handler = self.handler(a)?;
        let worker = Worker::spawn(crate::virtio::device_name(DEVICE_TYPE), handler, interrupt)
            .map_err(|e| ActivateError(format!("cannot start the vsock thread: {e}")))?;
        self.worker = Some(worker);
        Ok(())
    }

    fn reset(&mut self) {
        // Stops the thread; its connections close with it. Clients that
        // connect meanwhile wait in the listener's backlog.
        self.worker = None;
    }
}

impl Vsock {
    /// What `activate` runs on the device's thread.
    fn handler(&mut self, a: Activation) -> Result<VsockHandler, ActivateError> {
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            ..
        } = a;
        let [rx, tx, event]: [Queue; 3] = queues.try_into().map_err(|q: Vec<Queue>| {
            ActivateError(format!(
                "vsock has 3 queues, the transport gave {}",
                q.len()
            ))
        })?;
        let [rx_event, tx_event, _]: [EventFd; 3] =
            queue_events.try_into().map_err(|e: Vec<EventFd>| {
                ActivateError(format!(
                    "vsock has 3 queues, the transport gave {} notification fds",
                    e.len()
                ))
            })?;
        if !rx.ready() || !tx.ready() {
            return Err(ActivateError(
                "the driver did not make the vsock rx and tx queues ready".into(),
            ));
        }
        let listener = self
            .listener
            .try_clone()
            .map_err(|e| ActivateError(format!("cannot share the vsock listener: {e}")))?;
        // A new driver starts with no connections, so with nothing held.
        self.held = Arc::default();
        let muxer = Muxer::new(
            self.guest_cid,
            self.uds_path.clone(),
            listener,
            self.limits,
            self.held.clone(),
        );
        let queues = Queues {
            rx,
            tx,
            event,
            rx_event,
            tx_event,
        };
        Ok(VsockHandler::new(mem, queues, interrupt, muxer))
    }
}

#[cfg(feature = "fuzzing")]
impl crate::fuzzing::Serve for Vsock {
    fn serve(&mut self, a: Activation) -> Result<Box<dyn super::worker::Handler>, ActivateError> {
        Ok(Box::new(self.handler(a)?))
    }
}
