//! The host <-> okvm-init control protocol, shared by both sides (the guest's
//! okvm-init and the host's runtime, shim and tests all use this crate).
//!
//! Each message travels in one frame: a fixed 8-byte header (magic "OK",
//! protocol version, frame kind, payload length, big-endian) followed by a JSON
//! payload. JSON keeps the messages readable in logs; the header lets a reader
//! reject a peer speaking another version, or garbage, before parsing anything.
//! Bulk stdio does not use frames: it has its own raw vsock streams.
//!
//! Everything decoded here may come from a compromised guest: the decoder bounds
//! frame sizes and returns errors, never panics.

use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 2] = *b"OK";
/// Bumped on any incompatible change to the messages below.
pub const VERSION: u8 = 3;
pub const HEADER_LEN: usize = 8;
/// Larger frames are refused: no legitimate message comes near it.
pub const MAX_PAYLOAD: usize = 1 << 20;

/// The vsock port okvm-init listens on for control connections, and the host
/// port it connects to once at start-up to announce itself ([`Event::Ready`]).
pub const CONTROL_PORT: u32 = 1024;
/// The host's vsock address (VMADDR_CID_HOST).
pub const HOST_CID: u32 = 2;
/// Captured output beyond this is cut off (and `truncated` set), which keeps
/// every response frame far below [`MAX_PAYLOAD`]. Bulk output uses streams.
pub const MAX_CAPTURE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Request = 1,
    Response = 2,
    Event = 3,
}

/// Host -> guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub body: RequestBody,
    /// Which of the guest's containers the request is about (a pod's VM holds
    /// several); None: the first one created. `Create` names its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum RequestBody {
    /// Mount the virtio-fs share `tag` at `target` (created if missing).
    Mount { tag: String, target: String },
    /// Run a command and answer with its exit status once it ends.
    Run {
        args: Vec<String>,
        env: Vec<String>,
        cwd: Option<String>,
        /// Directory to chroot into first (e.g. a mounted share), if any.
        #[serde(default)]
        root: Option<String>,
        #[serde(default)]
        stdio: Stdio,
    },
    /// Prepare the container process up to the point of exec (runc's
    /// `create`): build its root from the share, apply the OCI process, and
    /// wait for [`RequestBody::Start`]. Answered with [`ResponseBody::Created`],
    /// or an error such as an executable that is not in the image.
    Create {
        container: Box<ContainerSpec>,
        stdio: Stdio,
    },
    /// Let the created container process exec.
    Start,
    /// Configure the guest's network before any container runs: loopback up,
    /// and each NIC (found by its MAC) with its MTU, addresses and routes.
    /// Answered with [`ResponseBody::Done`].
    Network {
        interfaces: Vec<cni_free_net::InterfaceConfig>,
    },
    /// Answer with [`ResponseBody::Exited`] once process `pid` ends (the
    /// container process when `pid` is None). Several waits may be pending.
    Wait { pid: Option<u32> },
    /// Start another process in the running container (`okvm exec`), answered
    /// with [`ResponseBody::Started`]; its end is learnt with [`RequestBody::Wait`].
    Exec {
        process: Box<oci_spec::runtime::Process>,
        stdio: Stdio,
    },
    /// Deliver `signal` to process `pid` (the container process when None),
    /// or with `all` to every process of the container.
    Signal {
        pid: Option<u32>,
        signal: i32,
        #[serde(default)]
        all: bool,
    },
    /// The terminal of process `pid` (the container's when None) changed size.
    Resize {
        pid: Option<u32>,
        rows: u16,
        cols: u16,
    },
    /// The container's processes, answered with [`ResponseBody::Pids`].
    Processes,
    /// The guest's resource usage, answered with [`ResponseBody::Stats`].
    Stats,
    /// Power the guest off.
    Shutdown,
}

