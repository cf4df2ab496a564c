//! podman with `--runtime okvm`, inside the test host: okvm installed the way
//! `make install` installs it (scripts/install, here into a prefix on the test
//! host's tmpfs, with podman's drop-in in the test host's own
//! /etc/containers), on the busybox image built locally from Debian packages.

use std::process::Command;
use std::time::{Duration, Instant};

use okvm_integration::podman::{assert_nothing_left, run, setup, sh, stdout, wait_for_log, IMAGE};
use okvm_integration::{assert_guest_kernel, repo_root, text};

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn run_rm_prints_the_output_of_a_microvm_and_its_exit_code() {
    let _cleanup = setup();
    let out = run(
        "",
        "sh -c 'cat /etc/okvm-image; uname -r; echo err >&2; exit 7'",
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    let s = stdout(&out);
    let mut lines = s.lines();
    assert_eq!(
        lines.next(),
        Some("okvm test image (busybox from Debian busybox-static)")
    );
    // The guest's own kernel, not the test host's: this ran in a VM.
    assert_guest_kernel(lines.next().unwrap_or_default());
    assert!(text(&out.stderr).contains("err"), "{out:?}");
    let ok = run("", "true");
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn kill_stop_and_signals_reach_the_container_process() {
    let _cleanup = setup();
    // podman kill: SIGKILL, exit 137.
    let out = sh(&format!(
        "podman run -d --runtime okvm --name k1 {IMAGE} sleep 1000 >/dev/null && podman kill k1 >/dev/null && podman wait k1"
    ));
    assert_eq!(stdout(&out).trim(), "137", "{out:?}");
    // podman stop: SIGTERM, which the container's trap handles (exit 143);
    // podman kill -s USR1 first reaches a second trap.
    let script = r#"trap 'echo got USR1' USR1; trap 'echo got TERM; exit 143' TERM; echo ready; while :; do sleep 0.1; done"#;
    let out = sh(&format!(
        "podman run -d --runtime okvm --name s1 {IMAGE} sh -c \"{script}\""
    ));
    assert!(out.status.success(), "{out:?}");
    wait_for_log("s1", "ready");
    let out = sh("podman kill -s USR1 s1");
    assert!(out.status.success(), "{out:?}");
    wait_for_log("s1", "got USR1");
    let out = sh("podman stop -t 60 s1 >/dev/null && podman inspect -f '{{.State.ExitCode}}' s1 && podman logs s1");
    let s = stdout(&out);
    assert!(s.starts_with("143\n") && s.contains("got TERM"), "{out:?}");
    let out = sh("podman rm k1 s1");
    assert!(out.status.success(), "{out:?}");
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn exec_runs_in_the_container_with_its_env_user_and_cwd() {
    let _cleanup = setup();
    let out = sh(&format!(
        "podman run -d --runtime okvm --name e1 -e FOO=bar {IMAGE} sh -c 'echo started; sleep 1000'"
    ));
    assert!(out.status.success(), "{out:?}");
    wait_for_log("e1", "started");
    let out = sh("podman exec e1 sh -c 'echo $FOO; exit 3'");
    assert_eq!(
        (out.status.code(), stdout(&out)),
        (Some(3), "bar\n".into()),
        "{out:?}"
    );
    let out =
        sh("podman exec -e X=1 -u 1000:1000 -w /tmp e1 sh -c 'echo $X $(id -u) $(id -g) $(pwd)'");
    assert_eq!(stdout(&out), "1 1000 1000 /tmp\n", "{out:?}");
    // An exec'd process killed by a signal: 128 + 15.
    let out = sh("podman exec e1 sh -c 'kill -TERM $$'");
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    let out = sh("echo from-stdin | podman exec -i e1 cat");
    assert_eq!(stdout(&out), "from-stdin\n", "{out:?}");
    let out = sh("podman logs e1");
    assert_eq!(stdout(&out), "started\n", "{out:?}");
    let out = sh("podman rm -f -t 0 e1");
    assert!(out.status.success(), "{out:?}");
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn an_interactive_terminal_follows_resizes() {
    let _cleanup = setup();
    let session = "okvm-tty";
    let out = sh(&format!(
        "tmux new-session -d -s {session} -x 80 -y 24 'podman run -it --rm --runtime okvm {IMAGE} sh'"
    ));
    assert!(out.status.success(), "{out:?}");
    let screen = || stdout(&sh(&format!("tmux capture-pane -p -t {session}")));
    let wait_screen = |what: &str| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !screen().contains(what) {
            assert!(
                Instant::now() < deadline,
                "never saw {what:?}: {}",
                screen()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    wait_screen("/ #");
    sh(&format!(
        "tmux send-keys -t {session} 'stty size; echo mark-$((6*7))' Enter"
    ));
    wait_screen("mark-42");
    assert!(screen().contains("24 80"), "{}", screen());
    sh(&format!("tmux resize-window -t {session} -x 100 -y 30"));
    std::thread::sleep(Duration::from_millis(500));
    sh(&format!(
        "tmux send-keys -t {session} 'stty size; echo mark-$((6*8))' Enter"
    ));
    wait_screen("mark-48");
    assert!(screen().contains("30 100"), "{}", screen());
    sh(&format!("tmux send-keys -t {session} 'exit' Enter"));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sh(&format!("tmux has-session -t {session}"))
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "the shell did not exit: {}",
            screen()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn volumes_are_shared_read_write_or_read_only() {
    let _cleanup = setup();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("from-host"), "hello guest\n").unwrap();
    let d = dir.path().display();
    let out = run(
        &format!("-v {d}:/data"),
        "sh -c 'cat /data/from-host; echo hello host > /data/from-guest'",
    );
    assert_eq!(stdout(&out), "hello guest\n", "{out:?}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("from-guest")).unwrap(),
        "hello host\n"
    );
    let out = run(&format!("-v {d}:/data:ro"), "sh -c 'echo x > /data/nope'");
    assert_ne!(out.status.code(), Some(0), "{out:?}");
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    assert!(!dir.path().join("nope").exists());
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn podman_options_apply_inside_the_vm() {
    let _cleanup = setup();
    let out = run("--read-only", "sh -c 'touch /x'");
    assert!(
        text(&out.stderr).contains("Read-only file system"),
        "{out:?}"
    );
    let out = run(
        "--user 1000:1001 -e A=1 -w /tmp --hostname vmhost --ulimit nofile=1234:1234",
        "sh -c 'echo $(id -u):$(id -g) $A $(pwd) $(hostname) $(ulimit -n)'",
    );
    assert_eq!(stdout(&out), "1000:1001 1 /tmp vmhost 1234\n", "{out:?}");
    let out = run(
        "--memory 512m --cpus 2",
        "sh -c 'grep MemTotal /proc/meminfo; grep -c ^processor /proc/cpuinfo'",
    );
    let s = stdout(&out);
    let kib: u64 = s
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((400 * 1024..=512 * 1024).contains(&kib), "{out:?}");
    assert_eq!(s.lines().nth(1), Some("2"), "{out:?}");
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_missing_executable_fails_like_runc_and_leaves_nothing() {
    let _cleanup = setup();
    let out = run("", "/no/such/program");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        text(&out.stderr).contains("no such file or directory"),
        "{out:?}"
    );
    let out = run("", "nosuchprogram");
    assert_eq!(out.status.code(), Some(127), "{out:?}");
    assert!(
        text(&out.stderr).contains("executable file not found in $PATH"),
        "{out:?}"
    );
    assert_nothing_left();
}

/// The README's podman section, as written (its `make install` is the
/// scripts/install that `setup` ran).
#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn the_readme_podman_section_works_as_written() {
    let _cleanup = setup();
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let section = readme
        .split("## With podman")
        .nth(1)
        .and_then(|s| s.split("```").nth(1))
        .expect("README has a podman code block");
    let commands: Vec<&str> = section
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && *l != "make install")
        .collect();
    assert_eq!(commands.len(), 2, "{section}");
    let out = Command::new("bash")
        .arg("-c")
        .arg(commands.join(" && "))
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // `podman import` prints the image id first.
    let s = stdout(&out);
    let last = s.lines().last().unwrap_or_default();
    assert!(last.starts_with("hello from 6.12."), "{out:?}");
}

/// Polls `script` until it succeeds, returning its stdout.
fn eventually(script: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let out = sh(script);
        if out.status.success() {
            return stdout(&out);
        }
        assert!(
            Instant::now() < deadline,
            "{script} never succeeded: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn published_ports_reach_a_server_in_the_vm_which_has_podmans_address() {
    let _cleanup = setup();
    let out = sh(&format!(
        "podman run -d --name web --runtime okvm -p 8080:80 {IMAGE} sh -c \
         'mkdir -p /www && echo served-from-the-vm > /www/index.html && exec httpd -f -p 80 -h /www'"
    ));
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        eventually("curl -sSf -m 10 http://127.0.0.1:8080/"),
        "served-from-the-vm\n"
    );
    // The guest's eth0 is the container as podman knows it: same address, same MAC.
    let want_ip = stdout(&sh(
        "podman inspect -f '{{.NetworkSettings.IPAddress}}' web",
    ));
    let want_mac = stdout(&sh(
        "podman inspect -f '{{.NetworkSettings.MacAddress}}' web",
    ));
    let got = stdout(&sh(
        "podman exec web sh -c 'ip -4 -o addr show eth0; cat /sys/class/net/eth0/address'",
    ));
    assert!(
        got.contains(&format!("inet {}/", want_ip.trim())),
        "{got} vs {want_ip}"
    );
    assert!(got.contains(want_mac.trim()), "{got} vs {want_mac}");
    let out = sh("podman rm -f -t 0 web");
    assert!(out.status.success(), "{out:?}");
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn containers_on_one_podman_network_reach_each_other_and_none_has_only_lo() {
    let _cleanup = setup();
    let _ = sh("podman network rm -f okvm-net 2>/dev/null; podman network create okvm-net");
    let out = sh(&format!(
        "podman run -d --name peer --network okvm-net --runtime okvm {IMAGE} sh -c \
         'while :; do echo from-peer | nc -l -p 7000; done'"
    ));
    assert!(out.status.success(), "{out:?}");
    let ip = stdout(&sh(
        "podman inspect -f '{{(index .NetworkSettings.Networks \"okvm-net\").IPAddress}}' peer",
    ));
    let ip = ip.trim();
    assert!(!ip.is_empty());
    let got = eventually(&format!(
        "podman run --rm --network okvm-net --runtime okvm {IMAGE} sh -c \
         'nc -w 10 {ip} 7000 | grep from-peer'"
    ));
    assert_eq!(got, "from-peer\n");
    let out = run(
        "--network none",
        "sh -c 'ls /sys/class/net; ip -o link show lo | grep -q LOWER_UP && echo lo-up'",
    );
    assert_eq!(stdout(&out), "lo\nlo-up\n", "{out:?}");
    let _ = sh("podman rm -f -t 0 peer; podman network rm -f okvm-net");
    assert_nothing_left();
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_podman_pod_is_one_vm_whose_containers_share_localhost() {
    let _cleanup = setup();
    let _ = sh("podman pod rm -f -t 0 okvm-pod 2>/dev/null");
    // The infra container boots the pod's VM; the others join it.
    let out = sh("podman --runtime okvm pod create --name okvm-pod");
    assert!(out.status.success(), "{out:?}");
    let out = sh(&format!(
        "podman run -d --pod okvm-pod --name pod-server --runtime okvm {IMAGE} sh -c \
         'while :; do echo from-the-pod | nc -l -p 7000; done'"
    ));
    assert!(out.status.success(), "{out:?}");
    let got = eventually(&format!(
        "podman run --rm --pod okvm-pod --runtime okvm {IMAGE} sh -c \
         'cat /proc/sys/kernel/random/boot_id; nc -w 10 127.0.0.1 7000 | grep from-the-pod'"
    ));
    let server = sh("podman exec pod-server sh -c 'cat /proc/sys/kernel/random/boot_id; uname -r'");
    let server = stdout(&server);
    let (server_boot, kernel) = server.split_once('\n').unwrap_or_default();
    assert_guest_kernel(kernel.trim());
    let host_boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_ne!(server_boot, host_boot.trim());
    assert_eq!(
        got,
        format!("{server_boot}\nfrom-the-pod\n"),
        "not one guest"
    );
    let out = sh("podman pod rm -f -t 0 okvm-pod");
    assert!(out.status.success(), "{out:?}");
    assert_nothing_left();
}
