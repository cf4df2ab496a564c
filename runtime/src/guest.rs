//! The host's side of the okvm-init protocol, over the VMM's hybrid vsock
//! Unix socket.
//!
//! Host -> guest: connect to the VM's vsock socket, send `CONNECT <port>\n`,
//! get `OK <n>\n`. Guest -> host: the VMM connects to `<socket>_<port>`, so a
//! host process expecting the guest listens there.
//!
//! The guest is hostile (it may never answer, or answer a byte at a time),
//! so every exchange has a deadline, and [`Op::deadline`] is the one table of
//! them: a connection, each request, the announcement after boot, the
//! process's stdio streams. A deadline bounds the whole exchange, not each
//! read, so a guest that trickles its answer does not stretch it. Only the
//! waits that last as long as a guest process legitimately may (`Wait`,
//! `Run`) are unbounded; they end with the VM, whose end closes the socket.

use std::io::{self, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use okvm_protocol::{
    write_message, Event, FrameReader, Kind, ReadError, Request, RequestBody, Response,
    ResponseBody,
};
use serde::{Deserialize, Serialize};

/// `OKVM_BOOT_TIMEOUT` (seconds) replaces [`BOOT_TIMEOUT`].
pub const ENV_BOOT_TIMEOUT: &str = "OKVM_BOOT_TIMEOUT";
/// How long the guest may take to boot and prepare the container process.
/// Generous: a nested or throttled host is slow, and a hang still ends.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);
/// What okvm-init answers from memory or /proc, or by a signal or a byte
/// sent: milliseconds on any host. The rest allows for a pod's guest that is
/// busy creating another container (okvm-init holds its table of containers
/// meanwhile) on a slow, emulated host.
const QUICK: Duration = Duration::from_secs(10);
/// Preparing a process: a container stage is spawned, enters the
/// container's namespaces and resolves the command over virtio-fs.
const PREPARE: Duration = Duration::from_secs(30);

/// The guest's part in an exchange with the host, each with its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    /// Accepting a connection to one of its ports (the `CONNECT` handshake).
    Connect,
    /// okvm-init's announcement once the guest booted.
    Ready,
    /// Opening a process's stdio streams to the host.
    Streams,
    Mount,
    Run,
    Network,
    Create,
    Start,
    Wait,
    Exec,
    Signal,
    Resize,
    Processes,
    Stats,
    Shutdown,
}

impl Op {
    /// The request's part.
    pub fn of(body: &RequestBody) -> Op {
        match body {
            RequestBody::Mount { .. } => Op::Mount,
            RequestBody::Run { .. } => Op::Run,
            RequestBody::Create { .. } => Op::Create,
            RequestBody::Start => Op::Start,
            RequestBody::Network { .. } => Op::Network,
            RequestBody::Wait { .. } => Op::Wait,
            RequestBody::Exec { .. } => Op::Exec,
            RequestBody::Signal { .. } => Op::Signal,
            RequestBody::Resize { .. } => Op::Resize,
            RequestBody::Processes => Op::Processes,
            RequestBody::Stats => Op::Stats,
            RequestBody::Shutdown => Op::Shutdown,
        }
    }

    /// How long the guest may take; None: as long as the guest process the
    /// exchange is about runs (it ends with the VM at the latest).
    pub fn deadline(self) -> Option<Duration> {
        match self {
            Op::Ready | Op::Network | Op::Create => Some(boot_timeout()),
            Op::Streams | Op::Exec | Op::Mount => Some(PREPARE),
            Op::Connect
            | Op::Start
            | Op::Signal
            | Op::Resize
            | Op::Processes
            | Op::Stats
            | Op::Shutdown => Some(QUICK),
            Op::Wait | Op::Run => None,
        }
    }

    /// What the guest failed to do, for messages. Requests are named by the
    /// verb a user typed (`okvm kill` sends `Signal`).
    fn what(self) -> &'static str {
        match self {
            Op::Connect => "accept a connection",
            Op::Ready => "announce itself",
            Op::Streams => "open the process's stdio streams",
            Op::Network => "configure its network",
            Op::Create => "prepare the container",
            Op::Mount => "answer `mount`",
            Op::Run => "answer `run`",
            Op::Start => "answer `start`",
            Op::Wait => "answer `wait`",
            Op::Exec => "answer `exec`",
            Op::Signal => "answer `kill`",
            Op::Resize => "answer `resize`",
            Op::Processes => "answer `ps`",
            Op::Stats => "answer `stats`",
            Op::Shutdown => "answer `shutdown`",
        }
    }
}

