//! Annotations and sizes are the host administrator's to grant, not the
//! pod's to take (docs/security.md, "Annotations and VM sizes"): a pod or
//! container that asks for the host's bridge (`io.okvm.network=bridge`, out of
//! its CNI network and NetworkPolicy) or for a VM larger than the host allows
//! is refused at create with one line naming what it asked for and where the
//! administrator decides, and leaves nothing behind; once the administrator's
//! /etc/okvm/config.toml (here the test host's own copy, stage2) grants it,
//! the same request runs and gets what it asked for.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

use okvm_integration::cri::{api, Cri, CONTAINERD_SOCKET};
use okvm_integration::podman::{self, setup, sh, stdout};
use okvm_integration::{import_images, repo_root, require_testhost, text};

const CONFIG: &str = "/etc/okvm/config.toml";
/// okvm's shim keeps its containers' state here (shim/src/service.rs).
const SHIM_STATE: &str = "/run/okvm-shim/k8s.io";
const BUSYBOX: &str = "localhost/okvm-busybox:latest";
/// What the tests ask for: more than the default VM (256 MiB) and the small
/// maximum, so that a guest of this size shows the grant took effect.
const ASKED_MIB: u64 = 640;
/// The administrator's maximum before and after granting more.
const SMALL_MAX: &str = "max_memory_mib = 512\n";
const GRANTED: &str = "enable_annotations = [\"io.okvm.*\"]\nmax_memory_mib = 1024\n";
/// The okvm bridge's subnet (network.conf's default): a guest there is on the
/// host's bridge, not on the network its engine gave it.
const BRIDGE_SUBNET: &str = "10.87.0.";

/// /etc/okvm/config.toml as the administrator writes it, put back as it was
/// when dropped (also when the test fails), so the suites after this one
/// see the host's own policy.
struct HostPolicy {
    before: Option<Vec<u8>>,
}

impl HostPolicy {
    fn new() -> HostPolicy {
        HostPolicy {
            before: std::fs::read(CONFIG).ok(),
        }
    }

    fn set(&self, text: &str) {
        std::fs::create_dir_all(Path::new(CONFIG).parent().unwrap()).unwrap();
        std::fs::write(CONFIG, text).unwrap();
    }
}

impl Drop for HostPolicy {
    fn drop(&mut self) {
        let _ = match &self.before {
            Some(bytes) => std::fs::write(CONFIG, bytes),
            None => std::fs::remove_file(CONFIG),
        };
    }
}

/// Nothing of okvm is left by either front end: no helper or virtiofsd, no
/// state (the CLI's or the shim's), no tap. A shim ends a moment after
/// containerd removed its last container, so this waits for it a while.
fn assert_nothing_left() {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = sh(&format!(
            "pgrep -a -f '[o]kvm-internal|[v]irtiofsd|[c]ontainerd-shim-okvm' || true; \
             ls {SHIM_STATE} 2>/dev/null | grep -v '^\\.' || true; ip -o link show type tun || true"
        ));
        let left = stdout(&out);
        if left.trim().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "left behind: {left}");
        std::thread::sleep(Duration::from_millis(300));
    }
    podman::assert_nothing_left();
}

/// `MemTotal` of /proc/meminfo, in KiB.
fn mem_total_kib(meminfo: &str) -> u64 {
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal in {meminfo:?}"))
}

/// Asserts a guest of `ASKED_MIB` MiB: more than the default VM and the
/// small maximum could hold, no more than was asked.
fn assert_sized_as_asked(meminfo: &str) {
    let kib = mem_total_kib(meminfo);
    assert!(
        (512 * 1024..=ASKED_MIB * 1024).contains(&kib),
        "MemTotal {kib} KiB is not a {ASKED_MIB} MiB guest's"
    );
}

