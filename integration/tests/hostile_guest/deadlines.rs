//! Time and exit statuses: a guest that stops answering, and one that
//! reports an end no process can have.
//!
//! The guest here is okvm-hostile-init (integration/hostile-init), a PID 1
//! that speaks okvm-init's protocol and breaks its promises as each
//! container's command line tells it to. Each test packs it into an
//! initramfs of its own with `okvm initramfs` and gives okvm that image
//! through `OKVM_INITRD`, exactly as an administrator would pick another
//! guest; the verbs are the okvm CLI's, on OCI bundles, as podman's conmon
//! calls them.

use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::time::{Duration, Instant};

use okvm::guest::Op;
use okvm_integration::{hostile, require_testhost};
use okvm_tests::oci::{
    assert_network_released, assert_no_trace, okvm_network_record, run_piped, state_pid,
    HostProcess, Output, Sandbox, COMMAND_TIMEOUT, STATE_TIMEOUT,
};

/// What a verb may take beyond its guest's deadline: starting okvm, reading
/// the state, connecting, on a slow emulated host.
const SLACK: Duration = Duration::from_secs(20);

/// A sandbox whose okvm boots the hostile guest.
fn hostile_sandbox() -> Sandbox {
    require_testhost();
    let sb = Sandbox::new();
    let initrd = sb.work_file("hostile-initrd.img");
    let mut pack = Command::new(sb.runtime());
    pack.arg("initramfs")
        .arg("--init")
        .arg(hostile::lying_init())
        .arg("-o")
        .arg(&initrd);
    run_piped(&mut pack, COMMAND_TIMEOUT).assert_success();
    sb.with_env("OKVM_INITRD", initrd)
}

