//! Running an OCI container inside the guest: the requests `Create`, `Start`,
//! `Wait`, `Exec`, `Signal`, `Resize` and `Processes` (and the pid count of `Stats`).
//!
//! Like runc, okvm-init never prepares a container process inside itself (it
//! is multi-threaded PID 1): it re-executes itself as a container stage
//! ([`stage`]) that builds the root, applies the process and execs on the
//! start byte. The container process is PID 1 of a pid namespace of its own;
//! exec'd processes join it. A guest may hold several containers (a pod's
//! VM): each request names its container, or means the first one created.

pub mod channel;
pub mod config;
mod launch;
pub mod mounts;
pub mod paths;
pub mod process;
pub mod procs;
pub mod pty;
mod rootfs;
pub mod stage;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::Receiver;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use okvm_protocol::{ContainerSpec, ResponseBody, Stdio};

use self::config::{StageConfig, TermSize};
use self::launch::{terminal_size, PidNamespace, Starter};
use crate::reaper::Exit;

/// Where okvm-init mounts each virtio-fs share a container uses (a guest
/// path the container never sees).
const SHARES: &str = "/run/okvm/shares";

/// How long a container's end may wait for the guest's file systems to be
/// synced before it is reported all the same.
const SYNC_LIMIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A process okvm-init started in the container: its end, once known, and
/// the master of its terminal, if it has one.
struct Tracked {
    exit: Mutex<Option<Exit>>,
    ended: Condvar,
    terminal: Option<OwnedFd>,
}

impl Tracked {
    fn new(terminal: Option<OwnedFd>) -> Arc<Tracked> {
        Arc::new(Tracked {
            exit: Mutex::new(None),
            ended: Condvar::new(),
            terminal,
        })
    }

