//! podman with `--runtime okvm` inside the test host: okvm installed the way
//! `make install` installs it (scripts/install, here into a prefix on the test
//! host's tmpfs, with podman's drop-in in the test host's own
//! /etc/containers), on the busybox image built locally from Debian packages.

use std::path::{Path, PathBuf};
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

/// How long one `podman run` may take before it counts as hung: a guard,
/// well past okvm's own 120 s boot deadline, not a measure of speed.
const RUN_GUARD: Duration = Duration::from_secs(300);

/// `podman run --rm --runtime okvm [ARGS] IMAGE CMD...` through sh. A run
/// that outlasts [`RUN_GUARD`] fails the test with what okvm's processes and
/// state say at that moment, instead of hanging the suite.
pub fn run(args: &str, cmd: &str) -> Output {
    let started = Instant::now();
    let out = sh(&format!(
        "timeout -k 10 {} podman run --rm --runtime okvm {args} {IMAGE} {cmd}",
        RUN_GUARD.as_secs()
    ));
    if started.elapsed() >= RUN_GUARD {
        panic!(
            "`podman run {args} {cmd}` did not end within {RUN_GUARD:?}: {out:?}\n{}",
            stdout(&sh(HUNG_RUN_REPORT))
        );
    }
    out
}

/// What a hung run leaves to look at: okvm's processes and, per container,
/// the end of its sandbox log and guest console.
const HUNG_RUN_REPORT: &str = "ps -eo pid,ppid,etime,stat,args | grep -E '[o]kvm|[v]irtiofsd|[c]onmon|[p]odman'; \
     for d in /run/okvm/*/; do echo \"--- $d\"; ls -l \"$d\"; cat \"$d\"state.json 2>/dev/null; echo; \
     tail -n 30 \"$d\"sandbox.log \"$d\"console.log 2>/dev/null; done 2>&1";

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

/// The sandbox process (the VMM) behind a running podman container, as an
/// administrator finds it: its pid (podman's `State.Pid`) and, from its
/// command line, its state directory and log file.
pub struct SandboxProcess {
    pub pid: u32,
    pub state_dir: PathBuf,
    /// Where its log can be read while it runs: the file `--log` named (or
    /// the state directory's sandbox.log), through the sandbox's own fd,
    /// since podman removes that file once `create` has succeeded.
    pub log: PathBuf,
}

impl SandboxProcess {
    pub fn of(name: &str) -> SandboxProcess {
        let out = sh(&format!("podman inspect -f '{{{{.State.Pid}}}}' {name}"));
        let pid: u32 = stdout(&out)
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("no pid for {name}: {out:?}"));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        // okvm --okvm-internal '{"log":…,"task":{"Sandbox":{"root":…,"id":…}}}'
        let invocation = cmdline
            .split(|&b| b == 0)
            .nth(2)
            .and_then(|j| serde_json::from_slice::<serde_json::Value>(j).ok())
            .unwrap_or_else(|| panic!("{pid} is not an okvm sandbox"));
        let task = &invocation["task"]["Sandbox"];
        let state_dir =
            Path::new(task["root"].as_str().unwrap()).join(task["id"].as_str().unwrap());
        let named = invocation["log"]
            .as_str()
            .map_or_else(|| state_dir.join(okvm::sandbox::LOG), PathBuf::from);
        let log = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|fd| std::fs::read_link(fd).is_ok_and(|t| t.starts_with(&named)))
            .unwrap_or(named);
        SandboxProcess {
            pid,
            state_dir,
            log,
        }
    }

    /// A field of /proc/PID/status in KiB (VmRSS, RssAnon, …).
    pub fn status_kib(&self, field: &str) -> u64 {
        crate::proc_status_kib(self.pid, field)
            .unwrap_or_else(|| panic!("no {field} for the sandbox {}", self.pid))
    }
}
