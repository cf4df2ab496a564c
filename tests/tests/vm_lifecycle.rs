//! What only a VM runtime must get right, driven through the `okvm` CLI inside
//! the test host (`integration/run-suite okvm-tests:vm_lifecycle`, with
//! `OKVM_CONFORMANCE_RUNTIME` naming okvm): SIGKILL of the sandbox process,
//! a missing rootfs, pause/resume of the vCPUs, detached exec with a pid file,
//! signals passed on by a foreground `run`, the guest's usage through
//! `events`, many concurrent execs into one container, and crashes of the
//! other processes a container has on the host (`okvm create` while the VM
//! boots, virtiofsd, a pod container's helper), after each of which
//! `delete` leaves nothing.

use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use okvm_tests::oci::{
    assert_no_trace, default_config, processes_naming, run_to_files, set_pod, state_pid,
    HostProcess, Sandbox,
};
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(120);

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn sigkill_of_the_sandbox_then_delete_leaves_nothing() {
    let sb = Sandbox::new();
    let id = sb.new_id("sigkill");
    let bundle = sb.bundle("sigkill", &["sleep", "1000"]);
    let state = sb.start_container(&id, &bundle);
    let sandbox = HostProcess::find(state_pid(&state)).expect("the sandbox runs");
    nix_kill(sandbox.pid, 9);
    let deadline = Instant::now() + LIMIT;
    while sb.state(&id)["status"] != "stopped" {
        assert!(Instant::now() < deadline, "{:#}", sb.state(&id));
        std::thread::sleep(Duration::from_millis(50));
    }
    sb.invoke(&["delete", &id]).assert_success();
    assert_no_trace(&sb, &id);
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn a_missing_rootfs_is_named_and_leaves_nothing() {
    let sb = Sandbox::new();
    let id = sb.new_id("norootfs");
    let bundle = sb.bundle("norootfs", &["true"]);
    std::fs::remove_dir_all(bundle.rootfs()).unwrap();
    sb.create(&id, bundle.path(), &[])
        .assert_failure_with_message()
        .assert_stderr_mentions_any(&["rootfs"]);
    assert_no_trace(&sb, &id);
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn pause_stops_the_guest_and_resume_continues_it() {
    let sb = Sandbox::new();
    let id = sb.new_id("pause");
    let bundle = sb.bundle(
        "pause",
        &["sh", "-c", "i=0; while :; do i=$((i+1)); echo $i > /count.tmp; mv /count.tmp /count; sleep 0.1; done"],
    );
    sb.start_container(&id, &bundle);
    bundle.wait_for_marker("count");
    sb.invoke(&["pause", &id]).assert_success();
    assert_eq!(sb.state(&id)["status"], "paused");
    std::thread::sleep(Duration::from_millis(500));
    let frozen = bundle.wait_for_marker("count");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        bundle.wait_for_marker("count"),
        frozen,
        "the guest ran while paused"
    );
    sb.invoke(&["start", &id]).assert_failure_with_message();
    sb.invoke(&["resume", &id]).assert_success();
    assert_eq!(sb.state(&id)["status"], "running");
    let deadline = Instant::now() + LIMIT;
    while bundle.wait_for_marker("count") == frozen {
        assert!(Instant::now() < deadline, "the guest did not resume");
        std::thread::sleep(Duration::from_millis(100));
    }
    sb.invoke(&["delete", "--force", &id]).assert_success();
    assert_no_trace(&sb, &id);
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn detached_exec_writes_the_proxy_pid_which_ends_with_the_process() {
    let sb = Sandbox::new();
    let id = sb.new_id("exec");
    let bundle = sb.bundle("exec", &["sleep", "1000"]);
    sb.start_container(&id, &bundle);
    let pid_file = sb.work_file("exec.pid");
    let pf = pid_file.display().to_string();
    sb.invoke(&[
        "exec",
        "--detach",
        "--pid-file",
        &pf,
        &id,
        "sh",
        "-c",
        "sleep 1; echo hi > /exec-mark",
    ])
    .assert_success();
    let pid: i64 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(bundle.wait_for_marker("exec-mark"), "hi\n");
    let deadline = Instant::now() + LIMIT;
    while HostProcess::find(pid).is_some_and(|p| p.is_running()) {
        assert!(
            Instant::now() < deadline,
            "the exec proxy {pid} outlived its process"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // A non-detached exec ends with the process's code.
    let out = sb.invoke(&["exec", &id, "sh", "-c", "exit 6"]);
    assert_eq!(out.code(), Some(6), "{out:#?}");
    sb.invoke(&["delete", "--force", &id]).assert_success();
    assert_no_trace(&sb, &id);
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn a_foreground_run_passes_sigterm_on_and_ends_as_the_container() {
    let sb = Sandbox::new();
    let id = sb.new_id("fg");
    let bundle = sb.bundle(
        "fg",
        &[
            "sh",
            "-c",
            "trap 'echo term > /got; exit 9' TERM; touch /ready; while :; do sleep 0.1; done",
        ],
    );
    let stderr_path = bundle.path().join("okvm-run.stderr");
    let mut child = sb
        .command()
        .args(["run", "--bundle"])
        .arg(bundle.path())
        .arg(&id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .unwrap();
    // `run` includes the whole boot, so this wait gets the boot-inclusive limit,
    // and a run that ends early is reported with what okvm printed.
    let deadline = Instant::now() + LIMIT;
    while !bundle.has_marker("ready") {
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "okvm run ended ({st}) before the container was ready: {}",
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the container never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    nix_kill(child.id() as i64, 15);
    let status = wait_for_exit(&mut child, "okvm run did not end");
    assert_eq!(status.code(), Some(9));
    assert_eq!(bundle.wait_for_marker("got"), "term\n");
    assert_no_trace(&sb, &id);
}

/// Checks one `stats` event of container `id` running `sleep` in a VM of
/// `mem_mib`, and returns it.
#[track_caller]
fn assert_stats_event(line: &str, id: &str, mem_mib: u64) -> Value {
    let v: Value = serde_json::from_str(line)
        .unwrap_or_else(|e| panic!("not one JSON object ({e}): {line:?}"));
    assert_eq!(v["type"], "stats", "{v:#}");
    assert_eq!(v["id"], id, "{v:#}");
    let data = &v["data"];
    let num = |ptr: &str| {
        data.pointer(ptr)
            .and_then(Value::as_u64)
            .unwrap_or_else(|| panic!("no number at {ptr}: {v:#}"))
    };
    let (usage, limit) = (num("/memory/usage/usage"), num("/memory/usage/limit"));
    assert!(usage > 0 && usage < limit, "{v:#}");
    // The limit is the guest's MemTotal: the VM's size less what the kernel keeps.
    let vm = mem_mib << 20;
    assert!(
        limit.abs_diff(vm) <= vm / 10,
        "limit {limit} vs VM {vm}: {v:#}"
    );
    num("/memory/cache");
    assert!(num("/pids/current") >= 1, "{v:#}");
    assert!(num("/cpu/usage/total") > 0, "{v:#}");
    assert!(num("/cpu/usage/user") + num("/cpu/usage/kernel") <= num("/cpu/usage/total"));
    v
}

/// Waits up to [`LIMIT`] for `child` to end; `what` says what did not.
#[track_caller]
fn wait_for_exit(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return st;
        }
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process that is killed if the test ends before it does.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn events_report_the_guests_usage_and_follow_it_until_it_stops() {
    const MEM_MIB: u64 = 384;
    let sb = Sandbox::new();
    let id = sb.new_id("events");
    let bundle = sb.bundle("events", &["sleep", "1000"]);
    let mut config = default_config(&["sleep", "1000"]);
    config["annotations"] = json!({ "io.okvm.memory_mib": MEM_MIB.to_string() });
    bundle.write_config(&config);
    sb.start_container(&id, &bundle);

    let out = sb.invoke(&["events", "--stats", &id]);
    out.assert_success();
    assert_eq!(out.stdout.lines().count(), 1, "{out:#?}");
    assert_stats_event(out.stdout.trim_end(), &id, MEM_MIB);

    let out = sb.invoke(&["events", "--stats", "nosuch"]);
    out.assert_failure_with_message();
    assert_eq!(out.stderr.trim_end().lines().count(), 1, "{out:#?}");
    assert!(out.stderr.contains("nosuch"), "{out:#?}");

    // Without --stats: a line each interval, until the container stops.
    let mut events = Reaped(
        sb.command()
            .args(["events", "--interval", "1", &id])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap(),
    );
    let stdout = events.0.stdout.take().unwrap();
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    for _ in 0..2 {
        let line = lines
            .recv_timeout(LIMIT)
            .expect("a stats line each second")
            .unwrap();
        assert_stats_event(&line, &id, MEM_MIB);
    }
    sb.invoke(&["kill", &id, "KILL"]).assert_success();
    let status = wait_for_exit(&mut events.0, "events outlived the container");
    assert!(status.success(), "{status}");
    sb.invoke(&["delete", &id]).assert_success();
    assert_no_trace(&sb, &id);
}

fn nix_kill(pid: i64, sig: i32) {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success());
}

fn sh(script: &str) {
    let st = Command::new("sh").args(["-c", script]).status().unwrap();
    assert!(st.success(), "{script}: {st}");
}

/// A pod as containerd's CRI plugin marks it: the sandbox boots the VM, and
/// a container of the pod runs in that same guest, with a rootfs of its own
/// that the host mounted only after the VM booted, and the pod's network.
#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn a_pods_container_runs_in_the_vm_its_sandbox_booted() {
    let sb = Sandbox::new();
    let pod = sb.new_id("pod");
    let sandbox = sb.bundle(
        "pod",
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id > /b.tmp; mv /b.tmp /boot-id; touch /pod-only; \
             while :; do echo from-the-pod | nc -l -p 7000; done",
        ],
    );
    let annotate = |config: &mut Value, kind: &str| set_pod(config, kind, &pod);
    let mut sandbox_config = sandbox.config();
    annotate(&mut sandbox_config, "sandbox");
    sandbox.write_config(&sandbox_config);
    sb.start_container(&pod, &sandbox);
    let pod_boot = sandbox.wait_for_marker("boot-id");

    // The container's rootfs: a private tmpfs mounted now, which the pod's
    // sandbox (made earlier) cannot have seen.
    let id = sb.new_id("member");
    let member = sb.bundle(
        "member",
        &[
            "sh",
            "-c",
            "cat /proc/sys/kernel/random/boot_id > /boot-id; \
             test -e /pod-only && echo shared > /root-is || echo own > /root-is; \
             nc 127.0.0.1 7000 > /got; echo out-of-the-member; exit 3",
        ],
    );
    let late = member.path().join("late-root");
    std::fs::create_dir(&late).unwrap();
    sh(&format!(
        "mount -t tmpfs late {0} && mount --make-private {0} && cp -a {1}/. {0}/",
        late.display(),
        member.rootfs().display()
    ));
    let mut config = member.config();
    config["root"]["path"] = json!(late);
    annotate(&mut config, "container");
    member.write_config(&config);
    let out = sb.run_foreground(&id, &member);
    let read = |name: &str| std::fs::read_to_string(late.join(name)).unwrap_or_default();
    assert_eq!(out.code(), Some(3), "{out:#?}");
    assert!(out.stdout.contains("out-of-the-member"), "{out:#?}");
    assert_eq!(read("boot-id"), pod_boot, "not the pod's guest");
    assert_eq!(read("root-is"), "own\n", "the pod's rootfs showed through");
    assert_eq!(read("got"), "from-the-pod\n", "no loopback to the pod");
    assert_no_trace(&sb, &id);
    // The pod goes on without it, and a second container joins it as well.
    let again = sb.new_id("again");
    config["process"]["args"] = json!(["sh", "-c", "nc 127.0.0.1 7000"]);
    member.write_config(&config);
    let out = sb.run_foreground(&again, &member);
    assert_eq!(out.stdout, "from-the-pod\n", "{out:#?}");
    assert_eq!(sb.state(&pod)["status"], "running");
    // exec reaches a pod's container in the pod's guest, and a forced delete
    // of a running one ends its process there and leaves nothing.
    let third = sb.new_id("third");
    config["process"]["args"] = json!(["sleep", "1000"]);
    member.write_config(&config);
    sb.start_container(&third, &member);
    let out = sb.invoke(&["exec", &third, "cat", "/proc/sys/kernel/random/boot_id"]);
    assert_eq!(out.stdout, pod_boot, "{out:#?}");
    sb.invoke(&["delete", "--force", &third]).assert_success();
    assert_no_trace(&sb, &third);
    let out = sb.invoke(&[
        "exec",
        &pod,
        "sh",
        "-c",
        "ps -o args | grep -c '^sleep 1000'",
    ]);
    assert_eq!(out.stdout.trim(), "0", "{out:#?}");
    // A container naming a pod okvm does not run is refused.
    let stray = sb.new_id("stray");
    config["annotations"]["io.kubernetes.cri.sandbox-id"] = json!("no-such-pod");
    member.write_config(&config);
    sb.create(&stray, member.path(), &[])
        .assert_failure_with_message()
        .assert_stderr_mentions_any(&["pod sandbox no-such-pod"]);
    assert_no_trace(&sb, &stray);
    sb.invoke(&["delete", "--force", &pod]).assert_success();
    assert_no_trace(&sb, &pod);
    sh(&format!("umount {}", late.display()));
}

/// Exec proxies share their VM's host vsock ports (`<state>/vsock_<port>`,
/// sets of four from 20000): each claims a set of its own, passes over a set
/// that is taken (by a live proxy, or by the socket a crashed one left), and
/// never removes one. Many execs at once into one container whose port
/// space is nearly full of such leftovers: each gets exactly its own
/// output, and every leftover is still there afterwards.
#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn concurrent_execs_never_share_ports_or_output() {
    const EXECS: usize = 12;
    const SETS: u32 = 10_000;
    const LINES: usize = 300;
    let sb = Sandbox::new();
    let id = sb.new_id("execs");
    let bundle = sb.bundle("execs", &["sleep", "1000"]);
    sb.start_container(&id, &bundle);
    // Sockets nobody listens on, at the stdout port of all but a few sets:
    // where the execs' searches start depends on their pids, so most land
    // on leftovers and several end up at the same free set.
    let dir = sb.root().join(&id);
    let free_every = SETS / (2 * EXECS as u32);
    let stale: Vec<std::path::PathBuf> = (0..SETS)
        .filter(|set| set % free_every != 0)
        .map(|set| dir.join(format!("vsock_{}", 20_000 + set * 4 + 1)))
        .collect();
    for path in &stale {
        drop(std::os::unix::net::UnixListener::bind(path).unwrap());
    }
    let script = |n: usize| {
        format!(
            "i=0; while [ $i -lt {LINES} ]; do echo exec-{n}-$i; i=$((i+1)); done; echo err-{n} >&2"
        )
    };
    let commands: Vec<Command> = (0..EXECS)
        .map(|n| {
            let mut cmd = sb.command();
            cmd.args(["exec", &id, "sh", "-c", &script(n)]);
            cmd
        })
        .collect();
    let outputs: Vec<okvm_tests::oci::Output> = std::thread::scope(|s| {
        let running: Vec<_> = commands
            .into_iter()
            .map(|mut cmd| s.spawn(move || okvm_tests::oci::run_piped(&mut cmd, LIMIT)))
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (n, out) in outputs.iter().enumerate() {
        out.assert_success();
        let want: String = (0..LINES).map(|i| format!("exec-{n}-{i}\n")).collect();
        assert!(out.stdout == want, "exec {n} got other output: {out:#?}");
        let errs: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("err-"))
            .collect();
        assert_eq!(errs, [format!("err-{n}")], "{out:#?}");
    }
    let removed = stale.iter().filter(|p| !p.exists()).count();
    assert_eq!(removed, 0, "leftover sockets were removed");
    sb.invoke(&["delete", "--force", &id]).assert_success();
    assert_no_trace(&sb, &id);
}

/// Waits until exactly one running process's command line names all of
/// `needles`, and returns it.
#[track_caller]
fn wait_for_process(needles: &[&str]) -> HostProcess {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let [one] = processes_naming(needles)[..] {
            return one;
        }
        assert!(Instant::now() < deadline, "no process naming {needles:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The sandbox's log in container `id`'s state directory.
fn sandbox_log(sb: &Sandbox, id: &str) -> String {
    std::fs::read_to_string(sb.root().join(id).join("sandbox.log")).unwrap_or_default()
}

/// `okvm create` killed while its sandbox boots the VM: nothing will ever
/// finish creating the container, so `state` reports it stopped at once,
/// the sandbox notices on its own that its creator is gone and ends, and a
/// plain `delete` removes the rest.
#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn sigkill_of_create_while_the_vm_boots_then_delete_leaves_nothing() {
    let sb = Sandbox::new();
    let id = sb.new_id("createkill");
    let bundle = sb.bundle("createkill", &["sleep", "1000"]);
    let mut create = Reaped(
        sb.command()
            .args(["create", "--bundle"])
            .arg(bundle.path())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The sandbox has assembled the share and started virtiofsd: it is
    // about to boot the VM, which takes seconds here.
    let sandbox = wait_for_process(&["--okvm-internal", &id]);
    let share = sb.root().join(&id).join("share");
    wait_for_process(&[&format!("--shared-dir={}", share.display())]);
    create.0.kill().unwrap();
    let status = create.0.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(9), "create ended first: {status}");
    assert_eq!(sb.state(&id)["status"], "stopped");
    sandbox.wait_gone();
    let log = sandbox_log(&sb, &id);
    assert!(
        log.contains("the process creating this container (okvm create, or the shim) is gone"),
        "{log}"
    );
    sb.invoke(&["delete", &id]).assert_success();
    assert_no_trace(&sb, &id);
}

/// virtiofsd killed under a running container: its files are gone, so the
/// sandbox ends the container (exit status 255, as for a VM that failed),
/// naming the reason in its log, and a plain `delete` removes the rest.
#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn sigkill_of_virtiofsd_stops_the_container_then_delete_leaves_nothing() {
    let sb = Sandbox::new();
    let id = sb.new_id("fsdkill");
    let bundle = sb.bundle("fsdkill", &["sh", "-c", "touch /ready; sleep 1000"]);
    // In the foreground (kept afterwards), to see how the sandbox ends.
    let mut run = Reaped(
        sb.command()
            .args(["run", "--keep", "--bundle"])
            .arg(bundle.path())
            .arg(&id)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + LIMIT;
    while !bundle.has_marker("ready") {
        assert!(run.0.try_wait().unwrap().is_none(), "okvm run ended early");
        assert!(
            Instant::now() < deadline,
            "the container never became ready"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let share = sb.root().join(&id).join("share");
    let virtiofsd = wait_for_process(&[&format!("--shared-dir={}", share.display())]);
    nix_kill(virtiofsd.pid, 9);
    let status = wait_for_exit(&mut run.0, "okvm run did not end");
    assert_eq!(status.code(), Some(255), "{status}");
    assert_eq!(sb.state(&id)["status"], "stopped");
    let log = sandbox_log(&sb, &id);
    assert!(
        log.contains(
            "virtiofsd exited (signal 9, SIGKILL): the container's root filesystem is gone"
        ),
        "{log}"
    );
    sb.invoke(&["delete", &id]).assert_success();
    assert_no_trace(&sb, &id);
}

/// A pod container's helper killed while it places the container's part
/// of the pod's share (as it enters its second `move_mount`: the part's
/// tmpfs is attached, the rootfs not yet in it), and another's while its
/// container runs. The first `create` fails and leaves nothing, in the
/// pod's mount namespace either; the second container is reported stopped,
/// a plain `delete` ends its processes in the pod's guest and leaves
/// nothing on the host; the pod goes on and takes new containers.
#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn sigkill_of_a_pod_containers_helper_leaves_nothing_and_the_pod_goes_on() {
    let sb = Sandbox::new();
    let pod = sb.new_id("crashpod");
    let in_pod = |b: &okvm_tests::oci::Bundle, kind: &str| b.join_pod(kind, &pod);
    let sandbox = sb.bundle("crashpod", &["sleep", "1000"]);
    in_pod(&sandbox, "sandbox");
    let vm = state_pid(&sb.start_container(&pod, &sandbox));
    let part = |id: &str| {
        format!(
            "/proc/{vm}/root{}",
            sb.root()
                .join(&pod)
                .join("share/containers")
                .join(id)
                .display()
        )
    };

    // Killed while placing its share.
    let placing = sb.new_id("placing");
    let member = sb.bundle("placing", &["echo", "never"]);
    in_pod(&member, "container");
    let mut create = Command::new("strace");
    create
        .args(["-f", "-qq", "-o", "/dev/null", "-e", "trace=move_mount"])
        .args(["-e", "inject=move_mount:signal=KILL:when=2"])
        .arg(sb.runtime())
        .arg("--root")
        .arg(sb.root())
        .args(["create", "--bundle"])
        .arg(member.path())
        .arg(&placing);
    let out = run_to_files(&mut create, &sb.work_file("create-placing"), LIMIT);
    out.assert_failure_with_message();
    assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
    assert!(out.stderr.contains("signal 9, SIGKILL"), "{out:#?}");
    sb.invoke(&["state", &placing])
        .assert_failure_with_message();
    assert_no_trace(&sb, &placing);
    let mounts = std::fs::read_to_string(format!("/proc/{vm}/mountinfo")).unwrap();
    assert!(
        !mounts.contains(&placing),
        "left in the pod's namespace:\n{mounts}"
    );
    assert!(
        !std::path::Path::new(&part(&placing)).exists(),
        "its part is left"
    );

    // Killed while its container runs.
    let running = sb.new_id("running");
    let member = sb.bundle(
        "running",
        &[
            "sh",
            "-c",
            "while :; do date +%s%N > /beat.tmp; mv /beat.tmp /beat; sleep 0.2; done",
        ],
    );
    in_pod(&member, "container");
    let helper = state_pid(&sb.start_container(&running, &member));
    member.wait_for_marker("beat");
    let helper = HostProcess::find(helper).expect("the helper runs");
    nix_kill(helper.pid, 9);
    helper.wait_gone();
    assert_eq!(sb.state(&running)["status"], "stopped");
    sb.invoke(&["delete", &running]).assert_success();
    assert_no_trace(&sb, &running);
    // Its processes in the pod's guest ended with it.
    std::thread::sleep(Duration::from_secs(1));
    let last = member.wait_for_marker("beat");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        member.wait_for_marker("beat"),
        last,
        "it still runs in the guest"
    );

    // The pod goes on.
    let next = sb.new_id("next");
    let member = sb.bundle("next", &["echo", "joined"]);
    in_pod(&member, "container");
    let out = sb.run_foreground(&next, &member);
    assert_eq!(
        (out.code(), out.stdout.as_str()),
        (Some(0), "joined\n"),
        "{out:#?}"
    );
    assert_no_trace(&sb, &next);
    assert_eq!(sb.state(&pod)["status"], "running");
    sb.invoke(&["delete", "--force", &pod]).assert_success();
    assert_no_trace(&sb, &pod);
}