/// The boot deadline: [`ENV_BOOT_TIMEOUT`] or [`BOOT_TIMEOUT`].
pub fn boot_timeout() -> Duration {
    std::env::var(ENV_BOOT_TIMEOUT)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(BOOT_TIMEOUT)
}

/// A deadline passed: the guest did not do its part in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("the guest did not {} within {}", .op.what(), seconds(.limit))]
pub struct TimedOut {
    pub op: Op,
    pub limit: Duration,
}

fn seconds(d: &Duration) -> String {
    if d.subsec_millis() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// The deadline that passed, if that is why `e` happened (whichever layer of
/// the library reported it): the shim answers containerd with
/// DeadlineExceeded then.
pub fn timed_out(e: &anyhow::Error) -> Option<&TimedOut> {
    e.chain().find_map(|c| {
        if let Some(t) = c.downcast_ref::<TimedOut>() {
            return Some(t);
        }
        match (
            c.downcast_ref::<Error>(),
            c.downcast_ref::<crate::relay::Error>(),
        ) {
            (Some(Error::Deadline(t)), _) | (_, Some(crate::relay::Error::NoStream(t))) => Some(t),
            _ => None,
        }
    })
}
use okvm_vmm::ratelimit::quote;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot reach the guest through {path}: {err}")]
    Connect { path: PathBuf, err: io::Error },
    #[error("the guest refused vsock port {port} ({reply:?})")]
    Refused { port: u32, reply: String },
    #[error(transparent)]
    Deadline(TimedOut),
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

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// When one exchange must be over.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    op: Op,
    limit: Option<Duration>,
    at: Option<Instant>,
}

impl Deadline {
    /// Starts now: the op's deadline, or `cap` if that is sooner.
    pub(crate) fn start(op: Op, cap: Option<Duration>) -> Deadline {
        let limit = match (op.deadline(), cap) {
            (Some(d), Some(c)) => Some(d.min(c)),
            (d, c) => d.or(c),
        };
        Deadline {
            op,
            limit,
            at: limit.map(|l| Instant::now() + l),
        }
    }

    pub(crate) fn timed_out(&self) -> TimedOut {
        TimedOut {
            op: self.op,
            limit: self.limit.unwrap_or_default(),
        }
    }

    /// Whether it has passed.
    pub(crate) fn is_over(&self) -> bool {
        self.at.is_some_and(|at| Instant::now() >= at)
    }

    fn passed(&self) -> Error {
        Error::Deadline(self.timed_out())
    }

    /// The time left (None: unbounded), or the error once there is none.
    fn left(&self) -> Result<Option<Duration>, Error> {
        let Some(at) = self.at else { return Ok(None) };
        let left = at.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(self.passed());
        }
        Ok(Some(left))
    }

    /// An I/O error, or the deadline's when the I/O ran out of time.
    fn io(&self, e: io::Error) -> Error {
        if self.at.is_some() && is_timeout(&e) {
            self.passed()
        } else {
            Error::Io(e)
        }
    }

    fn read(&self, e: ReadError) -> Error {
        match e {
            ReadError::Io(e) => self.io(e),
            e => Error::Read(e),
        }
    }
}

/// A stream whose every read is bounded by the time left until `until`, so
/// that a whole answer, however it is split, arrives by then.
struct Timed {
    stream: UnixStream,
    until: Option<Instant>,
}

impl Read for Timed {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = match self.until {
            None => None,
            Some(at) => match at.checked_duration_since(Instant::now()) {
                Some(left) if !left.is_zero() => Some(left),
                _ => return Err(io::ErrorKind::TimedOut.into()),
            },
        };
        self.stream.set_read_timeout(left)?;
        self.stream.read(buf)
    }
}

/// Opens a stream to guest vsock `port` through the VMM's socket at `uds`.
pub fn connect(uds: &Path, port: u32) -> Result<UnixStream, Error> {
    connect_within(uds, port, &Deadline::start(Op::Connect, None))
}

