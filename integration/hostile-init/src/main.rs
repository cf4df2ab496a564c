//! okvm-hostile-init: PID 1 of a hostile guest, for the end-to-end tests in
//! integration/tests/hostile_guest. It speaks okvm-init's protocol (the host
//! cannot tell it apart: it announces itself and answers on vsock port 1024)
//! but does not keep its side of it, as a guest whose kernel the attacker
//! owns may not. It is never part of okvm: `make` builds it for the test
//! host only, and a test packs it into an initramfs of its own (`okvm
//! initramfs --init`) and hands that to okvm through `OKVM_INITRD`.
//!
//! What it does with a container comes from the container's command line
//! (`process.args` of its `Create`), so one image serves every test:
//!
//! - `hostile mute-after-create`: prepares the container (its stdio streams
//!   are opened), then never answers anything about it again;
//! - `hostile mute-after-start`: the same, from `Start` on;
//! - `hostile exit CODE SIGNAL`: once started, reports that the process
//!   ended with exit CODE or by SIGNAL (`-` for none), whatever the numbers;
//! - anything else: answers like okvm-init with made-up values, and the
//!   process never ends (a pod's sandbox beside a hostile container).

use std::fs::File;
use std::sync::{Condvar, Mutex, MutexGuard};

use okvm_init::vsock;
use okvm_protocol::{
    write_message, Event, FrameReader, GuestStats, Kind, Request, RequestBody, Response,
    ResponseBody, Stdio, CONTROL_PORT,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    MuteAfterCreate,
    MuteAfterStart,
    Exit {
        code: Option<i32>,
        signal: Option<i32>,
    },
    Obedient,
}

impl Script {
    fn of(args: &[String]) -> Script {
        let num = |s: Option<&String>| s.and_then(|s| s.parse().ok());
        match args.get(1).map(String::as_str) {
            Some("mute-after-create") => Script::MuteAfterCreate,
            Some("mute-after-start") => Script::MuteAfterStart,
            Some("exit") => Script::Exit {
                code: num(args.get(2)),
                signal: num(args.get(3)),
            },
            _ => Script::Obedient,
        }
    }
}

struct Container {
    id: String,
    script: Script,
    started: bool,
    /// The host's streams, held open until the process "ends".
    streams: Vec<File>,
}

/// The containers in the order they were created (requests that name none
/// are about the first).
static CONTAINERS: Mutex<Vec<Container>> = Mutex::new(Vec::new());
/// Signalled whenever a container starts.
static STARTED: Condvar = Condvar::new();

fn containers() -> MutexGuard<'static, Vec<Container>> {
    CONTAINERS.lock().unwrap_or_else(|e| e.into_inner())
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("okvm-hostile-init: a test guest's PID 1, nothing else");
        std::process::exit(2);
    }
    println!("okvm-hostile-init: up");
    match vsock::Listener::bind(CONTROL_PORT) {
        Ok(listener) => {
            std::thread::spawn(move || loop {
                match listener.accept() {
                    Ok(conn) => {
                        std::thread::spawn(move || serve(conn));
                    }
                    Err(e) => eprintln!("okvm-hostile-init: accept: {e}"),
                }
            });
        }
        Err(e) => eprintln!("okvm-hostile-init: cannot listen: {e}"),
    }
    std::thread::spawn(|| match vsock::connect_host(CONTROL_PORT) {
        Ok(mut conn) => {
            let ready = Event::Ready {
                uptime_ms: 0,
                version: "hostile".into(),
            };
            if write_message(&mut conn, Kind::Event, &ready).is_ok() {
                serve(conn);
            }
        }
        Err(e) => eprintln!("okvm-hostile-init: cannot announce itself: {e}"),
    });
    // PID 1 must never end: the kernel would panic.
    loop {
        std::thread::park();
    }
}