/// What okvm-init needs to build the container: the parts of the bundle's
/// config.json that apply inside the guest, with host paths already turned
/// into paths inside the sandbox's virtio-fs share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    /// The container id (for messages).
    pub id: String,
    /// The virtio-fs tag of the sandbox's share.
    pub share_tag: String,
    /// The rootfs, relative to the share's root.
    pub rootfs: String,
    /// `root.readonly`.
    #[serde(default)]
    pub readonly: bool,
    pub hostname: Option<String>,
    /// The spec's mounts, in order. A bind mount's `source` is relative to the
    /// share's root (the host side put the host path there).
    #[serde(default)]
    pub mounts: Vec<oci_spec::runtime::Mount>,
    pub process: oci_spec::runtime::Process,
    /// `linux.maskedPaths` and `linux.readonlyPaths`.
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    /// `linux.sysctl`, applied in the guest.
    #[serde(default)]
    pub sysctl: std::collections::BTreeMap<String, String>,
}

/// Where a command's stdin, stdout and stderr go.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Stdio {
    /// stdin empty; stdout and stderr collected (up to [`MAX_CAPTURE`] each)
    /// and returned in the response.
    #[default]
    Capture,
    /// Raw byte streams: for each port given, okvm-init connects to that host
    /// vsock port and wires the stream to the command (no framing, no copy
    /// through the control connection). A stream left out is /dev/null.
    Streams {
        stdin: Option<u32>,
        stdout: Option<u32>,
        stderr: Option<u32>,
    },
    /// A terminal: the container stage opens a pty on the container's own
    /// devpts (as runc does), makes the slave the process's controlling
    /// terminal and stdio, and okvm-init carries the master's bytes both ways
    /// over one stream to host `port`.
    Terminal { port: u32, rows: u16, cols: u16 },
}

/// Guest -> host, answering the request with the same id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub body: ResponseBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "result")]
pub enum ResponseBody {
    Exited {
        /// Exit code, or None when killed by a signal.
        code: Option<i32>,
        signal: Option<i32>,
        /// Captured output ([`Stdio::Capture`] only).
        #[serde(default)]
        stdout: Vec<u8>,
        #[serde(default)]
        stderr: Vec<u8>,
        /// Some captured output was cut off at [`MAX_CAPTURE`].
        #[serde(default)]
        truncated: bool,
    },
    Done,
    /// The container process is prepared and waits for Start.
    Created {
        pid: u32,
    },
    /// An exec'd process runs.
    Started {
        pid: u32,
    },
    /// The container's processes (guest pids).
    Pids {
        pids: Vec<u32>,
    },
    Stats(GuestStats),
    Error {
        message: String,
    },
}

/// The guest's resource usage. The VM is the container's cgroup, so memory
/// and CPU figures are the whole guest's (okvm-init and the kernel included),
/// as runc's are the whole cgroup's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestStats {
    /// `MemTotal`: the RAM the guest kernel manages, a little less than the
    /// VM's memory size (the kernel's own image and reservations are not in it).
    pub memory_total_bytes: u64,
    /// `MemTotal - MemAvailable`: what the guest could not hand out without
    /// swapping (there is no swap), so reclaimable page cache is not counted.
    pub memory_used_bytes: u64,
    /// `Cached`.
    pub memory_cache_bytes: u64,
    /// CPU time spent on the guest's work over all vCPUs, in nanoseconds:
    /// user + nice + system + irq + softirq + steal.
    pub cpu_usage_ns: u64,
    /// user + nice.
    pub cpu_user_ns: u64,
    /// system + irq + softirq.
    pub cpu_system_ns: u64,
    /// How many processes the container has (the set `Processes` answers).
    pub pids: u64,
}

/// Guest -> host, unprompted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "event")]
pub enum Event {
    /// okvm-init is up; `uptime_ms` is the kernel's uptime then.
    Ready { uptime_ms: u64, version: String },
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("bad frame magic {0:02x?} (not an okvm-init peer)")]
    BadMagic([u8; 2]),
    #[error("peer speaks protocol version {0}, this side speaks {VERSION}")]
    Version(u8),
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    #[error("frame of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    #[error("expected a {expected:?} frame, got {got:?}")]
    WrongKind { expected: Kind, got: Kind },
    #[error("malformed message: {0}")]
    Payload(String),
}

/// A decoded frame: its kind and raw JSON payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

impl Frame {
    pub fn parse<T: for<'de> Deserialize<'de>>(&self, expected: Kind) -> Result<T, Error> {
        if self.kind != expected {
            return Err(Error::WrongKind {
                expected,
                got: self.kind,
            });
        }
        serde_json::from_slice(&self.payload).map_err(|e| Error::Payload(e.to_string()))
    }
}