fn connect_within(uds: &Path, port: u32, deadline: &Deadline) -> Result<UnixStream, Error> {
    let cerr = |err| Error::Connect {
        path: uds.into(),
        err,
    };
    let mut s = UnixStream::connect(uds).map_err(cerr)?;
    s.set_write_timeout(deadline.left()?).map_err(cerr)?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())
        .map_err(|e| deadline.io(e))?;
    // The reply line is read a byte at a time: whatever follows it is the
    // guest's, and must stay in the socket for the caller.
    let mut reply = Vec::new();
    let mut byte = [0u8; 1];
    while reply.len() < 64 {
        s.set_read_timeout(deadline.left()?).map_err(cerr)?;
        match s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) if byte[0] == b'\n' => break,
            Ok(_) => reply.push(byte[0]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(deadline.io(e)),
        }
    }
    let reply = String::from_utf8_lossy(&reply).into_owned();
    if !reply.starts_with("OK ") {
        return Err(Error::Refused { port, reply });
    }
    s.set_read_timeout(None).map_err(cerr)?;
    s.set_write_timeout(None).map_err(cerr)?;
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

/// Where a container's guest side is reached: its VM's vsock socket, and its
/// name in that guest (None: the VM's first container, its own).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub uds: PathBuf,
    pub container: Option<String>,
}

impl Address {
    /// A new control connection addressed to the container, for several
    /// requests (each with its own deadline).
    pub fn connect(&self) -> Result<Client, Error> {
        let client = Client::connect(&self.uds)?;
        Ok(self.address(client))
    }

    /// One request on a connection of its own: the request's deadline
    /// covers connecting as well.
    pub fn call(&self, body: RequestBody) -> Result<ResponseBody, Error> {
        let deadline = Deadline::start(Op::of(&body), None);
        let stream = connect_within(&self.uds, okvm_protocol::CONTROL_PORT, &deadline)?;
        self.address(Client::new(stream)?).exchange(body, &deadline)
    }

    fn address(&self, client: Client) -> Client {
        match &self.container {
            Some(id) => client.for_container(id),
            None => client,
        }
    }
}

/// Where the VMM connects when the guest dials host `port` (the device's own
/// rule, so both sides agree).
pub use okvm_vmm::virtio::vsock::host_port_path;

/// A control connection to okvm-init. After an error the connection may be
/// out of step with the guest (a late answer may still come): drop it.
pub struct Client {
    writer: UnixStream,
    reader: FrameReader<io::BufReader<Timed>>,
    next_id: u64,
    container: Option<String>,
    cap: Option<Duration>,
}

