//! Serving the host's control connections: one thread per connection, one
//! request at a time on each.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio as ProcStdio};

use okvm_protocol::{
    write_message, FrameReader, Kind, ReadError, Request, RequestBody, Response, ResponseBody,
    Stdio, MAX_CAPTURE,
};

use crate::container;
use crate::reaper;
use crate::vsock;

/// The PATH a command gets when the request sets none (runc's default).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// What the caller must do after a request was answered.
pub enum After {
    Continue,
    PowerOff,
}

/// Serves requests on `conn` until the host closes it or asks for power-off.
pub fn serve(conn: File) -> After {
    let mut writer = match conn.try_clone() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("okvm-init: control connection: {e}");
            return After::Continue;
        }
    };
    let mut reader = FrameReader::new(conn);
    loop {
        let req: Request = match reader.read(Kind::Request) {
            Ok(r) => r,
            Err(ReadError::Closed) => return After::Continue,
            Err(e) => {
                // A peer that breaks the protocol gets its connection closed.
                eprintln!("okvm-init: control connection dropped: {e}");
                return After::Continue;
            }
        };
        let shutdown = matches!(req.body, RequestBody::Shutdown);
        let body = handle(req.container.as_deref(), req.body);
        let resp = Response { id: req.id, body };
        if let Err(e) = write_message(&mut writer, Kind::Response, &resp) {
            eprintln!("okvm-init: cannot answer request {}: {e}", req.id);
            return After::Continue;
        }
        if shutdown {
            return After::PowerOff;
        }
    }
}

fn handle(which: Option<&str>, body: RequestBody) -> ResponseBody {
    let result = match body {
        RequestBody::Mount { tag, target } => {
            mount_share(&tag, &target).map(|()| ResponseBody::Done)
        }
        RequestBody::Run {
            args,
            env,
            cwd,
            root,
            stdio,
        } => run(&args, &env, cwd.as_deref(), root.as_deref(), &stdio),
        RequestBody::Create { container, stdio } => container::create(*container, &stdio),
        RequestBody::Start => container::start(which),
        RequestBody::Network { interfaces } => {
            crate::network::configure(&interfaces).map(|()| ResponseBody::Done)
        }
        RequestBody::Wait { pid } => container::wait(which, pid),
        RequestBody::Exec { process, stdio } => container::exec(which, *process, &stdio),
        RequestBody::Signal { pid, signal, all } => container::signal(which, pid, signal, all),
        RequestBody::Resize { pid, rows, cols } => container::resize(which, pid, rows, cols),
        RequestBody::Processes => container::processes(which),
        RequestBody::Stats => crate::stats::read(container::process_count())
            .map(ResponseBody::Stats)
            .map_err(|e| e.to_string()),
        RequestBody::Shutdown => Ok(ResponseBody::Done),
    };
    result.unwrap_or_else(|message| ResponseBody::Error { message })
}

pub fn mount_share(tag: &str, target: &str) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("cannot create {target}: {e}"))?;
    nix::mount::mount(
        Some(tag),
        target,
        Some("virtiofs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount virtio-fs share {tag:?} on {target}: {e}"))
}

fn run(
    args: &[String],
    env: &[String],
    cwd: Option<&str>,
    root: Option<&str>,
    stdio: &Stdio,
) -> Result<ResponseBody, String> {
    let (program, rest) = args
        .split_first()
        .ok_or_else(|| "no command given".to_string())?;
    let mut cmd = Command::new(program);
    cmd.args(rest).env_clear();
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        cmd.env("PATH", DEFAULT_PATH);
    }
    for e in env {
        let (k, v) = e.split_once('=').unwrap_or((e, ""));
        cmd.env(k, v);
    }
    let dir = cwd.unwrap_or("/").to_string();
    if let Some(root) = root {
        let root = root.to_string();
        // SAFETY: chroot and chdir are async-signal-safe system calls; the
        // closure allocates nothing (its strings were made before the fork).
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::chroot(root.as_str())?;
                nix::unistd::chdir(dir.as_str())?;
                Ok(())
            });
        }
    } else {
        cmd.current_dir(&dir);
    }

    let capture = matches!(stdio, Stdio::Capture);
    match stdio {
        Stdio::Capture => {
            cmd.stdin(ProcStdio::null())
                .stdout(ProcStdio::piped())
                .stderr(ProcStdio::piped());
        }
        Stdio::Streams {
            stdin,
            stdout,
            stderr,
        } => {
            cmd.stdin(stream(*stdin)?)
                .stdout(stream(*stdout)?)
                .stderr(stream(*stderr)?);
        }
        Stdio::Terminal { .. } => {
            return Err("a terminal is for container processes (Create, Exec), not Run".into())
        }
    }
    let (mut child, exited) =
        reaper::spawn(&mut cmd).map_err(|e| format!("cannot run {program}: {e}"))?;
    // Our copies of the streams must go, or the host never sees their end.
    drop(cmd);
    let (out, err) = if capture {
        let out = child.stdout.take().map(collect);
        let err = child.stderr.take().map(collect);
        (join(out), join(err))
    } else {
        Default::default()
    };
    let exit = exited
        .recv()
        .map_err(|_| format!("lost track of {program}"))?;
    let truncated = out.1 || err.1;
    let (code, signal) = exit.code_and_signal();
    Ok(ResponseBody::Exited {
        code,
        signal,
        stdout: out.0,
        stderr: err.0,
        truncated,
    })
}

fn stream(port: Option<u32>) -> Result<ProcStdio, String> {
    match port {
        None => Ok(ProcStdio::null()),
        Some(p) => vsock::connect_host(p)
            .map(ProcStdio::from)
            .map_err(|e| format!("cannot connect to host port {p}: {e}")),
    }
}

type Collected = std::thread::JoinHandle<(Vec<u8>, bool)>;

/// Reads a pipe to its end on a thread, keeping the first MAX_CAPTURE bytes.
fn collect<R: Read + Send + 'static>(mut r: R) -> Collected {
    std::thread::spawn(move || {
        let mut kept = Vec::new();
        let mut truncated = false;
        let mut buf = [0u8; 8192];
        loop {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    let room = MAX_CAPTURE - kept.len();
                    kept.extend_from_slice(&buf[..n.min(room)]);
                    truncated |= n > room;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        (kept, truncated)
    })
}

fn join(h: Option<Collected>) -> (Vec<u8>, bool) {
    h.and_then(|h| h.join().ok()).unwrap_or_default()
}
