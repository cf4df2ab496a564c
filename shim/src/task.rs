//! The Task service: containerd's view of the containers of one sandbox, each
//! run by the okvm runtime library.
//!
//! Each container's init process is followed by its sandbox process (the
//! VMM), each exec by an exec proxy; both are children of the shim and exit
//! as their guest process does, so the shim learns exit statuses by reaping
//! them (containerd-shim's reaper, through its exit monitor).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use containerd_shim::api::Empty;
use containerd_shim::asynchronous::monitor::monitor_subscribe;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim::event::Event;
use containerd_shim::monitor::{Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageField};
use containerd_shim::protos::ttrpc;
use containerd_shim::protos::ttrpc::r#async::TtrpcContext;
use containerd_shim::{api, Task};
use okvm::cli::Context;
use okvm::state::Action;
use tokio::sync::watch;

use crate::errors::{Result, ShimError};
use crate::stdio::{Fifos as Stdio, Wiring};

const STATS_TYPE_URL: &str = "io.containerd.cgroups.v1.Metrics";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    fn name(self) -> &'static str {
        match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }

    fn proto(self) -> api::Status {
        match self {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Paused => api::Status::PAUSED,
            Status::Stopped => api::Status::STOPPED,
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Exit {
    status: u32,
    at: SystemTime,
}

/// A process containerd knows: a container's init, or an exec.
struct Process {
    /// The host pid of its helper (0: an exec not started yet).
    pid: u32,
    guest_pid: u32,
    stdio: Stdio,
    wiring: Option<Wiring>,
    status: Status,
    exit: watch::Sender<Option<Exit>>,
    /// An exec's OCI process, as JSON.
    spec: Vec<u8>,
}

impl Process {
    fn new(stdio: Stdio) -> Process {
        Process {
            pid: 0,
            guest_pid: 0,
            stdio,
            wiring: None,
            status: Status::Created,
            exit: watch::channel(None).0,
            spec: Vec::new(),
        }
    }
}

struct Container {
    bundle: PathBuf,
    init: Process,
    execs: HashMap<String, Process>,
}

impl Container {
    fn process(&mut self, id: &str, exec_id: &str) -> Result<&mut Process> {
        if exec_id.is_empty() {
            return Ok(&mut self.init);
        }
        self.execs
            .get_mut(exec_id)
            .ok_or_else(|| ShimError::ExecNotFound {
                container_id: id.into(),
                exec_id: exec_id.into(),
            })
    }
}

#[derive(Default)]
struct Tables {
    containers: HashMap<String, Container>,
    /// Helper pid → (container id, exec id; empty for init).
    pids: HashMap<u32, (String, String)>,
    /// Exits reaped before their pid was registered (a helper that died at
    /// once), with when they came, so that old ones can be dropped.
    early: HashMap<u32, (i32, Instant)>,
}

#[derive(Clone)]
pub struct TaskService {
    ctx: Context,
    namespace: String,
    exit: Arc<ExitSignal>,
    publisher: Arc<RemotePublisher>,
    tables: Arc<Mutex<Tables>>,
}

fn blocking_err(e: tokio::task::JoinError) -> ShimError {
    ShimError::Internal(format!("a worker thread failed: {e}"))
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(blocking_err)?
}

fn timestamp(t: SystemTime) -> MessageField<Timestamp> {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    MessageField::some(Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
        ..Default::default()
    })
}

fn fifos(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Stdio {
    Stdio {
        stdin: stdin.into(),
        stdout: stdout.into(),
        stderr: stderr.into(),
        terminal,
    }
}

/// Unmounts the container's rootfs the shim mounted in the bundle, if any.
pub fn unmount_rootfs(bundle: &Path) {
    okvm::sandbox::share::detach(&bundle.join("rootfs"));
}

impl TaskService {
    pub async fn new(
        ctx: Context,
        namespace: String,
        exit: Arc<ExitSignal>,
        publisher: RemotePublisher,
    ) -> TaskService {
        if let Err(e) = okvm::state::create_root(&ctx.root) {
            log::warn!("{e}");
        }
        let service = TaskService {
            ctx,
            namespace,
            exit,
            publisher: Arc::new(publisher),
            tables: Arc::default(),
        };
        match monitor_subscribe(Topic::Pid).await {
            Ok(mut sub) => {
                let s = service.clone();
                tokio::spawn(async move {
                    while let Some(e) = sub.rx.recv().await {
                        if let Subject::Pid(pid) = e.subject {
                            s.reaped(pid as u32, e.exit_code).await;
                        }
                    }
                });
            }
            Err(e) => log::error!("cannot follow process exits: {e}"),
        }
        service
    }

    async fn publish(&self, event: impl Event + 'static) {
        let topic = event.topic();
        if let Err(e) = self
            .publisher
            .publish(Default::default(), &topic, &self.namespace, Box::new(event))
            .await
        {
            log::warn!("cannot publish {topic}: {e}");
        }
    }

    /// Runs `f` on container `id` under the tables' lock.
    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T>) -> Result<T> {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let c = t
            .containers
            .get_mut(id)
            .ok_or_else(|| ShimError::ContainerNotFound { id: id.into() })?;
        f(c)
    }

    /// Notes that helper `pid` belongs to (id, exec_id), and handles its
    /// exit if it came already.
    async fn register(&self, pid: u32, id: &str, exec_id: &str) {
        let early = {
            let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            t.pids.insert(pid, (id.into(), exec_id.into()));
            t.early.remove(&pid)
        };
        if let Some((code, _)) = early {
            self.reaped(pid, code).await;
        }
    }

    /// A helper process ended: its process in the guest did, with `code`
    /// (128+n for a signal, as the reaper reports it). Always 0-255: the
    /// helpers end as `okvm::sandbox::Ending` says, whatever the guest
    /// reported, never by a signal beyond 64.
    async fn reaped(&self, pid: u32, code: i32) {
        let found = {
            let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            match t.pids.remove(&pid) {
                Some(owner) => Some(owner),
                None => {
                    t.early
                        .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(300));
                    t.early.insert(pid, (code, Instant::now()));
                    None
                }
            }
        };
        let Some((id, exec_id)) = found else { return };
        let exit = Exit {
            status: code as u32,
            at: SystemTime::now(),
        };
        let io = self
            .with(&id, |c| {
                let p = c.process(&id, &exec_id)?;
                p.status = Status::Stopped;
                Ok(p.wiring.as_ref().map(|w| w.copies.clone()))
            })
            .ok()
            .flatten();
        // Everything the process wrote reaches containerd before its exit
        // does, or `ctr run` could end without its last lines.
        if let Some(io) = io {
            io.drain().await;
        }
        let _ = self.with(&id, |c| {
            c.process(&id, &exec_id)?.exit.send_replace(Some(exit));
            Ok(())
        });
        self.publish(TaskExit {
            container_id: id.clone(),
            id: if exec_id.is_empty() { id } else { exec_id },
            pid,
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
        .await;
    }

    /// A console socket path of its own for each terminal the shim takes:
    /// short, as a socket path has 108 bytes and ids are often 64 hex digits.
    fn console_path(&self) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        self.ctx
            .root
            .join(format!(".tty-{:x}-{n:x}", std::process::id()))
    }

    async fn create_task(&self, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse> {
        let id = req.id.clone();
        {
            let t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            if t.containers.contains_key(&id) {
                return Err(ShimError::ContainerExists { id });
            }
        }
        if !req.checkpoint.is_empty() {
            return Err(ShimError::Unimplemented {
                what: "restoring from a checkpoint",
                why: "VM snapshots are not implemented",
            });
        }
        let bundle = PathBuf::from(&req.bundle);
        let rootfs = bundle.join("rootfs");
        for m in &req.rootfs {
            containerd_shim::asynchronous::util::mount_rootfs(m, &rootfs)
                .await
                .map_err(|e| ShimError::InvalidRequest {
                    field: "rootfs",
                    reason: e.to_string(),
                })?;
        }
        let stdio = fifos(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let console = self.console_path();
        let ctx = self.ctx.clone();
        let (cid, cbundle, cstdio) = (id.clone(), bundle.clone(), stdio.clone());
        let created = async {
            let wiring = Wiring::new(&stdio, &console)?;
            blocking(move || {
                let mut wiring = wiring;
                let pid = okvm::cli::create::create(
                    &ctx,
                    &okvm::cli::create::Options {
                        id: &cid,
                        bundle: &cbundle,
                        console_socket: wiring.console_socket(),
                        pid_file: None,
                        stdio: wiring.child_fds(),
                    },
                )?;
                wiring.started()?;
                Ok((pid, wiring))
            })
            .await
        }
        .await;
        let (pid, wiring) = match created {
            Ok(c) => c,
            Err(e) => {
                if !req.rootfs.is_empty() {
                    unmount_rootfs(&bundle);
                }
                return Err(e);
            }
        };
        let mut init = Process::new(cstdio);
        init.pid = pid;
        init.wiring = Some(wiring);
        self.tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .containers
            .insert(
                id.clone(),
                Container {
                    bundle: bundle.clone(),
                    init,
                    execs: HashMap::new(),
                },
            );
        self.register(pid, &id, "").await;
        self.publish(TaskCreate {
            container_id: id,
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: MessageField::some(TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        })
        .await;
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start_task(&self, req: api::StartRequest) -> Result<api::StartResponse> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        if exec_id.is_empty() {
            let pid = self.with(&id, |c| Ok(c.init.pid))?;
            let ctx = self.ctx.clone();
            let cid = id.clone();
            blocking(move || Ok(okvm::cli::start::start(&ctx, &cid)?)).await?;
            self.with(&id, |c| {
                if c.init.status == Status::Created {
                    c.init.status = Status::Running;
                }
                Ok(())
            })?;
            self.publish(TaskStart {
                container_id: id,
                pid,
                ..Default::default()
            })
            .await;
            return Ok(api::StartResponse {
                pid,
                ..Default::default()
            });
        }
        let (stdio, spec) = self.with(&id, |c| {
            let p = c.process(&id, &exec_id)?;
            if p.status != Status::Created || p.pid != 0 {
                return Err(ShimError::WrongState {
                    what: format!("exec {exec_id}"),
                    action: "start",
                    state: p.status.name(),
                });
            }
            Ok((p.stdio.clone(), p.spec.clone()))
        })?;
        let dir = self.ctx.root.join(&id);
        let spec_path = dir.join(format!("exec-{}.json", sanitize(&exec_id)));
        std::fs::write(&spec_path, &spec).map_err(|e| {
            ShimError::Internal(format!("cannot write {}: {e}", spec_path.display()))
        })?;
        let console = self.console_path();
        let wiring = Wiring::new(&stdio, &console)?;
        let ctx = self.ctx.clone();
        let args = okvm::cli::exec::ProxyArgs {
            root: ctx.root.clone(),
            id: id.clone(),
            process: spec_path.clone(),
            console_socket: wiring.console_socket().map(Path::to_path_buf),
        };
        let started = blocking(move || {
            let mut wiring = wiring;
            let r = okvm::cli::exec::start_proxy(&ctx, args, wiring.child_fds());
            let _ = std::fs::remove_file(&spec_path);
            let (pid, guest) = r?;
            wiring.started()?;
            Ok((pid, guest, wiring))
        })
        .await;
        let (pid, guest_pid, wiring) = started?;
        self.with(&id, |c| {
            let p = c.process(&id, &exec_id)?;
            p.pid = pid;
            p.guest_pid = guest_pid;
            p.status = Status::Running;
            p.wiring = Some(wiring);
            Ok(())
        })?;
        self.register(pid, &id, &exec_id).await;
        self.publish(TaskExecStarted {
            container_id: id,
            exec_id,
            pid,
            ..Default::default()
        })
        .await;
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete_task(&self, req: api::DeleteRequest) -> Result<api::DeleteResponse> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        if !exec_id.is_empty() {
            let p = self.with(&id, |c| {
                let p = c.process(&id, &exec_id)?;
                if p.status == Status::Running {
                    return Err(ShimError::WrongState {
                        what: format!("exec {exec_id}"),
                        action: "delete",
                        state: "running",
                    });
                }
                let p = c.execs.remove(&exec_id).expect("looked up above");
                Ok(p)
            })?;
            return Ok(deleted(&p));
        }
        let (bundle, status, io) = self.with(&id, |c| {
            Ok((
                c.bundle.clone(),
                c.init.status,
                c.init.wiring.as_ref().map(|w| w.copies.clone()),
            ))
        })?;
        if matches!(status, Status::Running | Status::Paused) {
            return Err(ShimError::WrongState {
                what: format!("container {id}"),
                action: "delete",
                state: status.name(),
            });
        }
        let ctx = self.ctx.clone();
        let cid = id.clone();
        // Created and never started, or stopped: either way nothing of it may
        // stay (VMM, virtiofsd, tap, address, state directory, rootfs mount).
        blocking(move || {
            okvm::cli::delete::delete(&ctx, &cid, true)?;
            unmount_rootfs(&bundle);
            Ok(())
        })
        .await?;
        if let Some(io) = io {
            io.close_input();
        }
        let c = {
            let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
            t.pids.retain(|_, (owner, _)| owner != &id);
            t.containers.remove(&id)
        };
        let Some(c) = c else {
            return Err(ShimError::ContainerNotFound { id });
        };
        let resp = deleted(&c.init);
        self.publish(TaskDelete {
            container_id: id.clone(),
            id,
            pid: resp.pid,
            exit_status: resp.exit_status,
            exited_at: resp.exited_at.clone(),
            ..Default::default()
        })
        .await;
        Ok(resp)
    }

    async fn exec_process(&self, req: api::ExecProcessRequest) -> Result<()> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let spec = req
            .spec
            .as_ref()
            .map(|a| a.value.clone())
            .unwrap_or_default();
        // Checked now, so a bad spec fails `ctr task exec` before any start.
        serde_json::from_slice::<oci_spec::runtime::Process>(&spec).map_err(|e| {
            ShimError::InvalidRequest {
                field: "spec",
                reason: format!("not an OCI process: {e}"),
            }
        })?;
        self.with(&id, |c| {
            if c.init.status != Status::Running {
                return Err(ShimError::WrongState {
                    what: format!("container {id}"),
                    action: "exec in",
                    state: c.init.status.name(),
                });
            }
            if c.execs.contains_key(&exec_id) {
                return Err(ShimError::ExecExists {
                    container_id: id.clone(),
                    exec_id: exec_id.clone(),
                });
            }
            let mut p = Process::new(fifos(&req.stdin, &req.stdout, &req.stderr, req.terminal));
            p.spec = spec;
            c.execs.insert(exec_id.clone(), p);
            Ok(())
        })?;
        self.publish(TaskExecAdded {
            container_id: id,
            exec_id,
            ..Default::default()
        })
        .await;
        Ok(())
    }

    async fn kill_task(&self, req: api::KillRequest) -> Result<()> {
        let (id, exec_id) = (req.id.clone(), req.exec_id.clone());
        let signal = nix::sys::signal::Signal::try_from(req.signal as i32).map_err(|_| {
            ShimError::InvalidRequest {
                field: "signal",
                reason: format!("{} is not a signal", req.signal),
            }
        })?;
        let (status, guest_pid) = self.with(&id, |c| {
            let p = c.process(&id, &exec_id)?;
            Ok((p.status, p.guest_pid))
        })?;
        if status == Status::Stopped {
            return Err(ShimError::Finished);
        }
        let ctx = self.ctx.clone();
        if exec_id.is_empty() {
            return blocking(move || Ok(okvm::cli::kill::kill(&ctx, &id, signal, req.all)?)).await;
        }
        if guest_pid == 0 {
            return Err(ShimError::WrongState {
                what: format!("exec {exec_id}"),
                action: "signal",
                state: "not started",
            });
        }
        blocking(move || {
            Ok(okvm::cli::kill::signal_process(
                &ctx, &id, guest_pid, signal,
            )?)
        })
        .await
    }

    async fn wait_task(&self, req: api::WaitRequest) -> Result<api::WaitResponse> {
        let mut rx = self.with(&req.id, |c| {
            Ok(c.process(&req.id, &req.exec_id)?.exit.subscribe())
        })?;
        let exit = loop {
            if let Some(e) = *rx.borrow_and_update() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(ShimError::Internal("the process was deleted".into()));
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: timestamp(exit.at),
            ..Default::default()
        })
    }

    fn state_of(&self, req: &api::StateRequest) -> Result<api::StateResponse> {
        self.with(&req.id, |c| {
            let bundle = c.bundle.to_string_lossy().into_owned();
            let p = c.process(&req.id, &req.exec_id)?;
            let exit = *p.exit.borrow();
            Ok(api::StateResponse {
                id: req.id.clone(),
                bundle,
                pid: p.pid,
                status: p.status.proto().into(),
                stdin: p.stdio.stdin.clone(),
                stdout: p.stdio.stdout.clone(),
                stderr: p.stdio.stderr.clone(),
                terminal: p.stdio.terminal,
                exit_status: exit.map(|e| e.status).unwrap_or_default(),
                exited_at: exit.map(|e| timestamp(e.at)).unwrap_or_default(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            })
        })
    }

    async fn pause_or_resume(&self, id: &str, action: Action) -> Result<()> {
        let ctx = self.ctx.clone();
        let cid = id.to_string();
        blocking(move || Ok(okvm::cli::pause::set(&ctx, &cid, action)?)).await?;
        let paused = action == Action::Pause;
        self.with(id, |c| {
            c.init.status = if paused {
                Status::Paused
            } else {
                Status::Running
            };
            Ok(())
        })?;
        if paused {
            self.publish(TaskPaused {
                container_id: id.into(),
                ..Default::default()
            })
            .await;
        } else {
            self.publish(TaskResumed {
                container_id: id.into(),
                ..Default::default()
            })
            .await;
        }
        Ok(())
    }

    async fn guest_pids(&self, id: &str) -> Result<Vec<u32>> {
        self.with(id, |_| Ok(()))?;
        let ctx = self.ctx.clone();
        let cid = id.to_string();
        blocking(move || Ok(okvm::cli::ps::pids(&ctx, &cid)?)).await
    }

    async fn stats_of(&self, id: &str) -> Result<api::StatsResponse> {
        self.with(id, |_| Ok(()))?;
        let ctx = self.ctx.clone();
        let cid = id.to_string();
        let s = blocking(move || Ok(okvm::cli::events::stats(&ctx, &cid)?)).await?;
        Ok(api::StatsResponse {
            stats: MessageField::some(metrics_any(&s)?),
            ..Default::default()
        })
    }
}

/// The guest's usage as containerd's cgroup metrics (the v1 message, which
/// every containerd decodes): the VM is the container's cgroup, so its
/// totals are the container's. CPU times are nanoseconds, as in cgroup v1.
fn metrics_any(s: &okvm_protocol::GuestStats) -> Result<Any> {
    use containerd_shim::protos::cgroups::metrics::{
        CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
    };
    let m = Metrics {
        pids: MessageField::some(PidsStat {
            current: s.pids,
            ..Default::default()
        }),
        cpu: MessageField::some(CPUStat {
            usage: MessageField::some(CPUUsage {
                total: s.cpu_usage_ns,
                user: s.cpu_user_ns,
                kernel: s.cpu_system_ns,
                ..Default::default()
            }),
            ..Default::default()
        }),
        memory: MessageField::some(MemoryStat {
            cache: s.memory_cache_bytes,
            usage: MessageField::some(MemoryEntry {
                usage: s.memory_used_bytes,
                limit: s.memory_total_bytes,
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    Ok(Any {
        type_url: STATS_TYPE_URL.into(),
        value: m
            .write_to_bytes()
            .map_err(|e| ShimError::Internal(format!("cannot encode the stats: {e}")))?,
        ..Default::default()
    })
}

fn deleted(p: &Process) -> api::DeleteResponse {
    let exit = *p.exit.borrow();
    api::DeleteResponse {
        pid: p.pid,
        exit_status: exit.map(|e| e.status).unwrap_or_default(),
        exited_at: timestamp(exit.map(|e| e.at).unwrap_or_else(SystemTime::now)),
        ..Default::default()
    }
}

/// Exec ids come from clients; only harmless characters reach a file name.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

type TtrpcResult<T> = ttrpc::Result<T>;

fn done<T>(r: Result<T>) -> TtrpcResult<T> {
    r.map_err(|e| {
        log::warn!("{e}");
        e.into()
    })
}

#[async_trait]
impl Task for TaskService {
    async fn state(
        &self,
        _: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        done(self.state_of(&req))
    }

    async fn create(
        &self,
        _: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        done(self.create_task(req).await)
    }

    async fn start(
        &self,
        _: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        done(self.start_task(req).await)
    }

    async fn delete(
        &self,
        _: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        done(self.delete_task(req).await)
    }

    async fn pids(
        &self,
        _: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let pids = done(self.guest_pids(&req.id).await)?;
        Ok(api::PidsResponse {
            processes: pids
                .into_iter()
                .map(|pid| containerd_shim::protos::types::task::ProcessInfo {
                    pid,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        done(self.pause_or_resume(&req.id, Action::Pause).await).map(|()| Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        done(self.pause_or_resume(&req.id, Action::Resume).await).map(|()| Empty::new())
    }

    async fn checkpoint(
        &self,
        _: &TtrpcContext,
        _: api::CheckpointTaskRequest,
    ) -> TtrpcResult<Empty> {
        done(Err(ShimError::Unimplemented {
            what: "checkpoint",
            why: "VM snapshots are not implemented",
        }))
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        done(self.kill_task(req).await).map(|()| Empty::new())
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        done(self.exec_process(req).await).map(|()| Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        let r = self.with(&req.id, |c| {
            let p = c.process(&req.id, &req.exec_id)?;
            match &p.wiring {
                Some(w) => w.resize(req.height as u16, req.width as u16),
                None => Err(ShimError::WrongState {
                    what: "a process".into(),
                    action: "resize the terminal of",
                    state: "not started",
                }),
            }
        });
        done(r).map(|()| Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        let r = self.with(&req.id, |c| {
            if let Some(w) = &c.process(&req.id, &req.exec_id)?.wiring {
                w.copies.close_input();
            }
            Ok(())
        });
        done(r).map(|()| Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, _: api::UpdateTaskRequest) -> TtrpcResult<Empty> {
        done(Err(ShimError::Unimplemented {
            what: "update",
            why: "a running VM is not resized yet",
        }))
    }

    async fn wait(
        &self,
        _: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        done(self.wait_task(req).await)
    }

    async fn stats(
        &self,
        _: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        done(self.stats_of(&req.id).await)
    }

    async fn connect(
        &self,
        _: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let task_pid = self.with(&req.id, |c| Ok(c.init.pid)).unwrap_or_default();
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TtrpcResult<Empty> {
        let empty = self
            .tables
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .containers
            .is_empty();
        // A pod's shim serves all its containers: it ends with the last one.
        if empty {
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
