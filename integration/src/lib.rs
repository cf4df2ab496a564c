//! Helpers for the end-to-end suites.
//!
//! Two kinds of tests live in this crate, all `#[ignore]`d so that a plain
//! `cargo test` on a development machine stays fast and boots nothing:
//! - `tests/testhost.rs` runs on the machine itself and boots test hosts through
//!   `integration/testhost/run` to check the harness;
//! - the other suites run *inside* one test host (`make test` starts them there
//!   through `integration/run-suite`), where `/dev/kvm` is backed by (emulated)
//!   hardware virtualization and real guests boot.

pub mod bench;
pub mod cri;
pub mod guest;
pub mod hostile;
pub mod podman;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The repository this test binary was built from.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("integration/ has a parent")
        .to_path_buf()
}

/// `target/okvm/<name>`: the stable artifact paths `make` produces.
pub fn artifact(name: &str) -> PathBuf {
    let p = repo_root().join("target/okvm").join(name);
    assert!(
        p.exists(),
        "{} missing: run `make` first (it builds the guest kernel, initramfs and images)",
        p.display()
    );
    p
}

/// Inside the test host: imports the locally built test images into podman
/// (and containerd, when it runs), once per test process.
pub fn import_images() {
    static IMPORT: std::sync::Once = std::sync::Once::new();
    IMPORT.call_once(|| {
        let out = Command::new(repo_root().join("integration/testhost/import-images"))
            .output()
            .unwrap();
        assert!(out.status.success(), "import-images: {out:?}");
    });
}

/// `uname -r` as a container printed it: the guest's own kernel (ours), not
/// the test host's, or the container did not run in a VM.
pub fn assert_guest_kernel(printed: &str) {
    let host = Command::new("uname").arg("-r").output().unwrap();
    let host = text(&host.stdout).trim().to_string();
    assert!(
        printed.starts_with("6.12") && printed != host,
        "{printed} vs {host}"
    );
}

/// Fails the test unless it runs inside the emulated test host.
pub fn require_testhost() {
    assert_eq!(
        std::env::var("OKVM_TESTHOST").as_deref(),
        Ok("1"),
        "this suite boots guests: run it inside the test host (make test-e2e)"
    );
}

/// A command running `integration/testhost/run`, to add arguments and environment to.
pub fn testhost_command() -> Command {
    Command::new(repo_root().join("integration/testhost/run"))
}

/// `integration/testhost/run ARGS...`, capturing its output.
pub fn testhost(args: &[&str]) -> Output {
    testhost_command()
        .args(args)
        .output()
        .expect("cannot start integration/testhost/run")
}

/// Lossy text of a captured stream, for assertions and failure messages.
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `okvm` binary `make` builds.
pub fn okvm_bin() -> PathBuf {
    repo_root().join("target/release/okvm")
}

/// Runs `okvm boot ARGS...` to its end: (exit code, stdout, stderr).
pub fn okvm_boot(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(okvm_bin())
        .arg("boot")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("target/release/okvm (make builds it)");
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// Waits for `child` to end; kills it and fails the test after `limit`.
pub fn wait_within(child: &mut Child, limit: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = child.try_wait().expect("waitpid") {
            return st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A field of /proc/PID/status in KiB (`VmRSS`, `RssAnon`, …); None if the
/// process or the field is gone.
pub fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}
