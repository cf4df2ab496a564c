//! Kubernetes pods through containerd's CRI plugin, inside the test host, driven
//! call for call as kubelet drives them: ImageStatus (the images are present, so
//! nothing is pulled), RunPodSandbox, CreateContainer and StartContainer for two
//! containers with kubelet's mounts (/etc/hosts, /dev/termination-log, an
//! emptyDir volume), ExecSync, ContainerStatus, StopContainer, StopPodSandbox,
//! RemoveContainer, RemovePodSandbox.
//!
//! One body, two runtime handlers: the default one (runc), which proves the
//! harness, and `okvm`, under which the whole pod is one microVM (its containers
//! share the guest's kernel, and that kernel is not the test host's).
//!
//! Each run leaves the containerd specs of its sandbox and of one container,
//! and how long each step took, in `target/okvm/cri/`.

use std::collections::HashMap;
use std::fmt::Display;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use okvm_integration::cri::{api, Cri, ExecResult, CONTAINERD_SOCKET};
use okvm_integration::{assert_guest_kernel, import_images, repo_root, require_testhost, text};

const BUSYBOX: &str = "localhost/okvm-busybox:latest";
/// The sandbox (pause) image stage2 configures and import-images imports.
const PAUSE: &str = "localhost/okvm-pause:latest";
/// containerd's task bundles of the CRI plugin's namespace.
const BUNDLES: &str = "/run/containerd/io.containerd.runtime.v2.task/k8s.io";
/// okvm's shim keeps its containers' state here (shim/src/service.rs).
const OKVM_STATE: &str = "/run/okvm-shim/k8s.io";
/// The CNI network's name in stage2's conflist (host-local keeps its leases here).
const CNI_LEASES: &str = "/var/lib/cni/networks/okvm-cri";
const CONTAINERD_LOG: &str = "/run/testhost/containerd.log";
const EXEC_LIMIT: Duration = Duration::from_secs(60);
/// StopContainer's grace period: SIGKILL only after this.
const STOP_GRACE: Duration = Duration::from_secs(30);

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_pod_runs_under_runc() {
    pod("");
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_pod_is_one_okvm_vm() {
    pod("okvm");
}

/// The end of containerd's log, for failure messages.
fn containerd_log() -> String {
    let log = std::fs::read_to_string(CONTAINERD_LOG).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(25)..].join("\n");
    let mut out = format!("\n--- the end of {CONTAINERD_LOG} ---\n{tail}");
    // And what okvm's helpers and guests said, for the okvm handler.
    for dir in std::fs::read_dir(OKVM_STATE)
        .into_iter()
        .flatten()
        .flatten()
    {
        for file in ["sandbox.log", "console.log"] {
            let text = std::fs::read_to_string(dir.path().join(file)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            if !lines.is_empty() {
                let tail = lines[lines.len().saturating_sub(15)..].join("\n");
                out += &format!("\n--- {}/{file} ---\n{tail}", dir.path().display());
            }
        }
    }
    out
}

/// Asserts, adding the end of containerd's log to the message.
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        assert!($cond, "{}{}", format!($($msg)+), containerd_log())
    };
}

/// The value of a CRI call that must succeed.
fn ok<T>(what: impl Display, r: okvm_integration::cri::Result<T>) -> T {
    r.unwrap_or_else(|e| {
        panic!(
            "{what}: {:?}: {}{}",
            e.code(),
            e.message(),
            containerd_log()
        )
    })
}

/// A shell command on the test host: its stdout.
fn sh(script: &str) -> String {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    text(&out.stdout)
}

/// How long each step took: target/okvm/cri/LABEL-steps.txt, written when the
/// test ends, passed or failed.
struct Steps {
    label: String,
    start: Instant,
    last: Instant,
    lines: Vec<String>,
}

impl Steps {
    fn new(label: &str) -> Steps {
        let now = Instant::now();
        Steps {
            label: label.into(),
            start: now,
            last: now,
            lines: Vec::new(),
        }
    }

    fn done(&mut self, what: &str) {
        let now = Instant::now();
        let took = (now - self.last).as_secs_f64();
        self.lines.push(format!("{took:>8.2} s  {what}"));
        self.last = now;
    }
}

impl Drop for Steps {
    fn drop(&mut self) {
        let end = if std::thread::panicking() {
            "FAILED"
        } else {
            "total"
        };
        let total = self.start.elapsed().as_secs_f64();
        self.lines.push(format!("{total:>8.2} s  {end}"));
        let path = out_dir().join(format!("{}-steps.txt", self.label));
        let _ = std::fs::write(path, self.lines.join("\n") + "\n");
    }
}