/// Runs every verb at once; each must fail by its deadline (plus slack)
/// with one line naming what the guest did not answer.
#[track_caller]
fn assert_each_runs_out(sb: &Sandbox, verbs: &[(&[&str], Op, &str)]) {
    let runs: Vec<(Command, Duration)> = verbs
        .iter()
        .map(|(args, op, _)| {
            let mut cmd = sb.command();
            cmd.args(*args);
            (cmd, op.deadline().expect("a call with a deadline"))
        })
        .collect();
    let done: Vec<(Output, Duration)> = std::thread::scope(|s| {
        let running: Vec<_> = runs
            .into_iter()
            .map(|(mut cmd, limit)| {
                s.spawn(move || {
                    let t0 = Instant::now();
                    // A verb still running after this is hung: run_piped
                    // kills it and fails the test.
                    let out = run_piped(&mut cmd, limit + SLACK);
                    (out, t0.elapsed())
                })
            })
            .collect();
        running.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for ((out, took), (_, op, name)) in done.iter().zip(verbs) {
        let limit = op.deadline().unwrap();
        out.assert_failure_with_message();
        let want = format!(
            "the guest did not answer `{name}` within {} s",
            limit.as_secs()
        );
        assert!(out.stderr.contains(&want), "wanted {want:?}: {out:#?}");
        assert_eq!(out.stderr.trim().lines().count(), 1, "{out:#?}");
        assert!(
            *took >= limit && *took < limit + SLACK,
            "`{}` took {took:?}",
            out.what
        );
    }
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_guest_that_stops_answering_after_create_fails_each_verb_in_time() {
    let sb = hostile_sandbox();
    let id = sb.new_id("mute-created");
    let bundle = sb.bundle("mute-created", &["hostile", "mute-after-create"]);
    sb.create(&id, bundle.path(), &[]).assert_success();
    let network = okvm_network_record(&sb, &id);
    assert_each_runs_out(
        &sb,
        &[
            (&["start", &id], Op::Start, "start"),
            (&["kill", &id, "TERM"], Op::Signal, "kill"),
            (&["ps", &id], Op::Processes, "ps"),
            (&["events", "--stats", &id], Op::Stats, "stats"),
        ],
    );
    // Nothing was confirmed, so nothing changed.
    assert_eq!(sb.state(&id)["status"], "created");
    sb.invoke(&["delete", "--force", &id]).assert_success();
    assert_no_trace(&sb, &id);
    assert_network_released(&network);
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_guest_that_stops_answering_once_started_fails_each_verb_in_time() {
    let sb = hostile_sandbox();
    let id = sb.new_id("mute-started");
    let bundle = sb.bundle("mute-started", &["hostile", "mute-after-start"]);
    sb.start_container(&id, &bundle);
    let network = okvm_network_record(&sb, &id);
    assert_each_runs_out(
        &sb,
        &[
            (&["kill", &id, "TERM"], Op::Signal, "kill"),
            (&["ps", &id], Op::Processes, "ps"),
            (&["exec", &id, "true"], Op::Exec, "exec"),
            (&["events", "--stats", &id], Op::Stats, "stats"),
        ],
    );
    // Refused at once, as for any running container: it asks no guest.
    let t0 = Instant::now();
    sb.invoke(&["delete", &id])
        .assert_failure_with_message()
        .assert_stderr_mentions_any(&["running"]);
    assert!(t0.elapsed() < SLACK);
    sb.invoke(&["delete", "--force", &id]).assert_success();
    assert_no_trace(&sb, &id);
    assert_network_released(&network);
}

/// A pod's container is ended in the pod's guest on delete, since killing
/// its helper would leave it running there: a guest that does not confirm
/// fails `delete`, and `delete --force` removes it all the same.
#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn deleting_a_pods_container_in_a_mute_guest_fails_in_time_and_force_cleans_up() {
    let sb = hostile_sandbox();
    let pod = sb.new_id("pod");
    let annotate = |bundle: &okvm_tests::oci::Bundle, args: &[&str], kind: &str| {
        let mut config = okvm_tests::oci::default_config(args);
        okvm_tests::oci::set_pod(&mut config, kind, &pod);
        bundle.write_config(&config);
    };
    let sandbox = sb.bundle("pod", &["hostile", "obedient"]);
    annotate(&sandbox, &["hostile", "obedient"], "sandbox");
    sb.start_container(&pod, &sandbox);
    let network = okvm_network_record(&sb, &pod);
    let id = sb.new_id("member");
    let member = sb.bundle("member", &["hostile", "mute-after-create"]);
    annotate(&member, &["hostile", "mute-after-create"], "container");
    sb.create(&id, member.path(), &[]).assert_success();

    let limit = Op::Signal.deadline().unwrap();
    let t0 = Instant::now();
    let out = sb.invoke(&["delete", &id]);
    out.assert_failure_with_message();
    let want = format!(
        "the guest did not answer `kill` within {} s",
        limit.as_secs()
    );
    assert!(out.stderr.contains(&want), "{out:#?}");
    assert_eq!(out.stderr.trim().lines().count(), 1, "{out:#?}");
    assert!(t0.elapsed() < limit + SLACK, "{:?}", t0.elapsed());
    assert_eq!(sb.state(&id)["status"], "created", "delete removed it");

    // The helper is killed when the guest will not say, and nothing stays.
    let t0 = Instant::now();
    let out = sb.invoke(&["delete", "--force", &id]);
    out.assert_success();
    assert!(out.stderr.contains("did not answer `kill`"), "{out:#?}");
    assert!(t0.elapsed() < limit + SLACK, "{:?}", t0.elapsed());
    assert_no_trace(&sb, &id);
    assert_eq!(sb.state(&pod)["status"], "running");
    sb.invoke(&["delete", "--force", &pod]).assert_success();
    assert_no_trace(&sb, &pod);
    assert_network_released(&network);
}

/// The guest reports how the container's process ended; the sandbox, and
/// `okvm run` after it, end the same way where a process can have ended so,
/// and with the documented code otherwise (docs/security.md).
#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn invented_exit_statuses_give_sane_exits() {
    let sb = hostile_sandbox();
    // (exit code, signal) as the guest reports them, and what `run` shows.
    let cases: [(&str, &str, Result<i32, i32>); 6] = [
        ("-", "19", Ok(128 + 19)),
        ("-", "20", Ok(128 + 20)),
        ("300", "-", Ok(255)),
        ("-1", "-", Ok(255)),
        ("-", "200", Ok(255)),
        // A signal that can end a process: passed on as it is.
        ("-", "15", Err(15)),
    ];
    for (n, (code, signal, want)) in cases.into_iter().enumerate() {
        let id = sb.new_id(&format!("exit{n}"));
        let bundle = sb.bundle(&format!("exit{n}"), &["hostile", "exit", code, signal]);
        let out = sb.run_foreground(&id, &bundle);
        let got = match (out.status.code(), out.status.signal()) {
            (Some(c), _) => Ok(c),
            (None, Some(s)) => Err(s),
            _ => unreachable!("a process ends with a code or a signal"),
        };
        assert_eq!(got, want, "code {code}, signal {signal}: {out:#?}");
        assert_no_trace(&sb, &id);
    }
}

/// SIGSTOP reported as the way the container ended must not stop the
/// sandbox process, which stands for the container on the host: it ends.
#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_reported_sigstop_never_stops_the_sandbox() {
    let sb = hostile_sandbox();
    let id = sb.new_id("sigstop");
    let bundle = sb.bundle("sigstop", &["hostile", "exit", "-", "19"]);
    sb.create(&id, bundle.path(), &[]).assert_success();
    let sandbox = HostProcess::find(state_pid(&sb.state(&id))).expect("the sandbox runs");
    sb.invoke(&["start", &id]).assert_success();
    let deadline = Instant::now() + STATE_TIMEOUT;
    while sandbox.is_running() {
        assert!(!sandbox.is_stopped(), "the sandbox stopped itself");
        assert!(Instant::now() < deadline, "the sandbox did not end");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(sb.state(&id)["status"], "stopped");
    sb.invoke(&["delete", &id]).assert_success();
    assert_no_trace(&sb, &id);
}