/// The IPv4 address on eth0 in `ip -o -4 addr show eth0` output.
fn eth0_address(out: &str) -> String {
    out.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no address on eth0: {out:?}"))
        .to_string()
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn install_writes_the_documented_policy_once_and_keeps_the_admins() {
    let _cleanup = setup();
    let policy = HostPolicy::new();
    let install = || {
        let out = std::process::Command::new(repo_root().join("scripts/install"))
            .args(["--prefix", podman::PREFIX])
            .output()
            .unwrap();
        assert!(out.status.success(), "scripts/install: {out:?}");
    };
    // A host without a policy of its own gets the documented defaults.
    let _ = std::fs::remove_file(CONFIG);
    install();
    let sample = std::fs::read_to_string(repo_root().join("docs/config.toml")).unwrap();
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), sample);
    // An administrator's own is never replaced.
    policy.set(GRANTED);
    install();
    assert_eq!(std::fs::read_to_string(CONFIG).unwrap(), GRANTED);
    // The containerd handler lets okvm see pods' io.okvm.* annotations, so
    // that okvm, not containerd, decides (and says so).
    let containerd = std::fs::read_to_string("/etc/containerd/config.toml").unwrap();
    assert!(
        containerd.contains(r#"pod_annotations = ["io.okvm.*"]"#),
        "{containerd}"
    );
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn podman_cannot_take_the_hosts_bridge_or_more_memory_than_granted() {
    let _cleanup = setup();
    let policy = HostPolicy::new();
    policy.set(SMALL_MAX);
    // Each refusal: a failed run whose error names the annotation or the
    // spec field, the value and the maximum, and where the administrator
    // decides; and no VM, tap or state.
    for (args, said) in [
        (
            "--annotation io.okvm.network=bridge".to_string(),
            "annotation io.okvm.network is not allowed on this host: its administrator allows \
             io.okvm.* annotations with enable_annotations in /etc/okvm/config.toml"
                .to_string(),
        ),
        (
            format!("--annotation io.okvm.memory_mib={ASKED_MIB}"),
            format!(
                "annotation io.okvm.memory_mib={ASKED_MIB} asks for {ASKED_MIB} MiB of memory; this \
                 host allows at most 512 MiB of memory per VM (max_memory_mib in /etc/okvm/config.toml)"
            ),
        ),
        (
            format!("--memory {ASKED_MIB}m"),
            format!(
                "linux.resources.memory.limit={} asks for {ASKED_MIB} MiB of memory",
                ASKED_MIB << 20
            ),
        ),
        (
            "--annotation io.okvm.vcpus=9".to_string(),
            "annotation io.okvm.vcpus=9 asks for 9 vCPUs; this host allows at most 8 vCPUs per VM"
                .to_string(),
        ),
    ] {
        let out = podman::run(&args, "true");
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{args}: {out:?}");
        assert!(err.contains(&said), "{args}: wanted {said:?} in {err:?}");
        assert_nothing_left();
    }
    // The administrator grants both: the same container runs on the host's
    // bridge, in a VM of the size it asked for.
    policy.set(GRANTED);
    let out = podman::run(
        &format!("--annotation io.okvm.network=bridge --memory {ASKED_MIB}m"),
        "sh -c 'ip -o -4 addr show eth0; cat /proc/meminfo'",
    );
    assert!(out.status.success(), "{out:?}");
    let said = stdout(&out);
    assert!(
        eth0_address(&said).starts_with(BRIDGE_SUBNET),
        "not on the okvm bridge: {said}"
    );
    assert_sized_as_asked(&said);
    assert_nothing_left();
}

/// A pod sandbox as kubelet asks for it, with pod annotations `annotations`
/// and, when given, the pod's memory limit (what kubelet sums over its
/// containers; containerd passes it to okvm as
/// `io.kubernetes.cri.sandbox-memory`).
fn pod_config(
    name: &str,
    annotations: &[(&str, &str)],
    memory_limit: Option<u64>,
    log_dir: &Path,
) -> api::PodSandboxConfig {
    api::PodSandboxConfig {
        metadata: Some(api::PodSandboxMetadata {
            name: name.into(),
            uid: format!("{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: log_dir.display().to_string(),
        annotations: annotations
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect::<HashMap<_, _>>(),
        linux: Some(api::LinuxPodSandboxConfig {
            resources: memory_limit.map(|bytes| api::LinuxContainerResources {
                memory_limit_in_bytes: bytes as i64,
                ..Default::default()
            }),
            security_context: Some(api::LinuxSandboxSecurityContext {
                namespace_options: Some(api::NamespaceOption {
                    network: api::NamespaceMode::Pod as i32,
                    pid: api::NamespaceMode::Container as i32,
                    ipc: api::NamespaceMode::Pod as i32,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// RunPodSandbox under okvm, which must be refused with `said` in the error.
fn assert_pod_refused(cri: &Cri, config: &api::PodSandboxConfig, said: &str) {
    match cri.run_pod_sandbox(config, "okvm") {
        Ok(id) => {
            let _ = cri.stop_pod_sandbox(&id);
            let _ = cri.remove_pod_sandbox(&id);
            panic!("pod {id} ran; wanted a refusal saying {said:?}");
        }
        Err(e) => assert!(
            e.message().contains(said),
            "wanted {said:?} in {:?}: {}",
            e.code(),
            e.message()
        ),
    }
    // containerd keeps no pod that did not start, and okvm made nothing.
    let pods = cri.list_pod_sandbox().unwrap();
    assert!(
        pods.iter()
            .all(|p| p.metadata.as_ref().map(|m| &m.name)
                != config.metadata.as_ref().map(|m| &m.name)),
        "{pods:?}"
    );
    assert_nothing_left();
}

/// Stops and removes a pod however its test ends.
struct PodGuard<'a> {
    cri: &'a Cri,
    id: String,
}

impl Drop for PodGuard<'_> {
    fn drop(&mut self) {
        let _ = self.cri.stop_pod_sandbox(&self.id);
        let _ = self.cri.remove_pod_sandbox(&self.id);
    }
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_pod_cannot_take_the_hosts_bridge_or_more_memory_than_granted() {
    require_testhost();
    import_images();
    let cri = Cri::connect(CONTAINERD_SOCKET).unwrap();
    cri.wait_ready(Duration::from_secs(30)).unwrap();
    let image = cri
        .image_status(BUSYBOX)
        .unwrap()
        .unwrap_or_else(|| panic!("{BUSYBOX} is not in containerd's k8s.io namespace"));
    let logs = tempfile::tempdir().unwrap();
    let policy = HostPolicy::new();
    policy.set(SMALL_MAX);
    let asked = ASKED_MIB.to_string();
    let bridge = pod_config(
        "okvm-bridge",
        &[("io.okvm.network", "bridge")],
        None,
        logs.path(),
    );
    assert_pod_refused(
        &cri,
        &bridge,
        "annotation io.okvm.network is not allowed on this host: its administrator allows \
         io.okvm.* annotations with enable_annotations in /etc/okvm/config.toml",
    );
    let big = pod_config(
        "okvm-big",
        &[("io.okvm.memory_mib", &asked)],
        None,
        logs.path(),
    );
    assert_pod_refused(
        &cri,
        &big,
        &format!(
            "annotation io.okvm.memory_mib={ASKED_MIB} asks for {ASKED_MIB} MiB of memory; this \
             host allows at most 512 MiB of memory per VM (max_memory_mib in /etc/okvm/config.toml)"
        ),
    );
    // The pod's own resources size its VM too, and are bounded the same way.
    let limited = pod_config("okvm-limited", &[], Some(ASKED_MIB << 20), logs.path());
    assert_pod_refused(
        &cri,
        &limited,
        &format!(
            "the pod's memory limit (annotation io.kubernetes.cri.sandbox-memory={}) asks for \
             {ASKED_MIB} MiB of memory",
            ASKED_MIB << 20
        ),
    );

    // Granted: the pod's VM is on the host's bridge with the memory it asked for.
    policy.set(GRANTED);
    let pod = pod_config(
        "okvm-granted",
        &[
            ("io.okvm.network", "bridge"),
            ("io.okvm.memory_mib", &asked),
        ],
        None,
        logs.path(),
    );
    let pod_id = cri.run_pod_sandbox(&pod, "okvm").unwrap();
    let guard = PodGuard {
        cri: &cri,
        id: pod_id.clone(),
    };
    let container = api::ContainerConfig {
        metadata: Some(api::ContainerMetadata {
            name: "app".into(),
            attempt: 0,
        }),
        image: Some(api::ImageSpec {
            image: image.id.clone(),
            ..Default::default()
        }),
        command: vec!["sleep".into(), "2147483647".into()],
        log_path: "app.log".into(),
        linux: Some(api::LinuxContainerConfig {
            security_context: pod.linux.as_ref().and_then(|l| {
                Some(api::LinuxContainerSecurityContext {
                    namespace_options: l.security_context.as_ref()?.namespace_options.clone(),
                    ..Default::default()
                })
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    // The pod's containers carry its annotations too, and each create (the
    // task's, at StartContainer) reads the policy afresh: once the
    // administrator takes the grant back, the pod's next container is refused.
    policy.set(SMALL_MAX);
    let mut refused = container.clone();
    refused.metadata = Some(api::ContainerMetadata {
        name: "refused".into(),
        attempt: 0,
    });
    let id = cri.create_container(&pod_id, &refused, &pod).unwrap();
    let e = cri
        .start_container(&id)
        .expect_err("a pod's container started against the policy");
    assert!(
        e.message()
            .contains("annotation io.okvm.network is not allowed on this host"),
        "{e:?}"
    );
    cri.remove_container(&id).unwrap();
    let left = sh(&format!("ls {SHIM_STATE} | grep -v '^\\.'"));
    assert_eq!(stdout(&left).trim(), pod_id, "only the pod's own state");
    policy.set(GRANTED);
    let app = cri.create_container(&pod_id, &container, &pod).unwrap();
    cri.start_container(&app).unwrap();
    let exec = |cmd: &[&str]| {
        let r = cri.exec_sync(&app, cmd, Duration::from_secs(60)).unwrap();
        assert_eq!(r.exit_code, 0, "{cmd:?}: {r:?}");
        r.stdout
    };
    assert_sized_as_asked(&exec(&["cat", "/proc/meminfo"]));
    let address = eth0_address(&exec(&["ip", "-o", "-4", "addr", "show", "eth0"]));
    let cni = cri
        .pod_sandbox_status(&pod_id)
        .unwrap()
        .status
        .and_then(|s| s.network)
        .map(|n| n.ip)
        .unwrap_or_default();
    assert!(
        address.starts_with(BRIDGE_SUBNET) && !address.starts_with(&format!("{cni}/")),
        "the pod's guest is at {address}, its CNI address is {cni}"
    );
    cri.stop_container(&app, Duration::from_secs(5)).unwrap();
    cri.remove_container(&app).unwrap();
    drop(guard);
    assert_nothing_left();
}