/// Stops and removes the pod sandbox (and with it its containers) if the test
/// ends before it did, so that a failure leaves nothing for the next test.
struct PodGuard<'a> {
    cri: &'a Cri,
    id: String,
    removed: bool,
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.cri.stop_pod_sandbox(&self.id);
            let _ = self.cri.remove_pod_sandbox(&self.id);
        }
    }
}

/// The pod's identity, and its directories as kubelet lays them out (kubelet's
/// /var/lib/kubelet/pods/UID and /var/log/pods, here on the test host's tmpfs).
struct Pod {
    name: String,
    namespace: String,
    uid: String,
    dir: PathBuf,
    log_dir: PathBuf,
}

impl Pod {
    fn new(label: &str, scratch: &Path) -> Pod {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let name = format!("okvm-pod-{label}");
        let namespace = "default".to_string();
        let uid = format!("{:08x}-{label}-{}", nanos, std::process::id());
        let dir = scratch.join("pods").join(&uid);
        let log_dir = scratch
            .join("log/pods")
            .join(format!("{namespace}_{name}_{uid}"));
        Pod {
            name,
            namespace,
            uid,
            dir,
            log_dir,
        }
    }

    /// The labels kubelet puts on the sandbox and on each container.
    fn labels(&self, container: Option<&str>) -> HashMap<String, String> {
        let mut l = HashMap::from([
            ("io.kubernetes.pod.name".into(), self.name.clone()),
            ("io.kubernetes.pod.namespace".into(), self.namespace.clone()),
            ("io.kubernetes.pod.uid".into(), self.uid.clone()),
        ]);
        if let Some(c) = container {
            l.insert("io.kubernetes.container.name".into(), c.into());
        }
        l
    }

    /// kubelet's default namespaces: the pod's network and IPC, a PID
    /// namespace per container.
    fn namespaces() -> api::NamespaceOption {
        api::NamespaceOption {
            network: api::NamespaceMode::Pod as i32,
            pid: api::NamespaceMode::Container as i32,
            ipc: api::NamespaceMode::Pod as i32,
            ..Default::default()
        }
    }

    /// Where kubelet puts a BestEffort pod's cgroup (cgroupfs driver).
    fn cgroup_parent(&self) -> String {
        format!("/kubepods/besteffort/pod{}", self.uid)
    }

