//! Fuzz targets for everything the guest feeds the host (docs/fuzzing.md):
//! the VMM's (`okvm_vmm::fuzzing`: transport registers, legacy ports, the
//! rng, net and vsock queues, vsock packets) and the control protocol's
//! frames as the host and okvm-init read them (here).
//!
//! `make fuzz` runs each under libFuzzer (`fuzz_targets/`, coverage-guided,
//! on stable Rust); `cargo test` replays `fuzz/corpus/<target>/`, the seeds
//! and every input that once crashed a target.

use okvm_protocol::{
    encode, Decoder, Event, FrameReader, Kind, Request, RequestBody, Response, ResponseBody, Stdio,
};
use okvm_vmm::fuzzing::{Chunked, Input, Seed, Target};
use okvm_vmm::ratelimit::quote;

/// Every target, by the name of its corpus directory and binary.
pub fn targets() -> Vec<Target> {
    let mut all = okvm_vmm::fuzzing::TARGETS.to_vec();
    all.push(("frames_host", frames_host));
    all.push(("frames_guest", frames_guest));
    all
}

/// The target called `name`.
pub fn target(name: &str) -> fn(&[u8]) {
    targets()
        .into_iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| f)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
}

/// Frames as the host reads them from okvm-init: its announcement (an
/// Event), then answers, whose guest-chosen text reaches logs quoted. The
/// first byte sets how the stream is split.
pub fn frames_host(data: &[u8]) {
    let mut input = Input::new(data);
    let chunk = usize::from(input.u8()) * 64 + 1;
    let mut reader = FrameReader::new(Chunked::new(input.bytes(usize::MAX), chunk));
    while let Ok(frame) = reader.next_frame() {
        assert!(frame.payload.len() <= okvm_protocol::MAX_PAYLOAD);
        if let Ok(Event::Ready { version, .. }) = frame.parse::<Event>(Kind::Event) {
            unquoted_is_impossible(&version);
        }
        if let Ok(resp) = frame.parse::<Response>(Kind::Response) {
            if let ResponseBody::Error { message } = &resp.body {
                unquoted_is_impossible(message);
            }
            unquoted_is_impossible(&format!("{:?}", resp.body));
        }
    }
}

/// Quoted guest text is one line of bounded length.
fn unquoted_is_impossible(text: &str) {
    let q = quote(text).to_string();
    assert!(!q.chars().any(char::is_control), "{q:?}");
    assert!(q.chars().count() <= 512 * 10 + 1, "{} characters", q.len());
}

/// Requests as okvm-init reads them from the host; each one that decodes
/// encodes back to itself.
pub fn frames_guest(data: &[u8]) {
    let mut input = Input::new(data);
    let chunk = usize::from(input.u8()) * 64 + 1;
    let mut reader = FrameReader::new(Chunked::new(input.bytes(usize::MAX), chunk));
    while let Ok(req) = reader.read::<Request>(Kind::Request) {
        let mut d = Decoder::new();
        d.feed(&encode(Kind::Request, &req));
        let again = d
            .next_frame()
            .ok()
            .flatten()
            .map(|f| f.parse::<Request>(Kind::Request));
        assert!(
            matches!(&again, Some(Ok(r)) if *r == req),
            "{req:?} came back as {again:?}"
        );
    }
}

/// Frames of several messages, after the byte that sets the split.
fn frames(msgs: &[(Kind, serde_json::Value)]) -> Vec<u8> {
    let mut b = vec![0u8];
    for (kind, m) in msgs {
        b.extend(encode(*kind, m));
    }
    b
}

fn json<T: serde::Serialize>(msg: &T) -> serde_json::Value {
    serde_json::to_value(msg).expect("a message")
}

/// Valid inputs for each target: (target, seed name, bytes).
pub fn seeds() -> Vec<Seed> {
    let mut all = okvm_vmm::fuzzing::seeds();
    let answer = |id, body| (Kind::Response, json(&Response { id, body }));
    let host = frames(&[
        (
            Kind::Event,
            json(&Event::Ready {
                uptime_ms: 312,
                version: "0.1.0".into(),
            }),
        ),
        answer(1, ResponseBody::Created { pid: 7 }),
        answer(
            2,
            ResponseBody::Exited {
                code: Some(3),
                signal: None,
                stdout: b"out\n".to_vec(),
                stderr: vec![],
                truncated: false,
            },
        ),
        answer(
            3,
            ResponseBody::Error {
                message: "no such\nfile \u{1b}[31m".into(),
            },
        ),
        answer(4, ResponseBody::Pids { pids: vec![1, 9] }),
    ]);
    all.push(("frames_host", "ready-then-answers", host));
    let process: oci_spec::runtime::Process = serde_json::from_str(
        r#"{"args":["sh"],"cwd":"/","env":["PATH=/bin"],"user":{"uid":0,"gid":0}}"#,
    )
    .expect("a process");
    let request = |id, container: Option<&str>, body| {
        let container = container.map(str::to_string);
        (
            Kind::Request,
            json(&Request {
                id,
                container,
                body,
            }),
        )
    };
    let guest = frames(&[
        request(
            1,
            None,
            RequestBody::Mount {
                tag: "share".into(),
                target: "/mnt".into(),
            },
        ),
        request(
            2,
            Some("c2"),
            RequestBody::Exec {
                process: Box::new(process),
                stdio: Stdio::Terminal {
                    port: 20000,
                    rows: 24,
                    cols: 80,
                },
            },
        ),
        request(
            3,
            None,
            RequestBody::Signal {
                pid: None,
                signal: 15,
                all: true,
            },
        ),
    ]);
    all.push(("frames_guest", "requests", guest));
    all
}