/// Reads requests until the host hangs up; some are never answered.
fn serve(conn: File) {
    let Ok(mut writer) = conn.try_clone() else {
        return;
    };
    let mut reader = FrameReader::new(conn);
    while let Ok(req) = reader.read::<Request>(Kind::Request) {
        let which = req.container.as_deref().unwrap_or("-");
        let start = matches!(req.body, RequestBody::Start);
        let answer = answer(req.container.as_deref(), req.body);
        eprintln!(
            "okvm-hostile-init: request {} for {which}: {}",
            req.id,
            if answer.is_some() {
                "answered"
            } else {
                "not answered"
            }
        );
        if let Some(body) = answer {
            let resp = Response { id: req.id, body };
            if write_message(&mut writer, Kind::Response, &resp).is_err() {
                return;
            }
            // Only now may the process "end": `okvm start` must have its
            // answer before the sandbox hears of the end and exits.
            if start {
                started(req.container.as_deref());
            }
        }
    }
}

fn started(which: Option<&str>) {
    let mut all = containers();
    if let Some(i) = position(&all, which) {
        all[i].started = true;
        STARTED.notify_all();
    }
}

/// The container a request is about (the first one when it names none).
fn position(all: &[Container], which: Option<&str>) -> Option<usize> {
    match which {
        None => (!all.is_empty()).then_some(0),
        Some(id) => all.iter().position(|c| c.id == id),
    }
}

fn error(message: &str) -> Option<ResponseBody> {
    Some(ResponseBody::Error {
        message: message.into(),
    })
}

fn answer(which: Option<&str>, body: RequestBody) -> Option<ResponseBody> {
    match body {
        RequestBody::Network { .. } | RequestBody::Shutdown => return Some(ResponseBody::Done),
        RequestBody::Create { container, stdio } => {
            let args = container.process.args().clone().unwrap_or_default();
            let mut all = containers();
            let pid = 100 + all.len() as u32;
            all.push(Container {
                id: container.id,
                script: Script::of(&args),
                started: false,
                streams: open_streams(&stdio),
            });
            return Some(ResponseBody::Created { pid });
        }
        _ => {}
    }
    let mut all = containers();
    let Some(i) = position(&all, which) else {
        return error("no such container");
    };
    let script = all[i].script;
    if script == Script::MuteAfterCreate || (script == Script::MuteAfterStart && all[i].started) {
        return None;
    }
    match body {
        // Marked started once the answer is out (`serve`).
        RequestBody::Start => Some(ResponseBody::Done),
        RequestBody::Wait { pid: None } => {
            let Script::Exit { code, signal } = script else {
                return None;
            };
            while !all[i].started {
                all = STARTED.wait(all).unwrap_or_else(|e| e.into_inner());
            }
            // The process "ended": its streams end first, as okvm-init's do.
            all[i].streams.clear();
            Some(ResponseBody::Exited {
                code,
                signal,
                stdout: Vec::new(),
                stderr: Vec::new(),
                truncated: false,
            })
        }
        RequestBody::Signal { .. } | RequestBody::Resize { .. } => Some(ResponseBody::Done),
        RequestBody::Processes => Some(ResponseBody::Pids { pids: vec![1] }),
        RequestBody::Stats => Some(ResponseBody::Stats(GuestStats::default())),
        _ => error("not in this guest"),
    }
}

/// Connects the streams the host listens for, as okvm-init does while it
/// prepares a process.
fn open_streams(stdio: &Stdio) -> Vec<File> {
    let ports = match *stdio {
        Stdio::Streams {
            stdin,
            stdout,
            stderr,
        } => [stdin, stdout, stderr].into_iter().flatten().collect(),
        Stdio::Terminal { port, .. } => vec![port],
        Stdio::Capture => Vec::new(),
    };
    ports
        .into_iter()
        .filter_map(|p| match vsock::connect_host(p) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("okvm-hostile-init: cannot open host port {p}: {e}");
                None
            }
        })
        .collect()
}
