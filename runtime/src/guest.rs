//! The host's side of the okvm-init protocol, over the VMM's hybrid vsock
//! Unix socket.
//!
//! Host -> guest: connect to the VM's vsock socket, send `CONNECT <port>\n`,
//! get `OK <n>\n`. Guest -> host: the VMM connects to `<socket>_<port>`, so a
//! host process expecting the guest listens there.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use okvm_protocol::{
    write_message, Event, FrameReader, Kind, ReadError, Request, RequestBody, Response,
    ResponseBody,
};
use okvm_vmm::ratelimit::quote;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the guest through {path}: {err}")]
    Connect { path: PathBuf, err: io::Error },
    #[error("the guest refused vsock port {port} ({reply:?})")]
    Refused { port: u32, reply: String },
    // The causes are part of the message, not a source: anyhow's `{:#}`
    // would print them twice.
    #[error("guest control connection: {0}")]
    Read(ReadError),
    #[error("guest control connection: {0}")]
    Io(io::Error),
    #[error("the guest answered request {got} while request {want} was pending")]
    OutOfOrder { want: u64, got: u64 },
}

impl From<ReadError> for Error {
    fn from(e: ReadError) -> Self {
        Error::Read(e)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e)
    }
}

/// Opens a stream to guest vsock `port` through the VMM's socket at `uds`.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream, Error> {
    let cerr = |err| Error::Connect {
        path: uds.into(),
        err,
    };
    let mut s = UnixStream::connect(uds).map_err(cerr)?;
    // A paused or wedged VM never answers: say so rather than hang.
    s.set_read_timeout(Some(CONNECT_TIMEOUT)).map_err(cerr)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(cerr)?;
    // The reply line is read a byte at a time: whatever follows it is the
    // guest's, and must stay in the socket for the caller.
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.len() < 64 {
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => reply.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(cerr(e)),
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    if !reply.starts_with("OK ") {
        return Err(Error::Refused { port, reply });
    }
    s.set_read_timeout(None).map_err(cerr)?;
    Ok(s)
}

/// An answer the caller has no use for, as the text of its error: quoted,
/// since the guest chose it (it may be as large as a frame).
pub fn unexpected(request: &str, body: &ResponseBody) -> String {
    format!(
        "unexpected answer from the guest to {request}: {}",
        quote(&format!("{body:?}"))
    )
}

/// How long the VMM may take to accept a connection to a guest port.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Where a container's guest side is reached: its VM's vsock socket, and its
/// name in that guest (None: the VM's first container, its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub uds: PathBuf,
    pub container: Option<String>,
}

impl Address {
    /// A new control connection addressed to the container.
    pub fn connect(&self) -> Result<Client, Error> {
        let client = Client::connect(&self.uds)?;
        Ok(match &self.container {
            Some(id) => client.for_container(id),
            None => client,
        })
    }
}

/// Where the VMM connects when the guest dials host `port` (the device's own
/// rule, so both sides agree).
pub use okvm_vmm::virtio::vsock::host_port_path;

/// A control connection to okvm-init.
pub struct Client {
    writer: UnixStream,
    reader: FrameReader<io::BufReader<UnixStream>>,
    next_id: u64,
    container: Option<String>,
}

impl Client {
    fn new(stream: UnixStream) -> Result<Self, Error> {
        let writer = stream.try_clone()?;
        Ok(Client {
            writer,
            reader: FrameReader::new(io::BufReader::new(stream)),
            next_id: 1,
            container: None,
        })
    }

    /// Addresses this connection's requests to container `id` of the guest
    /// (a pod's VM holds several; by default, the first one).
    pub fn for_container(mut self, id: &str) -> Self {
        self.container = Some(id.to_string());
        self
    }

    /// Opens a new control connection to okvm-init's port.
    pub fn connect(uds: &Path) -> Result<Self, Error> {
        Self::new(connect(uds, okvm_protocol::CONTROL_PORT)?)
    }

    /// Waits on `listener` (bound at `host_port_path(uds, CONTROL_PORT)` before
    /// the VM started) for okvm-init's announcement; the connection then
    /// serves requests like any other.
    pub fn accept_ready(listener: &UnixListener) -> Result<(Self, Event), Error> {
        let (stream, _) = listener.accept()?;
        Self::announced(stream)
    }

    /// Reads okvm-init's announcement on a connection it opened to the host.
    pub fn announced(stream: UnixStream) -> Result<(Self, Event), Error> {
        stream.set_nonblocking(false)?;
        let mut client = Self::new(stream)?;
        let ready = client.reader.read::<Event>(Kind::Event)?;
        Ok((client, ready))
    }

    /// Sends one request and waits for its answer.
    pub fn request(&mut self, body: RequestBody) -> Result<ResponseBody, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            id,
            body,
            container: self.container.clone(),
        };
        write_message(&mut self.writer, Kind::Request, &req)?;
        let mut resp: Response = self.reader.read(Kind::Response)?;
        // The guest words its errors, and they reach logs and users.
        if let ResponseBody::Error { message } = &mut resp.body {
            *message = quote(message).to_string();
        }
        if resp.id != id {
            return Err(Error::OutOfOrder {
                want: id,
                got: resp.id,
            });
        }
        Ok(resp.body)
    }

    /// Bounds how long any one answer may take (the socket option is shared
    /// with the reading half).
    pub fn set_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.writer.set_read_timeout(t)
    }
}