/// Encodes one message as a frame.
pub fn encode<T: Serialize>(kind: Kind, msg: &T) -> Vec<u8> {
    // Our own message types always serialize.
    let payload = serde_json::to_vec(msg).unwrap_or_default();
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(kind as u8);
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(&payload);
    out
}

/// Writes one message as a frame.
pub fn write_message<W: std::io::Write, T: Serialize>(
    w: &mut W,
    kind: Kind,
    msg: &T,
) -> std::io::Result<()> {
    w.write_all(&encode(kind, msg))?;
    w.flush()
}

/// Why reading a message from a stream failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("the peer closed the connection")]
    Closed,
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Protocol(#[from] Error),
}

/// Blocking reads of whole frames from a stream.
pub struct FrameReader<R> {
    inner: R,
    decoder: Decoder,
}

impl<R: std::io::Read> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            decoder: Decoder::new(),
        }
    }

    /// The stream frames are read from (to bound how long the next read may
    /// take, say); bytes it already handed over stay buffered here.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The next frame; `ReadError::Closed` at a clean end of stream.
    pub fn next_frame(&mut self) -> Result<Frame, ReadError> {
        let mut buf = [0u8; 16 * 1024];
        loop {
            if let Some(f) = self.decoder.next_frame()? {
                return Ok(f);
            }
            let n = match self.inner.read(&mut buf) {
                Ok(0) => return Err(ReadError::Closed),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.into()),
            };
            self.decoder.feed(&buf[..n]);
        }
    }

    /// The next frame, which must be of `kind`, parsed as `T`.
    pub fn read<T: for<'de> Deserialize<'de>>(&mut self, kind: Kind) -> Result<T, ReadError> {
        Ok(self.next_frame()?.parse(kind)?)
    }
}

/// Reassembles frames from a byte stream fed in arbitrary pieces.
#[derive(Default)]
pub struct Decoder {
    buf: Vec<u8>,
}

