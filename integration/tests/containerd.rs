//! containerd with okvm's shim, as a user drives it with `ctr`, inside the test
//! host (run-suite starts containerd with the build tree's shim on its PATH).
//! Every container here is a microVM booted by containerd-shim-okvm-v2.

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use okvm_integration::{assert_guest_kernel, import_images, require_testhost, text};

const RUNTIME: &str = "io.containerd.okvm.v2";
const IMAGE: &str = "localhost/okvm-busybox:latest";
/// The shim's own state root (see shim/src/service.rs).
const STATE: &str = "/run/okvm-shim/default";

fn setup() {
    require_testhost();
    import_images();
}

fn sh(script: &str) -> Output {
    Command::new("sh")
        .args(["-c", script])
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    text(&o.stdout)
}

/// `ctr run --rm` with okvm: the command's output and exit status.
fn ctr_run(id: &str, opts: &str, cmd: &str) -> Output {
    sh(&format!(
        "ctr run --rm --runtime {RUNTIME} {opts} {IMAGE} {id} {cmd}"
    ))
}

/// The task's status as `ctr task ls` shows it ("" once it is gone).
fn task_status(id: &str) -> String {
    let out = sh("ctr task ls");
    stdout(&out)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(id))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or_default()
        .to_string()
}

fn wait_status(id: &str, want: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let s = task_status(id);
        if s == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "task {id} is {s:?}, not {want:?}, after {limit:?}; containerd log: {}",
            stdout(&sh("tail -n 20 /run/testhost/containerd.log"))
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the container's file `path` (on a bind-mounted host dir)
/// holds something.
fn wait_file(path: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(s) = std::fs::read_to_string(path) {
            if !s.is_empty() {
                return s;
            }
        }
        assert!(Instant::now() < deadline, "{path} stayed empty");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Nothing of okvm is left: no sandbox or exec proxy, no virtiofsd, no state,
/// no tap, no rootfs mount.
fn assert_nothing_left() {
    let out = sh(&format!(
        "pgrep -a -f '[o]kvm-internal|[v]irtiofsd' || true; ls {STATE} 2>/dev/null | grep -v '^\\.' || true; \
         ip -o link show type tun 2>/dev/null || true; grep ' /run/containerd/.*/rootfs ' /proc/mounts || true"
    ));
    assert_eq!(stdout(&out).trim(), "", "left behind: {out:?}");
}

fn remove(id: &str) {
    sh(&format!(
        "ctr task kill -s SIGKILL {id} 2>/dev/null; sleep 0.5; ctr task delete -f {id} 2>/dev/null; ctr container rm {id} 2>/dev/null"
    ));
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn ctr_run_prints_the_microvms_output_and_exit_code() {
    setup();
    let out = ctr_run(
        "c-run",
        "",
        "sh -c 'cat /etc/okvm-image; uname -r; echo err >&2; exit 3'",
    );
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let s = stdout(&out);
    let mut lines = s.lines();
    assert_eq!(
        lines.next(),
        Some("okvm test image (busybox from Debian busybox-static)"),
        "{out:?}"
    );
    // The guest's own kernel, not the test host's: this ran in a VM.
    assert_guest_kernel(lines.next().unwrap_or_default());
    assert!(text(&out.stderr).contains("err"), "{out:?}");
    let ok = ctr_run("c-run", "", "true");
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn exec_kill_stats_and_ps_reach_the_running_task() {
    setup();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().display();
    let id = "c-exec";
    let out = sh(&format!(
        "ctr run -d --runtime {RUNTIME} --env OKVM_T=hello --mount type=bind,src={data},dst=/data,options=rbind:rw {IMAGE} {id} \
         sh -c 'trap \"echo got-term > /data/term; exit 42\" TERM; echo up > /data/up; while :; do sleep 0.1; done'"
    ));
    assert!(out.status.success(), "{out:?}");
    wait_file(&format!("{data}/up"), Duration::from_secs(120));
    wait_status(id, "RUNNING", Duration::from_secs(10));

    // exec: output, exit code, env (the container's) and cwd of the exec'd process.
    let ex = sh(&format!(
        "ctr task exec --exec-id e1 --cwd /etc {id} sh -c 'echo $OKVM_T $(pwd); exit 5'"
    ));
    assert_eq!(ex.status.code(), Some(5), "{ex:?}");
    assert_eq!(stdout(&ex), "hello /etc\n");

    // ps lists the container's processes (guest pids).
    let ps = sh(&format!("ctr task ps {id}"));
    assert!(ps.status.success(), "{ps:?}");
    assert!(stdout(&ps).lines().count() >= 2, "{ps:?}");

    // stats: the guest's memory and CPU, as cgroup metrics.
    let m = sh(&format!("ctr task metrics --format json {id}"));
    assert!(m.status.success(), "{m:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&m)).expect("metrics JSON");
    let usage = v["memory"]["usage"]["usage"].as_u64().unwrap_or(0);
    let limit = v["memory"]["usage"]["limit"].as_u64().unwrap_or(0);
    assert!(usage > 0 && usage < limit, "{v}");
    assert!(v["cpu"]["usage"]["total"].as_u64().unwrap_or(0) > 0, "{v}");
    assert!(v["pids"]["current"].as_u64().unwrap_or(0) >= 1, "{v}");

    // SIGTERM reaches the container's trap; the exit code is the trap's.
    let k = sh(&format!("ctr task kill -s SIGTERM {id}"));
    assert!(k.status.success(), "{k:?}");
    assert_eq!(
        wait_file(&format!("{data}/term"), Duration::from_secs(30)),
        "got-term\n"
    );
    wait_status(id, "STOPPED", Duration::from_secs(30));
    // ctr task delete reports the task's exit status (ctr 1.6: as a warning).
    let d = sh(&format!("ctr task delete {id}"));
    assert!(d.status.success(), "{d:?}");
    assert!(text(&d.stderr).contains("exit code 42"), "{d:?}");
    sh(&format!("ctr container rm {id}"));
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_terminal_is_a_pty_in_the_guest() {
    setup();
    // script(1) gives ctr a terminal, as a user's shell would.
    let out = sh(&format!(
        "script -qec 'stty rows 33 cols 101; ctr run --rm -t --runtime {RUNTIME} {IMAGE} c-tty sh -c \"tty; stty size; exit 6\"' /dev/null"
    ));
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let s = stdout(&out);
    assert!(s.contains("/dev/pts/"), "{out:?}");
    assert!(s.contains("33 101"), "{out:?}");
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn sigkill_of_the_vmm_or_the_shim_leaves_containerd_consistent_and_nothing_behind() {
    setup();
    for (id, victim) in [("c-kvmm", "vmm"), ("c-kshim", "shim")] {
        let out = sh(&format!(
            "ctr run -d --runtime {RUNTIME} {IMAGE} {id} sleep 1000"
        ));
        assert!(out.status.success(), "{out:?}");
        wait_status(id, "RUNNING", Duration::from_secs(120));
        let pattern = match victim {
            // The sandbox process: the VMM of this container.
            "vmm" => format!("[o]kvm-internal.*\"id\":\"{id}\""),
            _ => format!("[c]ontainerd-shim-okvm-v2 .*-id {id}"),
        };
        let k = sh(&format!("pkill -KILL -f '{pattern}'"));
        assert!(k.status.success(), "{victim} of {id} not found: {k:?}");
        // containerd sees the task exit (killed) rather than hanging on it.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = task_status(id);
            if s == "STOPPED" || s.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{id} is still {s}");
            std::thread::sleep(Duration::from_millis(200));
        }
        sh(&format!(
            "ctr task delete {id} 2>/dev/null; ctr container rm {id}"
        ));
        let ls = sh("ctr container ls -q");
        assert!(!stdout(&ls).contains(id), "{ls:?}");
        assert_nothing_left();
    }
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn ten_containers_started_concurrently_all_work() {
    setup();
    let children: Vec<_> = (0..10)
        .map(|i| {
            Command::new("sh")
                .args([
                    "-c",
                    &format!(
                        "ctr run --rm --runtime {RUNTIME} {IMAGE} c-many-{i} sh -c 'echo from-{i}; exit {i}'"
                    ),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for (i, c) in children.into_iter().enumerate() {
        let out = c.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(i as i32), "{i}: {out:?}");
        assert_eq!(stdout(&out), format!("from-{i}\n"), "{i}: {out:?}");
    }
    for i in 0..10 {
        remove(&format!("c-many-{i}"));
    }
    assert_nothing_left();
}
