//! What the `bench-*` binaries share: medians, shell steps that must work,
//! and podman set up with okvm the way `make install` does it.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::repo_root;

/// The locally built image every podman benchmark runs.
pub const IMAGE: &str = "localhost/okvm-busybox";
/// okvm against this runtime, in this order in every table.
pub const RUNTIMES: [&str; 2] = ["okvm", "crun"];

pub fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Runs `script` with bash; a failing step ends the benchmark with its output.
pub fn sh(script: &str) -> Output {
    let out = Command::new("bash")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
    out
}

/// Imports the test images into podman and installs okvm as `make install`
/// would, into a prefix on the test host's tmpfs.
pub fn podman_with_okvm() {
    let root = repo_root();
    sh(&format!(
        "{0}/integration/testhost/import-images && {0}/scripts/install --prefix /run/okvm-prefix >/dev/null",
        root.display()
    ));
}
