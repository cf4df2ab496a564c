//! podman with `--runtime okvm` inside the test host: okvm installed the way
//! `make install` installs it (scripts/install, here into a prefix on the test
//! host's tmpfs, with podman's drop-in in the test host's own
//! /etc/containers), on the busybox image built locally from Debian packages.

use std::process::{Command, Output};
use std::sync::Once;
use std::time::{Duration, Instant};

use crate::{import_images, repo_root, require_testhost, text};

pub const IMAGE: &str = "localhost/okvm-busybox";
pub const PREFIX: &str = "/run/okvm-prefix";

/// Removes every container when a test ends, passed or failed, so that one
/// failure does not leave a running VM for the next test to trip over.
pub struct Cleanup;

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = sh("podman rm -a -f -t 0 >/dev/null 2>&1");
    }
}

#[must_use]
pub fn setup() -> Cleanup {
    require_testhost();
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        import_images();
        let out = Command::new(repo_root().join("scripts/install"))
            .args(["--prefix", PREFIX])
            .output()
            .unwrap();
        assert!(out.status.success(), "scripts/install: {out:?}");
    });
    Cleanup
}

pub fn sh(script: &str) -> Output {
    Command::new("bash").args(["-c", script]).output().unwrap()
}

/// `podman run --rm --runtime okvm [ARGS] IMAGE CMD...` through sh.
pub fn run(args: &str, cmd: &str) -> Output {
    sh(&format!(
        "podman run --rm --runtime okvm {args} {IMAGE} {cmd}"
    ))
}

pub fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

/// Waits until `podman logs NAME` shows `what`.
pub fn wait_for_log(name: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = sh(&format!("podman logs {name} 2>&1"));
        if stdout(&out).contains(what) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name} never logged {what:?}: {}",
            stdout(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nothing of okvm is left running: no sandbox or other helper, no
/// virtiofsd, no state.
pub fn assert_nothing_left() {
    let out =
        sh("pgrep -a -f '[o]kvm-internal|[v]irtiofsd' || true; ls /run/okvm 2>/dev/null || true");
    assert_eq!(stdout(&out).trim(), "", "left behind: {out:?}");
}