    fn wait(&self) -> Exit {
        let mut exit = lock(&self.exit);
        loop {
            if let Some(e) = *exit {
                return e;
            }
            exit = self.ended.wait(exit).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn has_ended(&self) -> bool {
        lock(&self.exit).is_some()
    }
}

struct Container {
    id: String,
    /// The container process (guest pid).
    pid: u32,
    /// Its pid namespace, which every process of the container shares.
    pid_ns: PathBuf,
    /// Kept for ever: a Wait after the end still gets the status.
    init: Arc<Tracked>,
    /// Until Start: the stage waiting for its start byte.
    starter: Mutex<Option<Starter>>,
    /// Exec'd processes, until their status was waited for once.
    execs: Mutex<HashMap<u32, Arc<Tracked>>>,
}

impl Container {
    /// The process `pid` names (the container process when None), and
    /// whether it is an exec'd one.
    fn tracked(&self, pid: Option<u32>) -> Result<(Arc<Tracked>, Option<u32>), String> {
        match pid {
            None => Ok((self.init.clone(), None)),
            Some(p) if p == self.pid => Ok((self.init.clone(), None)),
            Some(p) => lock(&self.execs)
                .get(&p)
                .map(|t| (t.clone(), Some(p)))
                .ok_or_else(|| format!("process {p} was not started in container {:?}", self.id)),
        }
    }
}

/// The guest's containers, in the order they were created.
static CONTAINERS: Mutex<Vec<Arc<Container>>> = Mutex::new(Vec::new());

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Container `which` (the first one created when None).
fn current(which: Option<&str>) -> Result<Arc<Container>, String> {
    let all = lock(&CONTAINERS);
    match which {
        None => all
            .first()
            .cloned()
            .ok_or_else(|| "no container was created in this guest".to_string()),
        Some(id) => all
            .iter()
            .find(|c| c.id == id)
            .cloned()
            .ok_or_else(|| format!("there is no container {id:?} in this guest")),
    }
}

/// Create: prepares the container process up to its exec.
pub fn create(spec: ContainerSpec, stdio: &Stdio) -> Result<ResponseBody, String> {
    // Held throughout, so requests about the container wait for it to exist.
    let mut all = lock(&CONTAINERS);
    if all.iter().any(|c| c.id == spec.id) {
        return Err(format!("this guest already has container {:?}", spec.id));
    }
    let id = spec.id.clone();
    note_ignored(&spec.process, &id);
    let share = mount_share(&spec.share_tag)?;
    let config = StageConfig::Create {
        share,
        container: Box::new(spec),
        terminal: terminal_size(stdio),
    };
    // On any error below, dropping `p` closes the stage's socket: it sees
    // no start byte and exits.
    let p = launch::prepare(&config, PidNamespace::New, stdio, &id)?;
    let pid_ns =
        procs::pid_namespace(p.pid).map_err(|e| format!("the container process is gone: {e}"))?;
    let init = Tracked::new(p.terminal);
    // The host reads the container's files once it hears of the exit: they
    // must have reached it through virtio-fs by then.
    watch(init.clone(), p.exited, true)?;
    all.push(Arc::new(Container {
        id,
        pid: p.pid,
        pid_ns,
        init,
        starter: Mutex::new(Some(p.starter)),
        execs: Mutex::default(),
    }));
    Ok(ResponseBody::Created { pid: p.pid })
}

/// Start: lets the created container process exec.
pub fn start(which: Option<&str>) -> Result<ResponseBody, String> {
    let c = current(which)?;
    let starter = lock(&c.starter)
        .take()
        .ok_or_else(|| format!("container {:?} was already started", c.id))?;
    starter.start()?;
    Ok(ResponseBody::Done)
}

/// Wait: the status of the container process (or of an exec'd one).
pub fn wait(which: Option<&str>, pid: Option<u32>) -> Result<ResponseBody, String> {
    let c = current(which)?;
    let (tracked, exec_pid) = c.tracked(pid)?;
    let exit = tracked.wait();
    if let Some(p) = exec_pid {
        lock(&c.execs).remove(&p);
    }
    let (code, signal) = exit.code_and_signal();
    Ok(ResponseBody::Exited {
        code,
        signal,
        stdout: Vec::new(),
        stderr: Vec::new(),
        truncated: false,
    })
}

/// Exec: starts another process in the running container.
pub fn exec(
    which: Option<&str>,
    process: oci_spec::runtime::Process,
    stdio: &Stdio,
) -> Result<ResponseBody, String> {
    let c = current(which)?;
    if lock(&c.starter).is_some() {
        return Err(format!(
            "container {:?} is not running (created, not started)",
            c.id
        ));
    }
    if c.init.has_ended() {
        return Err(format!(
            "container {:?} is not running (its process exited)",
            c.id
        ));
    }
    note_ignored(&process, &c.id);
    let config = StageConfig::Exec {
        container_pid: c.pid,
        process: Box::new(process),
        terminal: terminal_size(stdio),
    };
    let label = format!("{} exec", c.id);
    let p = launch::prepare(&config, PidNamespace::Of(c.pid), stdio, &label)?;
    let tracked = Tracked::new(p.terminal);
    watch(tracked.clone(), p.exited, false)?;
    lock(&c.execs).insert(p.pid, tracked);
    if let Err(e) = p.starter.start() {
        // Nobody will wait for a process that never ran.
        lock(&c.execs).remove(&p.pid);
        return Err(e);
    }
    Ok(ResponseBody::Started { pid: p.pid })
}

/// Signal: to the container process, one of its processes, or all of them.
pub fn signal(
    which: Option<&str>,
    pid: Option<u32>,
    signal: i32,
    all: bool,
) -> Result<ResponseBody, String> {
    let c = current(which)?;
    let fail = |p: u32, e| format!("cannot send signal {signal} to process {p}: {e}");
    if all {
        for p in procs::members(&c.pid_ns) {
            // One that ended meanwhile is no failure.
            match procs::kill(p, signal) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(fail(p, e)),
            }
        }
        return Ok(ResponseBody::Done);
    }
    let target = pid.unwrap_or(c.pid);
    if target == c.pid && c.init.has_ended() {
        return Err(format!(
            "container {:?} is not running (its process exited)",
            c.id
        ));
    }
    if target != c.pid && !procs::is_member(target, &c.pid_ns) {
        return Err(format!("process {target} is not in container {:?}", c.id));
    }
    procs::kill(target, signal).map_err(|e| fail(target, e))?;
    Ok(ResponseBody::Done)
}

/// Resize: the terminal of the container process (or an exec'd one).
pub fn resize(
    which: Option<&str>,
    pid: Option<u32>,
    rows: u16,
    cols: u16,
) -> Result<ResponseBody, String> {
    let c = current(which)?;
    let (tracked, _) = c.tracked(pid)?;
    let master = tracked
        .terminal
        .as_ref()
        .ok_or_else(|| "that process has no terminal".to_string())?;
    pty::set_size(master.as_fd(), TermSize { rows, cols })
        .map_err(|e| format!("cannot resize the terminal: {e}"))?;
    Ok(ResponseBody::Done)
}

/// Processes: the guest pids of the container's processes.
pub fn processes(which: Option<&str>) -> Result<ResponseBody, String> {
    let c = current(which)?;
    Ok(ResponseBody::Pids {
        pids: procs::members(&c.pid_ns),
    })
}

/// How many processes the guest's containers have: the sets `Processes`
/// answers, and none before a container was created (`Stats` is about the
/// whole guest).
pub fn process_count() -> u64 {
    lock(&CONTAINERS)
        .iter()
        .map(|c| procs::members(&c.pid_ns).len() as u64)
        .sum()
}

/// Records the process's end when the reaper reports it (the reaper keeps
/// an exit that comes before anyone waits; so does `Tracked`).
fn watch(tracked: Arc<Tracked>, exited: Receiver<Exit>, sync_first: bool) -> Result<(), String> {
    std::thread::Builder::new()
        .name("container-exit".into())
        .spawn(move || {
            let Ok(exit) = exited.recv() else { return };
            if sync_first {
                sync_within(SYNC_LIMIT);
            }
            *lock(&tracked.exit) = Some(exit);
            tracked.ended.notify_all();
        })
        .map(drop)
        .map_err(|e| format!("cannot start a thread: {e}"))
}

/// Syncs the guest's file systems, so that what the container wrote is on the
/// host before its end is reported, but waits for that at most `limit`: a
/// sync that never returns (a wedged virtio-fs, as after the guest kernel's
/// use-after-free oops in a virtio-fs kworker, docs/architecture.md) must not
/// keep the container running in the eyes of its engine for ever.
fn sync_within(limit: std::time::Duration) {
    let (done, synced) = std::sync::mpsc::channel();
    let started = std::thread::Builder::new()
        .name("sync".into())
        .spawn(move || {
            nix::unistd::sync();
            let _ = done.send(());
        });
    if started.is_ok() && synced.recv_timeout(limit).is_err() {
        eprintln!(
            "okvm-init: syncing the file systems took over {} s; reporting the container's end without it",
            limit.as_secs()
        );
    }
}

/// Mounts the virtio-fs share `tag` at `SHARES/<tag>`, unless it already is.
fn mount_share(tag: &str) -> Result<PathBuf, String> {
    if tag.is_empty() || tag.contains('/') || tag == "." || tag == ".." {
        return Err(format!("invalid share tag {tag:?}"));
    }
    let dir = Path::new(SHARES).join(tag);
    if !is_mount_point(&dir) {
        crate::server::mount_share(tag, &dir.to_string_lossy())?;
    }
    Ok(dir)
}

fn is_mount_point(dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(dir), std::fs::metadata(dir.join(".."))) {
        (Ok(d), Ok(parent)) => d.dev() != parent.dev(),
        _ => false,
    }
}

/// What okvm cannot enforce inside the guest gets one console line (the
/// host side documents it).
fn note_ignored(process: &oci_spec::runtime::Process, label: &str) {
    if let Some(p) = process.apparmor_profile() {
        eprintln!(
            "okvm-init: {label}: ignoring AppArmor profile {p:?} (not enforced in the guest)"
        );
    }
    if let Some(l) = process.selinux_label() {
        eprintln!("okvm-init: {label}: ignoring SELinux label {l:?} (not enforced in the guest)");
    }
}