    fn sandbox_config(&self) -> api::PodSandboxConfig {
        api::PodSandboxConfig {
            metadata: Some(api::PodSandboxMetadata {
                name: self.name.clone(),
                uid: self.uid.clone(),
                namespace: self.namespace.clone(),
                attempt: 0,
            }),
            hostname: self.name.clone(),
            log_directory: self.log_dir.display().to_string(),
            dns_config: None,
            port_mappings: Vec::new(),
            labels: self.labels(None),
            annotations: HashMap::from([("kubernetes.io/config.source".into(), "api".into())]),
            linux: Some(api::LinuxPodSandboxConfig {
                cgroup_parent: self.cgroup_parent(),
                security_context: Some(api::LinuxSandboxSecurityContext {
                    namespace_options: Some(Self::namespaces()),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A container of this pod running `script` (with sh -c) from `image`
    /// (the id ImageStatus gave, as kubelet passes it), with kubelet's mounts:
    /// its managed /etc/hosts, the termination log, and the emptyDir volume
    /// `shared` at /shared.
    fn container_config(&self, name: &str, image: &str, script: &str) -> api::ContainerConfig {
        let termination = self
            .dir
            .join("containers")
            .join(name)
            .join("termination-log");
        std::fs::create_dir_all(termination.parent().unwrap()).unwrap();
        std::fs::write(&termination, "").unwrap();
        std::fs::create_dir_all(self.log_dir.join(name)).unwrap();
        let mount = |container_path: &str, host_path: &Path| api::Mount {
            container_path: container_path.into(),
            host_path: host_path.display().to_string(),
            ..Default::default()
        };
        api::ContainerConfig {
            metadata: Some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: image.into(),
                user_specified_image: BUSYBOX.into(),
                ..Default::default()
            }),
            command: vec!["sh".into(), "-c".into(), script.into()],
            working_dir: "/".into(),
            envs: vec![api::KeyValue {
                key: "OKVM_CONTAINER".into(),
                value: name.into(),
            }],
            mounts: vec![
                mount("/etc/hosts", &self.dir.join("etc-hosts")),
                mount("/dev/termination-log", &termination),
                mount("/shared", &self.shared()),
            ],
            labels: self.labels(Some(name)),
            annotations: HashMap::from([
                ("io.kubernetes.container.restartCount".into(), "0".into()),
                (
                    "io.kubernetes.container.terminationMessagePath".into(),
                    "/dev/termination-log".into(),
                ),
            ]),
            log_path: format!("{name}/0.log"),
            linux: Some(api::LinuxContainerConfig {
                // BestEffort, as kubelet sets it.
                resources: Some(api::LinuxContainerResources {
                    cpu_shares: 2,
                    oom_score_adj: 1000,
                    ..Default::default()
                }),
                security_context: Some(api::LinuxContainerSecurityContext {
                    namespace_options: Some(Self::namespaces()),
                    masked_paths: [
                        "/proc/acpi",
                        "/proc/kcore",
                        "/proc/keys",
                        "/proc/latency_stats",
                        "/proc/timer_list",
                        "/proc/timer_stats",
                        "/proc/sched_debug",
                        "/proc/scsi",
                        "/sys/firmware",
                    ]
                    .map(String::from)
                    .to_vec(),
                    readonly_paths: [
                        "/proc/asound",
                        "/proc/bus",
                        "/proc/fs",
                        "/proc/irq",
                        "/proc/sys",
                        "/proc/sysrq-trigger",
                    ]
                    .map(String::from)
                    .to_vec(),
                    ..Default::default()
                }),
            }),
            ..Default::default()
        }
    }

    /// The emptyDir volume both containers mount at /shared.
    fn shared(&self) -> PathBuf {
        self.dir.join("volumes/kubernetes.io~empty-dir/shared")
    }

    /// kubelet's managed /etc/hosts, written once the pod has its address.
    fn write_hosts(&self, ip: &str) {
        std::fs::create_dir_all(self.shared()).unwrap();
        std::fs::write(
            self.dir.join("etc-hosts"),
            format!(
                "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{}\n",
                self.name
            ),
        )
        .unwrap();
    }
}

/// The OCI spec containerd made for container `id` (the bundle's config.json
/// once its task exists), written to target/okvm/cri/LABEL-WHAT-config.json
/// for whoever writes a shim.
fn spec(id: &str, label: &str, what: &str) -> serde_json::Value {
    let out = Command::new("ctr")
        .args(["-n", "k8s.io", "containers", "info", id])
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("ctr containers info {id}: {e}: {out:?}"));
    let spec = info["Spec"].clone();
    let pretty = serde_json::to_string_pretty(&spec).unwrap();
    std::fs::write(
        out_dir().join(format!("{label}-{what}-config.json")),
        pretty,
    )
    .unwrap();
    spec
}

/// The network namespace a spec names (the CNI one CRI made for the pod).
fn netns_path(spec: &serde_json::Value) -> Option<String> {
    spec["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|n| n["type"] == "network")?["path"]
        .as_str()
        .map(String::from)
}

fn out_dir() -> PathBuf {
    let d = repo_root().join("target/okvm/cri");
    let _ = std::fs::create_dir_all(&d);
    d
}

/// The command lines of the processes (other than this one) that mention
/// any of `needles`.
fn processes_with(needles: &[&str]) -> Vec<String> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let pid = entry.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = text(&cmdline).replace('\0', " ");
        if needles.iter().any(|n| cmdline.contains(n)) {
            found.push(format!("process {pid}: {cmdline}"));
        }
    }
    found
}

/// What the host still has of the pod whose sandbox and containers are
/// `ids`: processes (runc's shim, okvm's helpers, virtiofsd), mounts, okvm
/// state, bundles, its network namespace, its address lease, cgroups. Empty
/// when nothing is left.
fn leftovers(ids: &[&str], netns: Option<&str>, ip: &str, pod: &Pod) -> Vec<String> {
    let mut needles = ids.to_vec();
    needles.extend(["okvm-internal", "virtiofsd"]);
    let mut found = processes_with(&needles);
    // The namespace's path names /var/run, its mount /run: match the name.
    let netns_name = netns.and_then(|ns| Path::new(ns).file_name()?.to_str());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    found.extend(
        mounts
            .lines()
            .filter(|m| {
                ids.iter()
                    .chain(&netns_name)
                    .any(|needle| m.contains(needle))
            })
            .map(|m| format!("mount {m}")),
    );
    if let Ok(dir) = std::fs::read_dir(OKVM_STATE) {
        found.extend(
            dir.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.starts_with('.'))
                .map(|n| format!("okvm state {OKVM_STATE}/{n}")),
        );
    }
    for id in ids {
        if Path::new(&format!("{BUNDLES}/{id}")).exists() {
            found.push(format!("bundle {BUNDLES}/{id}"));
        }
    }
    if let Some(ns) = netns.filter(|ns| Path::new(ns).exists()) {
        found.push(format!("network namespace {ns}"));
    }
    if !ip.is_empty() && Path::new(CNI_LEASES).join(ip).exists() {
        found.push(format!("address lease {CNI_LEASES}/{ip}"));
    }
    let cgroup = format!("/sys/fs/cgroup{}", pod.cgroup_parent());
    if let Ok(dir) = std::fs::read_dir(&cgroup) {
        found.extend(
            dir.flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| format!("cgroup {}", e.path().display())),
        );
    }
    found
}

