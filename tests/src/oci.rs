//! Driving any runc-compatible OCI runtime binary the way a user (or containerd's
//! runc shim) does: busybox bundles in temp dirs, invocations whose every wait is
//! bounded, and a per-test [`Sandbox`] that force-deletes what it created.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tempfile::TempDir;

/// Names the runtime under test: a path to a runc-compatible binary.
pub const RUNTIME_ENV: &str = "OKVM_CONFORMANCE_RUNTIME";

/// Upper bound for one runtime invocation: a guard against a hung runtime, not a
/// measure of speed. A microVM runtime boots a guest on `create`, and okvm gives
/// that boot 120 s before it fails with its own message (`OKVM_BOOT_TIMEOUT`);
/// the guard is longer, so that a slow boot (a nested, emulated, loaded host)
/// ends in okvm's words rather than in the harness's kill.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(150);

/// Upper bound for a container to reach a state, or its process to leave a marker.
pub const STATE_TIMEOUT: Duration = Duration::from_secs(20);

const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The workspace root: tests/ is one of its members.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The busybox root filesystem image the bundles are made from.
pub fn busybox_rootfs_tar() -> PathBuf {
    let tar = repo_root().join("target/okvm/images/busybox-rootfs.tar");
    assert!(
        tar.is_file(),
        "{} is missing: run `make images` first",
        tar.display()
    );
    tar
}

/// The runtime under test, from [`RUNTIME_ENV`]. Panics when unset so that
/// `--include-ignored` without it fails loudly instead of passing vacuously.
pub fn runtime_from_env() -> PathBuf {
    let Some(path) = std::env::var_os(RUNTIME_ENV) else {
        panic!(
            "{RUNTIME_ENV} is not set: point it at a runc-compatible binary, e.g. \
             {RUNTIME_ENV}=/usr/sbin/runc"
        );
    };
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "{RUNTIME_ENV}={} is not a file",
        path.display()
    );
    path
}

/// What one runtime invocation did.
#[derive(Debug)]
pub struct Output {
    /// What was run, for failure messages.
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(self.success(), "`{}` failed: {self:#?}", self.what);
        self
    }

    /// A failure a user can act on: non-zero exit and something said on stderr.
    #[track_caller]
    pub fn assert_failure_with_message(&self) -> &Self {
        assert!(
            !self.success(),
            "`{}` should have failed: {self:#?}",
            self.what
        );
        assert!(
            !self.stderr.trim().is_empty(),
            "`{}` failed without saying why: {self:#?}",
            self.what
        );
        self
    }

    /// Asserts stderr contains at least one of `needles`, ignoring case, because
    /// runtimes word the same error differently.
    #[track_caller]
    pub fn assert_stderr_mentions_any(&self, needles: &[&str]) -> &Self {
        let stderr = self.stderr.to_lowercase();
        assert!(
            needles.iter().any(|n| stderr.contains(&n.to_lowercase())),
            "`{}`: stderr mentions none of {needles:?}: {self:#?}",
            self.what
        );
        self
    }

    /// stdout parsed as JSON.
    #[track_caller]
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "`{}` did not print JSON on stdout ({e}): {self:#?}",
                self.what
            )
        })
    }
}