impl Client {
    fn new(stream: UnixStream) -> Result<Self, Error> {
        let writer = stream.try_clone()?;
        Ok(Client {
            writer,
            reader: FrameReader::new(io::BufReader::new(Timed {
                stream,
                until: None,
            })),
            next_id: 1,
            container: None,
            cap: None,
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
        let deadline = Deadline::start(Op::Ready, None);
        let ready = client.read_within(Kind::Event, &deadline)?;
        Ok((client, ready))
    }

    /// Sends one request and waits for its answer, within the request's
    /// deadline.
    pub fn request(&mut self, body: RequestBody) -> Result<ResponseBody, Error> {
        let deadline = Deadline::start(Op::of(&body), self.cap);
        self.exchange(body, &deadline)
    }

    fn exchange(&mut self, body: RequestBody, deadline: &Deadline) -> Result<ResponseBody, Error> {
        let id = self.next_id;
        self.next_id += 1;
        let req = Request {
            id,
            body,
            container: self.container.clone(),
        };
        // A guest that reads nothing fills the socket's buffer: the write is
        // bounded as well.
        self.writer.set_write_timeout(deadline.left()?)?;
        write_message(&mut self.writer, Kind::Request, &req).map_err(|e| deadline.io(e))?;
        let mut resp: Response = self.read_within(Kind::Response, deadline)?;
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

    fn read_within<T: for<'de> Deserialize<'de>>(
        &mut self,
        kind: Kind,
        deadline: &Deadline,
    ) -> Result<T, Error> {
        self.reader.get_mut().get_mut().until = deadline.at;
        let read = self.reader.read(kind);
        self.reader.get_mut().get_mut().until = None;
        read.map_err(|e| deadline.read(e))
    }

    /// Caps every answer on this connection at `t`, the unbounded ones
    /// included: for callers that must never wait long, such as tests.
    pub fn set_timeout(&mut self, t: Option<Duration>) {
        self.cap = t;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use okvm_protocol::Decoder;

    /// A VM whose guest accepts one connection and then does `guest` with it.
    fn vm(
        guest: impl FnOnce(UnixStream) + Send + 'static,
    ) -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<()>) {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        let listener = UnixListener::bind(&uds).unwrap();
        let t = std::thread::spawn(move || {
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let mut line = [0u8; b"CONNECT 1024\n".len()];
            if s.read_exact(&mut line).is_ok() && s.write_all(b"OK 1\n").is_ok() {
                guest(s);
            }
        });
        (dir, uds, t)
    }

    /// A guest that reads whatever the host sends and answers nothing.
    fn mute_guest() -> (tempfile::TempDir, PathBuf, std::thread::JoinHandle<()>) {
        vm(|mut s| {
            let mut sink = Vec::new();
            let _ = s.read_to_end(&mut sink);
        })
    }

    #[test]
    fn every_request_but_the_lasting_waits_has_a_deadline() {
        let bodies = [
            RequestBody::Start,
            RequestBody::Signal {
                pid: None,
                signal: 15,
                all: false,
            },
            RequestBody::Processes,
            RequestBody::Stats,
            RequestBody::Shutdown,
            RequestBody::Resize {
                pid: None,
                rows: 1,
                cols: 1,
            },
            RequestBody::Network { interfaces: vec![] },
            RequestBody::Mount {
                tag: "t".into(),
                target: "/t".into(),
            },
        ];
        for b in bodies {
            assert!(Op::of(&b).deadline().is_some(), "{b:?}");
        }
        for op in [Op::Connect, Op::Ready, Op::Streams, Op::Create, Op::Exec] {
            assert!(op.deadline().is_some(), "{op:?}");
        }
        assert_eq!(Op::of(&RequestBody::Wait { pid: None }).deadline(), None);
    }

    #[test]
    fn the_message_names_the_verb_and_the_limit() {
        let t = TimedOut {
            op: Op::Signal,
            limit: Duration::from_secs(10),
        };
        assert_eq!(t.to_string(), "the guest did not answer `kill` within 10 s");
        let t = TimedOut {
            op: Op::Processes,
            limit: Duration::from_millis(300),
        };
        assert_eq!(t.to_string(), "the guest did not answer `ps` within 0.3 s");
        let e = anyhow::Error::from(Error::Deadline(t.clone())).context("cannot list");
        assert_eq!(timed_out(&e), Some(&t));
        assert_eq!(timed_out(&anyhow::anyhow!("other")), None);
    }

    #[test]
    fn a_guest_that_never_answers_runs_into_the_deadline() {
        let (_dir, uds, guest) = mute_guest();
        let mut c = Client::connect(&uds).unwrap();
        c.set_timeout(Some(Duration::from_millis(300)));
        let t0 = Instant::now();
        let e = c.request(RequestBody::Wait { pid: None }).unwrap_err();
        assert!(t0.elapsed() >= Duration::from_millis(300));
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert_eq!(
            e.to_string(),
            "the guest did not answer `wait` within 0.3 s"
        );
        drop(c);
        guest.join().unwrap();
    }

    #[test]
    fn a_guest_that_trickles_its_answer_runs_into_the_deadline() {
        let (_dir, uds, guest) = vm(|mut s| {
            let mut d = Decoder::new();
            let mut buf = [0u8; 512];
            let req = loop {
                let n = s.read(&mut buf).unwrap();
                d.feed(&buf[..n]);
                if let Some(f) = d.next_frame().unwrap() {
                    break f.parse::<Request>(Kind::Request).unwrap();
                }
            };
            let answer = okvm_protocol::encode(
                Kind::Response,
                &Response {
                    id: req.id,
                    body: ResponseBody::Pids { pids: vec![1] },
                },
            );
            // Each byte well within a read timeout, the whole far beyond
            // the deadline.
            for b in answer {
                if s.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let mut c = Client::connect(&uds).unwrap();
        c.set_timeout(Some(Duration::from_millis(400)));
        let t0 = Instant::now();
        let e = c.request(RequestBody::Processes).unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
        assert!(matches!(e, Error::Deadline(_)), "{e}");
        drop(c);
        guest.join().unwrap();
    }

    #[test]
    fn a_call_bounds_the_connection_too() {
        let dir = tempfile::tempdir().unwrap();
        let uds = dir.path().join("vsock");
        // Accepted by the kernel's backlog, never answered with `OK`.
        let _listener = UnixListener::bind(&uds).unwrap();
        let stream = connect_within(
            &uds,
            okvm_protocol::CONTROL_PORT,
            &Deadline::start(Op::Signal, Some(Duration::from_millis(200))),
        );
        match stream {
            Err(Error::Deadline(t)) => assert_eq!(t.op, Op::Signal),
            other => panic!("{:?}", other.map(drop)),
        }
    }
}
