//! The emulated KVM test host (`integration/testhost/run`), driven from the
//! machine itself exactly as a developer or `make test` drives it.

use std::process::Command;

use okvm_integration::{repo_root, testhost, testhost_command, text};

#[test]
#[ignore = "boots the emulated test host; run by `make test`"]
fn exit_status_and_streams_come_back() {
    let out = testhost(&[
        "--",
        "sh",
        "-c",
        "echo to-stdout; echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    assert_eq!(text(&out.stdout), "to-stdout\n");
    // The run script's own lines (a re-boot after the test host's kernel died,
    // docs/testhost.md) say "testhost:"; everything else is CMD's.
    let cmd_stderr: String = text(&out.stderr)
        .lines()
        .filter(|l| !l.starts_with("testhost: "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(cmd_stderr, "to-stderr\n", "{out:?}");
}

/// Twenty test hosts booted one after the other: each runs CMD on its first boot
/// (the harness reports any retry it needed as a "testhost: retry:" line) and has
/// the one CPU the harness gives it by default.
#[test]
#[ignore = "boots the emulated test host; run by `make test`"]
fn twenty_boots_in_a_row_need_no_retry() {
    let mut failures = Vec::new();
    for i in 1..=20 {
        let out = testhost(&["--timeout", "300", "--", "nproc"]);
        let stderr = text(&out.stderr);
        let retried = stderr.lines().any(|l| l.starts_with("testhost: retry:"));
        if retried || !out.status.success() || text(&out.stdout) != "1\n" {
            failures.push(format!("boot {i}: {out:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 boots failed or needed a retry:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
#[ignore = "boots the emulated test host; run by `make test`"]
fn kvm_inside_is_hardware_speed() {
    let okvm = repo_root().join("target/release/okvm");
    let out = testhost(&[
        "--",
        "sh",
        "-c",
        &format!("ls -l /dev/kvm && {} check-kvm", okvm.display()),
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("crw"), "{stdout}");
    assert!(stdout.contains("/dev/kvm"), "{stdout}");
    assert!(
        stdout.contains("kvm: usable at hardware speed (svm)"),
        "{stdout}"
    );
}

#[test]
#[ignore = "boots the emulated test host; run by `make test`"]
fn host_files_are_visible_and_writable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in"), "from the host\n").unwrap();
    let script = format!(
        "cat {d}/in && echo from the test host > {d}/out && echo scratch > $TMPDIR/s && cat $TMPDIR/s",
        d = dir.path().display()
    );
    let out = testhost(&["--", "sh", "-c", &script]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stdout), "from the host\nscratch\n");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("out")).unwrap(),
        "from the test host\n"
    );
}

#[test]
#[ignore = "boots the emulated test host; run by `make test`"]
fn two_test_hosts_run_at_once() {
    let dir = tempfile::tempdir().unwrap();
    // Each waits until it sees the other's mark: they can only both succeed if
    // they really run at the same time.
    let script = |me: &str, other: &str| {
        format!(
            "touch {d}/{me}; i=0; until [ -e {d}/{other} ]; do i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.1; done; echo {me}",
            d = dir.path().display()
        )
    };
    let spawn = |s: String| {
        testhost_command()
            .args(["--timeout", "300", "--", "sh", "-c", &s])
            .output()
    };
    let (a, b) = std::thread::scope(|sc| {
        let a = sc.spawn(|| spawn(script("a", "b")));
        let b = sc.spawn(|| spawn(script("b", "a")));
        (a.join().unwrap().unwrap(), b.join().unwrap().unwrap())
    });
    assert!(a.status.success() && b.status.success(), "{a:?}\n{b:?}");
    assert_eq!(text(&a.stdout), "a\n");
    assert_eq!(text(&b.stdout), "b\n");
}

#[test]
#[ignore = "boots the emulated test host; run by `make test`"]
fn timeout_stops_everything_and_leaves_nothing() {
    let rundir = tempfile::tempdir().unwrap();
    let out = testhost_command()
        .env("OKVM_TESTHOST_RUNDIR", rundir.path())
        .args(["--timeout", "2", "--", "sleep", "600"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(124), "{out:?}");
    assert!(text(&out.stderr).contains("timed out after 2s"), "{out:?}");
    assert_nothing_left(rundir.path());
}

/// No run directory, hence no socket or log, and no QEMU, virtiofsd or relay
/// whose command line names it.
fn assert_nothing_left(rundir: &std::path::Path) {
    assert_eq!(std::fs::read_dir(rundir).unwrap().count(), 0);
    let ps = Command::new("ps").args(["-eo", "args"]).output().unwrap();
    let leftovers: Vec<_> = text(&ps.stdout)
        .lines()
        .filter(|l| l.contains(&*rundir.to_string_lossy()))
        .map(str::to_string)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn usage_errors_are_one_clear_line() {
    // No boot happens for these: the harness refuses before starting anything.
    for (args, needle) in [
        (&[][..], "no command given"),
        (
            &["--timeout", "soon", "--", "true"][..],
            "--timeout must be whole seconds",
        ),
        (&["--bogus", "true"][..], "unknown option --bogus"),
    ] {
        let out = testhost(args);
        assert_eq!(out.status.code(), Some(125), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains(needle), "{err:?}");
    }
}

/// A directory of links to the given tools, to run the harness with a PATH that
/// lacks something.
fn path_with(tools: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for t in tools {
        let real = Command::new("sh")
            .args(["-c", &format!("command -v {t}")])
            .output()
            .unwrap();
        let real = text(&real.stdout).trim().to_string();
        assert!(!real.is_empty(), "{t} not on this machine");
        std::os::unix::fs::symlink(real, dir.path().join(t)).unwrap();
    }
    dir
}

#[test]
fn a_missing_prerequisite_is_named() {
    let base = [
        "bash", "dirname", "id", "cat", "sed", "grep", "ls", "sort", "tail",
    ];
    let no_qemu = path_with(&base);
    let mut with_qemu = base.to_vec();
    with_qemu.push("qemu-system-x86_64");
    let no_virtiofsd = path_with(&with_qemu);
    for (bin, needle) in [
        (
            &no_qemu,
            "qemu-system-x86_64 not found (apt install qemu-system-x86",
        ),
        (
            &no_virtiofsd,
            "virtiofsd not found (cargo install virtiofsd --locked",
        ),
    ] {
        let out = testhost_command()
            .env("PATH", bin.path())
            .env("HOME", bin.path())
            .env_remove("CARGO_HOME")
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(125), "{out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err:?}");
        assert!(err.contains(needle), "{err:?}");
    }
}

#[test]
#[ignore = "boots the emulated test host; run by `make test`"]
fn sigterm_stops_everything_and_leaves_nothing() {
    let rundir = tempfile::tempdir().unwrap();
    let child = testhost_command()
        .env("OKVM_TESTHOST_RUNDIR", rundir.path())
        .args(["--", "sleep", "600"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until QEMU is up (its console log exists), then stop the harness.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let booted = std::fs::read_dir(rundir.path())
            .unwrap()
            .flatten()
            .any(|d| d.path().join("console.log").exists());
        if booted {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "test host never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_secs(2));
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(143), "{out:?}");
    assert!(
        text(&out.stderr).contains("testhost: terminated"),
        "{out:?}"
    );
    assert_nothing_left(rundir.path());
}