/// Waits for `child` until `timeout`, killing it and panicking on expiry so a hung
/// runtime fails the test rather than hanging it.
fn wait_bounded(child: &mut Child, timeout: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`{what}` did not exit within {timeout:?}");
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Reads a pipe on a thread so a chatty child cannot block on a full pipe while
/// we wait for it.
fn drain(pipe: Option<impl Read + Send + 'static>) -> thread::JoinHandle<String> {
    let mut pipe = pipe.expect("piped");
    thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs `cmd` with stdin from /dev/null and stdout/stderr captured through pipes.
pub fn run_piped(cmd: &mut Command, timeout: Duration) -> Output {
    let what = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{what}`: {e}"));
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = wait_bounded(&mut child, timeout, &what);
    // After exit the pipes can only be held open by the container, which a
    // foreground `run` has waited for; detached containers never get pipes.
    Output {
        what,
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Runs `cmd` with stdout/stderr going to fresh files `<stem>.out`/`<stem>.err`.
/// Used where the runtime hands its stdio to a container that outlives it (create,
/// run --detach): a pipe would then stay open, or fill up, with nobody reading it.
/// Returns what the files held when the runtime exited.
pub fn run_to_files(cmd: &mut Command, stem: &Path, timeout: Duration) -> Output {
    let what = describe(cmd);
    let out_path = stem.with_extension("out");
    let err_path = stem.with_extension("err");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(File::create(&out_path).expect("stdout file"))
        .stderr(File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot spawn `{what}`: {e}"));
    let status = wait_bounded(&mut child, timeout, &what);
    let read = |p: &Path| String::from_utf8_lossy(&std::fs::read(p).unwrap()).into_owned();
    Output {
        what,
        status,
        stdout: read(&out_path),
        stderr: read(&err_path),
    }
}

/// A `config.json` with `runc spec`'s defaults, made portable: no terminal (tests
/// have none), a writable root so the container can leave markers for the host,
/// its own network namespace so nothing touches the host's network, and no
/// cgroup mount (cgroupfs layouts differ between hosts; runtimes pick the
/// default cgroups path themselves).
pub fn default_config(args: &[&str]) -> Value {
    let caps = json!(["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]);
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": { "uid": 0, "gid": 0 },
            "args": args,
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {
                "bounding": caps,
                "effective": caps,
                "permitted": caps,
                "ambient": caps
            },
            "rlimits": [{ "type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024 }],
            "noNewPrivileges": true
        },
        "root": { "path": "rootfs", "readonly": false },
        "hostname": "conformance",
        "mounts": [
            { "destination": "/proc", "type": "proc", "source": "proc" },
            {
                "destination": "/dev", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]
            },
            {
                "destination": "/dev/pts", "type": "devpts", "source": "devpts",
                "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]
            },
            {
                "destination": "/dev/shm", "type": "tmpfs", "source": "shm",
                "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]
            },
            {
                "destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
                "options": ["nosuid", "noexec", "nodev"]
            },
            {
                "destination": "/sys", "type": "sysfs", "source": "sysfs",
                "options": ["nosuid", "noexec", "nodev", "ro"]
            }
        ],
        "linux": {
            "resources": { "devices": [{ "allow": false, "access": "rwm" }] },
            "namespaces": [
                { "type": "pid" },
                { "type": "network" },
                { "type": "ipc" },
                { "type": "uts" },
                { "type": "mount" }
            ],
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                "/proc/sched_debug", "/sys/firmware", "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ]
        }
    })
}

/// An OCI bundle directory: `rootfs/` plus `config.json`.
pub struct Bundle {
    dir: PathBuf,
}

impl Bundle {
    /// A bundle at `dir` (created) with busybox as its root filesystem and
    /// [`default_config`] running `args`.
    pub fn busybox(dir: &Path, args: &[&str]) -> Bundle {
        let tar = busybox_rootfs_tar();
        let rootfs = dir.join("rootfs");
        std::fs::create_dir_all(&rootfs).unwrap();
        let out = run_piped(
            Command::new("tar")
                .arg("-xf")
                .arg(&tar)
                .arg("-C")
                .arg(&rootfs),
            COMMAND_TIMEOUT,
        );
        out.assert_success();
        let bundle = Bundle {
            dir: dir.to_path_buf(),
        };
        bundle.write_config(&default_config(args));
        bundle
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs")
    }

    /// Its `config.json`.
    pub fn config(&self) -> Value {
        serde_json::from_slice(&std::fs::read(self.dir.join("config.json")).unwrap()).unwrap()
    }

    pub fn write_config(&self, config: &Value) {
        let text = serde_json::to_string_pretty(config).unwrap();
        std::fs::write(self.dir.join("config.json"), text).unwrap();
    }

    /// Marks the bundle as a CRI pod's sandbox (`kind` "sandbox") or one of
    /// its containers ("container"), as containerd's CRI plugin annotates it.
    pub fn join_pod(&self, kind: &str, pod: &str) {
        let mut config = self.config();
        set_pod(&mut config, kind, pod);
        self.write_config(&config);
    }

    /// Waits for the container to create `/<name>` in its root filesystem (seen on
    /// the host through the bundle) and returns its contents.
    #[track_caller]
    pub fn wait_for_marker(&self, name: &str) -> String {
        let path = self.rootfs().join(name);
        let deadline = Instant::now() + STATE_TIMEOUT;
        while !path.exists() {
            assert!(
                Instant::now() < deadline,
                "the container did not create /{name} within {STATE_TIMEOUT:?}"
            );
            thread::sleep(POLL_INTERVAL);
        }
        // The marker may be visible before its writer has finished.
        thread::sleep(Duration::from_millis(50));
        std::fs::read_to_string(&path).unwrap()
    }

    pub fn has_marker(&self, name: &str) -> bool {
        self.rootfs().join(name).exists()
    }

    /// Creates `/<name>` in the container's root filesystem from the host.
    pub fn put_marker(&self, name: &str) {
        std::fs::write(self.rootfs().join(name), b"").unwrap();
    }
}

/// Distinguishes container ids across tests and concurrent test runs: cgroup paths
/// default to the id and are host-wide even though each test has its own `--root`.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// One test's private world: the runtime under test with its own `--root` state
/// directory, a work directory for bundles and stdio files, and the ids of every
/// container it may have made, force-deleted on drop (also when the test panics).
pub struct Sandbox {
    runtime: PathBuf,
    /// Environment every invocation of the runtime gets.
    env: Vec<(OsString, OsString)>,
    ids: RefCell<Vec<String>>,
    // Dropped after `Drop::drop` has deleted the containers living in them.
    root: TempDir,
    work: TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        let runtime = runtime_from_env();
        Sandbox {
            runtime,
            env: Vec::new(),
            ids: RefCell::new(Vec::new()),
            root: tempfile::Builder::new()
                .prefix("okvm-conformance-root")
                .tempdir()
                .unwrap(),
            work: tempfile::Builder::new()
                .prefix("okvm-conformance-work")
                .tempdir()
                .unwrap(),
        }
    }

    pub fn runtime(&self) -> &Path {
        &self.runtime
    }

    /// Every invocation of the runtime gets `key=value` in its environment
    /// (the cleanup on drop too).
    pub fn with_env(mut self, key: &str, value: impl Into<OsString>) -> Sandbox {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The `--root` state directory, private to this test.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// `<runtime> --root <root>`, ready for a verb.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.runtime);
        cmd.arg("--root").arg(self.root.path());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    /// Runs `<runtime> --root <root> <args>` with piped stdio.
    pub fn invoke(&self, args: &[&str]) -> Output {
        run_piped(self.command().args(args), COMMAND_TIMEOUT)
    }

    /// A fresh container id, remembered for cleanup.
    pub fn new_id(&self, name: &str) -> String {
        let n = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let id = format!("okvmconf-{}-{n}-{name}", std::process::id());
        self.ids.borrow_mut().push(id.clone());
        id
    }

    /// A busybox bundle in the work directory running `args`.
    pub fn bundle(&self, name: &str, args: &[&str]) -> Bundle {
        Bundle::busybox(&self.work.path().join(format!("bundle-{name}")), args)
    }

    /// Where this test keeps files of its own (stdio captures, pid files).
    pub fn work_file(&self, name: &str) -> PathBuf {
        self.work.path().join(name)
    }

    /// `create --bundle <bundle> [extra] <id>`; the container's stdio are files.
    pub fn create(&self, id: &str, bundle: &Path, extra: &[&str]) -> Output {
        let mut cmd = self.command();
        cmd.arg("create").arg("--bundle").arg(bundle);
        cmd.args(extra).arg(id);
        run_to_files(
            &mut cmd,
            &self.work_file(&format!("create-{id}")),
            COMMAND_TIMEOUT,
        )
    }

    /// `run --detach --bundle <bundle> <id>`; the container's stdio are files.
    pub fn run_detached(&self, id: &str, bundle: &Bundle) -> Output {
        let mut cmd = self.command();
        cmd.args(["run", "--detach", "--bundle"])
            .arg(bundle.path())
            .arg(id);
        run_to_files(
            &mut cmd,
            &self.work_file(&format!("run-{id}")),
            COMMAND_TIMEOUT,
        )
    }

    /// Foreground `run --bundle <bundle> <id>` with piped stdio.
    pub fn run_foreground(&self, id: &str, bundle: &Bundle) -> Output {
        let mut cmd = self.command();
        cmd.args(["run", "--bundle"]).arg(bundle.path()).arg(id);
        run_piped(&mut cmd, COMMAND_TIMEOUT)
    }

    /// create + start, asserting both succeed; returns the state once running.
    #[track_caller]
    pub fn start_container(&self, id: &str, bundle: &Bundle) -> Value {
        self.create(id, bundle.path(), &[]).assert_success();
        self.invoke(&["start", id]).assert_success();
        self.wait_for_status(id, "running")
    }

    /// The state JSON; asserts `state` succeeds.
    #[track_caller]
    pub fn state(&self, id: &str) -> Value {
        self.invoke(&["state", id]).assert_success().json()
    }

    /// Polls `state` until its status is `want`, failing after [`STATE_TIMEOUT`].
    #[track_caller]
    pub fn wait_for_status(&self, id: &str, want: &str) -> Value {
        let deadline = Instant::now() + STATE_TIMEOUT;
        loop {
            let state = self.state(id);
            if state["status"] == want {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "{id} did not become {want:?} within {STATE_TIMEOUT:?}; last state: {state:#}"
            );
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// `list -q`'s ids.
    #[track_caller]
    pub fn listed_ids(&self) -> Vec<String> {
        let out = self.invoke(&["list", "-q"]);
        out.assert_success();
        out.stdout.lines().map(str::to_owned).collect()
    }

    /// Entries in the `--root` directory whose name contains `id`: state the
    /// runtime left behind.
    pub fn state_entries_for(&self, id: &str) -> Vec<PathBuf> {
        std::fs::read_dir(self.root.path())
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter(|e| e.file_name().to_string_lossy().contains(id))
                    .map(|e| e.path())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Default for Sandbox {
    fn default() -> Self {
        Sandbox::new()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Best effort and never panicking: this also runs while a failed test unwinds.
        for id in self.ids.borrow().iter() {
            let Ok(mut child) = self
                .command()
                .args(["delete", "--force", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
            else {
                continue;
            };
            let deadline = Instant::now() + COMMAND_TIMEOUT;
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                thread::sleep(POLL_INTERVAL);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A host process, identified by pid and start time so that pid reuse is not
/// mistaken for the same process still running.
#[derive(Debug, Clone, Copy)]
pub struct HostProcess {
    pub pid: i64,
    start_time: u64,
}

/// `/proc/<pid>/stat`'s state letter and start time (fields 3 and 22).
fn proc_stat(pid: i64) -> Option<(char, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // comm (field 2) may contain spaces and parens; the fields after it do not.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let start_time = fields.get(19)?.parse().ok()?;
    Some((state, start_time))
}

impl HostProcess {
    /// The live process `pid`, or `None` when there is none.
    pub fn find(pid: i64) -> Option<HostProcess> {
        let (state, start_time) = proc_stat(pid)?;
        (!matches!(state, 'Z' | 'X')).then_some(HostProcess { pid, start_time })
    }

    /// Still running: a zombie counts as gone, since reaping it is up to its parent
    /// (often the host's init), not the runtime.
    pub fn is_running(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start_time && !matches!(state, 'Z' | 'X'))
    }

    /// Stopped (by SIGSTOP or its kin, or traced): it exists but cannot run.
    pub fn is_stopped(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, start)) if start == self.start_time && matches!(state, 'T' | 't'))
    }

    /// Waits until the process is gone, failing after [`STATE_TIMEOUT`].
    #[track_caller]
    pub fn wait_gone(&self) {
        let deadline = Instant::now() + STATE_TIMEOUT;
        while self.is_running() {
            assert!(
                Instant::now() < deadline,
                "process {} still running after {STATE_TIMEOUT:?}",
                self.pid
            );
            thread::sleep(POLL_INTERVAL);
        }
    }
}

/// Every process's pid and command line (arguments joined by spaces).
fn command_lines() -> Vec<(i64, String)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<i64>().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&cmdline).replace('\0', " ")))
        })
        .collect()
}

/// The running processes whose command line contains every one of `needles`.
pub fn processes_naming(needles: &[&str]) -> Vec<HostProcess> {
    command_lines()
        .into_iter()
        .filter(|(_, c)| needles.iter().all(|n| c.contains(n)))
        .filter_map(|(pid, _)| HostProcess::find(pid))
        .collect()
}

/// The `pid` field of a state, asserting it names a process (> 0).
#[track_caller]
pub fn state_pid(state: &Value) -> i64 {
    let pid = state["pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("state has no numeric pid: {state:#}"));
    assert!(pid > 0, "state pid must be > 0: {state:#}");
    pid
}

/// How long what a deleted container had may take to disappear.
const GONE_TIMEOUT: Duration = Duration::from_secs(120);

/// Nothing that names container `id` is left: no process, no mount, no state.
#[track_caller]
pub fn assert_no_trace(sb: &Sandbox, id: &str) {
    assert!(!sb.root().join(id).exists(), "state directory left");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(id), "a mount names {id}:\n{mounts}");
    let deadline = Instant::now() + GONE_TIMEOUT;
    loop {
        let procs: Vec<String> = command_lines()
            .into_iter()
            .filter(|(_, c)| c.contains(id))
            .map(|(_, c)| c)
            .collect();
        if procs.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "processes left: {procs:?}");
        thread::sleep(POLL_INTERVAL);
    }
}

/// What okvm made on the host's network for container `id` (its tap and
/// address lease, from the record in its state directory): read it while
/// the container exists, check it with [`assert_network_released`] after.
pub fn okvm_network_record(sb: &Sandbox, id: &str) -> Value {
    let path = sb.root().join(id).join("net.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).unwrap()
}

/// The tap and the address lease in `record` are gone.
#[track_caller]
pub fn assert_network_released(record: &Value) {
    if let Some(tap) = record["tap"].as_str() {
        assert!(
            !Path::new("/sys/class/net").join(tap).exists(),
            "tap {tap} left: {record}"
        );
    }
    if let (Some(leases), Some(owner)) = (record["leases"].as_str(), record["owner"].as_str()) {
        let held = std::fs::read_to_string(leases).unwrap_or_default();
        assert!(
            !held.split_whitespace().any(|w| w == owner),
            "{owner} still holds a lease: {held}"
        );
    }
}

/// The CRI plugin's annotations that put a container's `config` in `pod`
/// as its sandbox (`kind` "sandbox") or one of its containers ("container").
pub fn set_pod(config: &mut Value, kind: &str, pod: &str) {
    config["annotations"] = json!({
        "io.kubernetes.cri.container-type": kind,
        "io.kubernetes.cri.sandbox-id": pod,
    });
}