fn pod(handler: &str) {
    require_testhost();
    let label = if handler.is_empty() { "runc" } else { handler };
    let mut steps = Steps::new(label);
    import_images();
    steps.done("import the images (podman, ctr)");

    let cri = Cri::connect(CONTAINERD_SOCKET)
        .unwrap_or_else(|e| panic!("connect to {CONTAINERD_SOCKET}: {e}{}", containerd_log()));
    let status = ok("Status", cri.wait_ready(Duration::from_secs(30)));
    check!(
        status.conditions.iter().all(|c| c.status),
        "the CRI runtime is not ready: {:?}",
        status.conditions
    );
    let version = ok("Version", cri.version());
    check!(
        version.runtime_name == "containerd" && version.runtime_api_version == "v1",
        "Version: {version:?}"
    );
    steps.done("Status, Version");

    // kubelet (pull policy IfNotPresent) asks for the image and pulls only
    // what the runtime lacks: nothing here, there is no network.
    let image = ok("ImageStatus", cri.image_status(BUSYBOX));
    let image = image.unwrap_or_else(|| {
        panic!(
            "{BUSYBOX} is not in containerd's k8s.io namespace: {}{}",
            sh("ctr -n k8s.io images ls -q 2>&1"),
            containerd_log()
        )
    });
    let pause = ok("ImageStatus (pause)", cri.image_status(PAUSE));
    check!(
        pause.is_some(),
        "{PAUSE} (the sandbox image) is not in k8s.io: {}",
        sh("ctr -n k8s.io images ls -q 2>&1")
    );
    steps.done("ImageStatus");

    let scratch = tempfile::tempdir().unwrap();
    let pod = Pod::new(label, scratch.path());
    std::fs::create_dir_all(&pod.log_dir).unwrap();
    let sandbox = pod.sandbox_config();
    let pod_id = ok(
        format!("RunPodSandbox (runtime handler {handler:?})"),
        cri.run_pod_sandbox(&sandbox, handler),
    );
    let mut guard = PodGuard {
        cri: &cri,
        id: pod_id.clone(),
        removed: false,
    };
    steps.done("RunPodSandbox");
    let netns = netns_path(&spec(&pod_id, label, "sandbox"));
    let ps = ok("PodSandboxStatus", cri.pod_sandbox_status(&pod_id));
    let ps_status = ps.status.clone().unwrap_or_default();
    check!(
        ps_status.state == api::PodSandboxState::SandboxReady as i32,
        "the sandbox is not ready: {ps_status:?}"
    );
    let ip = ps_status.network.clone().unwrap_or_default().ip;
    check!(!ip.is_empty(), "the pod has no address from CNI: {ps:?}");
    pod.write_hosts(&ip);

    // Two containers, as kubelet creates and starts them. The server answers
    // on the pod's port 8080; on SIGTERM it exits 42, so its exit code tells
    // that the signal reached it (not SIGKILL after the grace period).
    let server_cfg = pod.container_config(
        "server",
        &image.id,
        "echo server-up; trap 'echo got-term; exit 42' TERM; \
         nc -ll -p 8080 -e echo hello-from-server & wait",
    );
    let client_cfg = pod.container_config(
        "client",
        &image.id,
        "echo client-up; trap 'exit 0' TERM; sleep 2147483647 & wait",
    );
    let mut ids = Vec::new();
    for cfg in [&server_cfg, &client_cfg] {
        let name = &cfg.metadata.as_ref().unwrap().name;
        let id = ok(
            format!("CreateContainer {name}"),
            cri.create_container(&pod_id, cfg, &sandbox),
        );
        spec(&id, label, name);
        ok(format!("StartContainer {name}"), cri.start_container(&id));
        ids.push(id);
    }
    let (server, client) = (ids[0].clone(), ids[1].clone());
    steps.done("CreateContainer + StartContainer x2");

    let exec = |id: &str, cmd: &[&str]| -> ExecResult {
        ok(
            format!("ExecSync {cmd:?} in {id}"),
            cri.exec_sync(id, cmd, EXEC_LIMIT),
        )
    };
    let sh_in = |id: &str, script: &str| exec(id, &["sh", "-c", script]);

    // The client reaches the server on the pod's loopback: one network.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = exec(&client, &["nc", "127.0.0.1", "8080"]);
        if r.stdout == "hello-from-server\n" {
            break;
        }
        check!(
            Instant::now() < deadline,
            "the client does not reach the server on 127.0.0.1:8080: {r:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    steps.done("client reaches server on 127.0.0.1:8080 (ExecSync)");
    // ... and the pod's address is on its eth0.
    let r = exec(&client, &["ip", "-o", "-4", "addr", "show", "eth0"]);
    check!(
        r.exit_code == 0 && r.stdout.contains(&format!(" {ip}/")),
        "the pod's address {ip} is not on the client's eth0: {r:?}"
    );
    let r = exec(&client, &["nc", &ip, "8080"]);
    check!(
        r.stdout == "hello-from-server\n",
        "the client does not reach the server on the pod's address {ip}: {r:?}"
    );

    // Each container is its own process tree, with its own process as PID 1,
    // and all have the pod's hostname.
    for (name, id) in [("server", &server), ("client", &client)] {
        let r = exec(id, &["cat", "/proc/1/cmdline"]);
        check!(
            r.exit_code == 0 && r.stdout.contains(&format!("echo {name}-up")),
            "PID 1 of the {name} is not its own process: {r:?}"
        );
        let r = exec(id, &["hostname"]);
        check!(
            r.stdout.trim() == pod.name,
            "the {name}'s hostname is not the pod's ({}): {r:?}",
            pod.name
        );
        let r = exec(id, &["cat", "/etc/hosts"]);
        check!(
            r.stdout.contains(&format!("{ip}\t{}", pod.name)),
            "the {name}'s /etc/hosts is not kubelet's file: {r:?}"
        );
    }

    // Separate root filesystems, one shared emptyDir volume.
    let r = sh_in(
        &server,
        "echo from-server >/rootfs-marker && echo from-server >/shared/marker && cat /rootfs-marker",
    );
    check!(
        r == ExecResult {
            stdout: "from-server\n".into(),
            stderr: String::new(),
            exit_code: 0
        },
        "writing in the server's rootfs and volume: {r:?}"
    );
    let r = exec(&client, &["cat", "/rootfs-marker"]);
    check!(
        r.exit_code == 1 && r.stdout.is_empty() && r.stderr.contains("No such file"),
        "the server's rootfs file is visible in the client (or cat failed otherwise): {r:?}"
    );
    let r = exec(&client, &["cat", "/shared/marker"]);
    check!(
        r.stdout == "from-server\n",
        "the emptyDir volume is not shared: {r:?}"
    );
    let host_marker = std::fs::read_to_string(pod.shared().join("marker")).unwrap_or_default();
    check!(
        host_marker == "from-server\n",
        "the volume's host directory lacks the file: {host_marker:?}"
    );

    // Output, errors and the exit code of an exec.
    let r = sh_in(&client, "echo out; echo err >&2; exit 3");
    check!(
        r == ExecResult {
            stdout: "out\n".into(),
            stderr: "err\n".into(),
            exit_code: 3
        },
        "ExecSync with exit 3: {r:?}"
    );

    // Which kernel: runc's containers share the test host's; okvm's pod is
    // one guest of its own, whose kernel both containers share.
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    let boots: Vec<String> = [&server, &client]
        .iter()
        .map(|id| exec(id, &["cat", "/proc/sys/kernel/random/boot_id"]).stdout)
        .collect();
    if handler == "okvm" {
        let r = exec(&client, &["uname", "-r"]);
        assert_guest_kernel(r.stdout.trim());
        check!(
            boots[0] == boots[1] && !boots[0].trim().is_empty() && boots[0] != host_boot,
            "the containers are not in one guest: boot ids {boots:?}, the test host's {host_boot:?}"
        );
    } else {
        check!(
            boots.iter().all(|b| *b == host_boot),
            "runc's containers do not share the test host's kernel: boot ids {boots:?}, the test host's {host_boot:?}"
        );
    }
    steps.done("ExecSync checks");

    for (name, id) in [("server", &server), ("client", &client)] {
        let st = ok("ContainerStatus", cri.container_status(id))
            .status
            .unwrap_or_default();
        check!(
            st.state == api::ContainerState::ContainerRunning as i32,
            "the {name} is not running: {st:?}"
        );
    }
    // The server's stdout is in its CRI log file, in the pod's log directory.
    let server_log = pod.log_dir.join("server/0.log");
    let st = ok("ContainerStatus", cri.container_status(&server))
        .status
        .unwrap_or_default();
    check!(
        Path::new(&st.log_path) == server_log,
        "the server's log path {} is not {}",
        st.log_path,
        server_log.display()
    );
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    check!(
        log.lines().any(|l| l.contains(" stdout F server-up")),
        "{} lacks the server's output: {log:?}",
        server_log.display()
    );
    steps.done("ContainerStatus, log file");

    // StopContainer: SIGTERM reaches the process, which exits on its own.
    for (name, id, code) in [("server", &server, 42), ("client", &client, 0)] {
        let t = Instant::now();
        ok(
            format!("StopContainer {name}"),
            cri.stop_container(id, STOP_GRACE),
        );
        let took = t.elapsed();
        let st = ok("ContainerStatus", cri.container_status(id))
            .status
            .unwrap_or_default();
        check!(
            st.state == api::ContainerState::ContainerExited as i32 && st.exit_code == code,
            "the {name} after StopContainer ({took:?}): want EXITED with {code}: {st:?}"
        );
        check!(
            took < STOP_GRACE,
            "the {name} took {took:?} to stop: SIGTERM did not end it"
        );
    }
    let log = std::fs::read_to_string(&server_log).unwrap_or_default();
    check!(
        log.contains(" stdout F got-term"),
        "the server's trap output is not in its log: {log:?}"
    );
    steps.done("StopContainer x2");

    ok("StopPodSandbox", cri.stop_pod_sandbox(&pod_id));
    let ps = ok("PodSandboxStatus", cri.pod_sandbox_status(&pod_id));
    check!(
        ps.status.as_ref().map(|s| s.state) == Some(api::PodSandboxState::SandboxNotready as i32),
        "the sandbox is not NOTREADY after StopPodSandbox: {ps:?}"
    );
    steps.done("StopPodSandbox");
    for id in [&server, &client] {
        ok(format!("RemoveContainer {id}"), cri.remove_container(id));
    }
    ok("RemovePodSandbox", cri.remove_pod_sandbox(&pod_id));
    guard.removed = true;
    steps.done("RemoveContainer x2, RemovePodSandbox");

    let pods = ok("ListPodSandbox", cri.list_pod_sandbox());
    check!(
        !pods.iter().any(|p| p.id == pod_id),
        "ListPodSandbox still has the pod: {pods:?}"
    );
    let containers = ok("ListContainers", cri.list_containers());
    check!(
        !containers.iter().any(|c| ids.contains(&c.id)),
        "ListContainers still has the pod's containers: {containers:?}"
    );

    // Nothing of the pod is left on the host (the shim ends a moment after
    // RemovePodSandbox answered).
    let all: Vec<&str> = [pod_id.as_str(), server.as_str(), client.as_str()].to_vec();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = leftovers(&all, netns.as_deref(), &ip, &pod);
        if left.is_empty() {
            break;
        }
        check!(
            Instant::now() < deadline,
            "left behind by pod {pod_id} (containers {server}, {client}):\n{}",
            left.join("\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // kubelet removes the pod's cgroup; with it gone, nothing is.
    let cgroup = format!("/sys/fs/cgroup{}", pod.cgroup_parent());
    if Path::new(&cgroup).exists() {
        std::fs::remove_dir(&cgroup).unwrap_or_else(|e| panic!("rmdir {cgroup}: {e}"));
    }
    steps.done("nothing left on the host");
    drop(guard);
}