impl Decoder {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete frame, `Ok(None)` if more bytes are needed. After an
    /// error the stream is unusable: the caller drops the connection.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let magic = [self.buf[0], self.buf[1]];
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        if self.buf[2] != VERSION {
            return Err(Error::Version(self.buf[2]));
        }
        let kind = match self.buf[3] {
            1 => Kind::Request,
            2 => Kind::Response,
            3 => Kind::Event,
            k => return Err(Error::UnknownKind(k)),
        };
        let len = u32::from_be_bytes([self.buf[4], self.buf[5], self.buf[6], self.buf[7]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(Error::TooLarge(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
        self.buf.drain(..HEADER_LEN + len);
        Ok(Some(Frame { kind, payload }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run_request() -> Request {
        Request {
            id: 7,
            container: None,
            body: RequestBody::Run {
                args: vec!["sh".into(), "-c".into(), "exit 3".into()],
                env: vec!["PATH=/bin".into()],
                cwd: Some("/".into()),
                root: None,
                stdio: Stdio::Streams {
                    stdin: Some(5000),
                    stdout: Some(5001),
                    stderr: None,
                },
            },
        }
    }

    #[test]
    fn messages_round_trip_through_frames() {
        let mut d = Decoder::new();
        d.feed(&encode(Kind::Request, &run_request()));
        let resp = Response {
            id: 7,
            body: ResponseBody::Exited {
                code: Some(3),
                signal: None,
                stdout: b"out".to_vec(),
                stderr: vec![],
                truncated: false,
            },
        };
        d.feed(&encode(Kind::Response, &resp));
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.parse::<Request>(Kind::Request).unwrap(), run_request());
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.parse::<Response>(Kind::Response).unwrap(), resp);
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn payload_is_readable_json() {
        let frame = encode(
            Kind::Event,
            &Event::Ready {
                uptime_ms: 5,
                version: "0.1.0".into(),
            },
        );
        let text = std::str::from_utf8(&frame[HEADER_LEN..]).unwrap();
        assert_eq!(text, r#"{"event":"ready","uptime_ms":5,"version":"0.1.0"}"#);
    }

    #[test]
    fn bad_headers_are_typed_errors() {
        let mut good = encode(Kind::Request, &run_request());
        for (i, v, want) in [
            (0, b'X', Error::BadMagic([b'X', b'K'])),
            (2, 9, Error::Version(9)),
            (3, 0, Error::UnknownKind(0)),
        ] {
            let mut f = good.clone();
            f[i] = v;
            let mut d = Decoder::new();
            d.feed(&f);
            assert_eq!(d.next_frame(), Err(want));
        }
        good[4..8].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_be_bytes());
        let mut d = Decoder::new();
        d.feed(&good[..HEADER_LEN]);
        assert_eq!(d.next_frame(), Err(Error::TooLarge(MAX_PAYLOAD + 1)));
    }

    #[test]
    fn wrong_kind_and_bad_json_are_errors() {
        let mut d = Decoder::new();
        d.feed(&encode(
            Kind::Event,
            &Event::Ready {
                uptime_ms: 1,
                version: String::new(),
            },
        ));
        let f = d.next_frame().unwrap().unwrap();
        assert!(matches!(
            f.parse::<Request>(Kind::Request),
            Err(Error::WrongKind { .. })
        ));
        let junk = Frame {
            kind: Kind::Request,
            payload: b"{\"id\":".to_vec(),
        };
        assert!(matches!(
            junk.parse::<Request>(Kind::Request),
            Err(Error::Payload(_))
        ));
    }

    #[test]
    fn frame_reader_reads_whole_messages_then_reports_the_end() {
        let mut bytes = Vec::new();
        write_message(&mut bytes, Kind::Request, &run_request()).unwrap();
        let mut r = FrameReader::new(&bytes[..]);
        assert_eq!(r.read::<Request>(Kind::Request).unwrap(), run_request());
        assert!(matches!(r.next_frame(), Err(ReadError::Closed)));
        let mut r = FrameReader::new(&b"OK\x01\x01\x00"[..]);
        assert!(matches!(r.next_frame(), Err(ReadError::Closed)));
    }

    fn stats() -> GuestStats {
        GuestStats {
            memory_total_bytes: 250 << 20,
            memory_used_bytes: 30 << 20,
            memory_cache_bytes: 12 << 20,
            cpu_usage_ns: 1_230_000_000,
            cpu_user_ns: 1_000_000_000,
            cpu_system_ns: 200_000_000,
            pids: 2,
        }
    }

    #[test]
    fn a_request_names_its_container_only_when_it_has_one() {
        let first = Request {
            id: 2,
            body: RequestBody::Processes,
            container: None,
        };
        let json = serde_json::to_string(&first).unwrap();
        assert!(!json.contains("container"), "{json}");
        let back: Request = serde_json::from_str(&json).unwrap();
        assert_eq!(back, first);
        let named: Request =
            serde_json::from_str(r#"{"id":3,"body":{"op":"processes"},"container":"c2"}"#).unwrap();
        assert_eq!(named.container.as_deref(), Some("c2"));
    }

    #[test]
    fn stats_round_trip_through_frames() {
        let req = Request {
            id: 4,
            body: RequestBody::Stats,
            container: Some("c2".into()),
        };
        let resp = Response {
            id: 4,
            body: ResponseBody::Stats(stats()),
        };
        let mut d = Decoder::new();
        d.feed(&encode(Kind::Request, &req));
        d.feed(&encode(Kind::Response, &resp));
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.parse::<Request>(Kind::Request).unwrap(), req);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.parse::<Response>(Kind::Response).unwrap(), resp);
    }

    #[test]
    fn stats_are_tagged_like_the_other_messages() {
        let req = serde_json::to_string(&RequestBody::Stats).unwrap();
        assert_eq!(req, r#"{"op":"stats"}"#);
        let v = serde_json::to_value(ResponseBody::Stats(stats())).unwrap();
        assert_eq!(v["result"], "stats");
        assert_eq!(v["memory_total_bytes"], 250u64 << 20);
        assert_eq!(v["pids"], 2);
    }

    #[test]
    fn stats_missing_a_field_or_with_a_negative_one_are_errors() {
        for bad in [
            r#"{"id":1,"body":{"result":"stats"}}"#,
            r#"{"id":1,"body":{"result":"stats","memory_total_bytes":1,"memory_used_bytes":1,"memory_cache_bytes":1,"cpu_usage_ns":1,"cpu_user_ns":1,"cpu_system_ns":-1,"pids":1}}"#,
        ] {
            let f = Frame {
                kind: Kind::Response,
                payload: bad.as_bytes().to_vec(),
            };
            assert!(
                matches!(f.parse::<Response>(Kind::Response), Err(Error::Payload(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn a_peer_of_the_previous_version_is_refused() {
        let mut f = encode(
            Kind::Request,
            &Request {
                id: 1,
                body: RequestBody::Stats,
                container: None,
            },
        );
        f[2] = VERSION - 1;
        let mut d = Decoder::new();
        d.feed(&f);
        assert_eq!(d.next_frame(), Err(Error::Version(VERSION - 1)));
    }

    #[test]
    fn older_requests_without_new_fields_still_parse() {
        let r: Request = serde_json::from_str(
            r#"{"id":1,"body":{"op":"run","args":["true"],"env":[],"cwd":null}}"#,
        )
        .unwrap();
        assert!(matches!(
            r.body,
            RequestBody::Run {
                stdio: Stdio::Capture,
                root: None,
                ..
            }
        ));
    }

    fn any_stats() -> impl Strategy<Value = GuestStats> {
        any::<[u64; 7]>().prop_map(|v| GuestStats {
            memory_total_bytes: v[0],
            memory_used_bytes: v[1],
            memory_cache_bytes: v[2],
            cpu_usage_ns: v[3],
            cpu_user_ns: v[4],
            cpu_system_ns: v[5],
            pids: v[6],
        })
    }

    proptest! {
        #[test]
        fn frames_survive_any_split(cuts in proptest::collection::vec(0usize..700, 0..10), stats in any_stats()) {
            let stats = Response { id: 3, body: ResponseBody::Stats(stats) };
            let mut stream = encode(Kind::Request, &run_request());
            stream.extend(encode(Kind::Response, &stats));
            stream.extend(encode(Kind::Event, &Event::Ready { uptime_ms: 9, version: "v".into() }));
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (stream.len() + 1)).collect();
            cuts.sort();
            let mut d = Decoder::new();
            let mut frames = Vec::new();
            let mut prev = 0;
            for c in cuts.into_iter().chain([stream.len()]) {
                d.feed(&stream[prev..c]);
                prev = c;
                while let Some(f) = d.next_frame().unwrap() {
                    frames.push(f);
                }
            }
            prop_assert_eq!(frames.len(), 3);
            prop_assert_eq!(frames[0].parse::<Request>(Kind::Request).unwrap(), run_request());
            prop_assert_eq!(frames[1].parse::<Response>(Kind::Response).unwrap(), stats);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let mut d = Decoder::new();
            d.feed(&bytes);
            while let Ok(Some(f)) = d.next_frame() {
                let _ = f.parse::<Request>(Kind::Request);
                let _ = f.parse::<Response>(Kind::Response);
                let _ = f.parse::<Event>(Kind::Event);
            }
        }

        #[test]
        fn valid_header_with_random_payload_never_panics(payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut f = vec![b'O', b'K', VERSION, 1];
            f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.extend_from_slice(&payload);
            let mut d = Decoder::new();
            d.feed(&f);
            let frame = d.next_frame().unwrap().unwrap();
            let _ = frame.parse::<Request>(Kind::Request);
            let frame = Frame { kind: Kind::Response, payload: frame.payload };
            let _ = frame.parse::<Response>(Kind::Response);
        }

        #[test]
        fn damaged_stats_answers_never_panic(stats in any_stats(), cut in any::<usize>(), at in any::<usize>(), byte in any::<u8>()) {
            let mut payload = serde_json::to_vec(&Response { id: 1, body: ResponseBody::Stats(stats) }).unwrap();
            let at = at % payload.len();
            payload[at] = byte;
            payload.truncate(cut % (payload.len() + 1));
            let frame = Frame { kind: Kind::Response, payload };
            let _ = frame.parse::<Response>(Kind::Response);
        }
    }
}
