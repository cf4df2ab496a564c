//! Conformance of a runc-compatible runtime CLI to the OCI runtime spec's lifecycle
//! and operations (create/start/state/kill/delete), plus the runc verbs users and
//! shims rely on (run, list, ps, features, --version).
//!
//! The runtime under test is any binary named by `OKVM_CONFORMANCE_RUNTIME`; every
//! test is ignored by default and fails if run without it. Needs root and the
//! busybox image (`make images`). Run:
//!
//! ```sh
//! OKVM_CONFORMANCE_RUNTIME=/usr/sbin/runc cargo test -p okvm-tests --test conformance -- --include-ignored --test-threads=1
//! ```
//!
//! Each test has its own `--root` and container ids, so the suite also runs in
//! parallel; one thread just keeps failures readable.
//!
//! crun refuses hosts with hybrid cgroups whose v2 hierarchy has controllers
//! ("cgroups in hybrid mode not supported"); there, point the variable at a wrapper
//! that hides the v2 mount from crun in a private mount namespace:
//! `exec unshare -m sh -c 'umount -l /sys/fs/cgroup/unified && exec crun "$@"' crun "$@"`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::Duration;

use okvm_tests::oci::{run_piped, state_pid, HostProcess, Sandbox, COMMAND_TIMEOUT};
use serde_json::Value;

/// Marks that it started, then runs until the host creates `/go`: the test decides
/// when the container's process finishes.
const RUN_UNTIL_GO: &str = ": > /started; while [ ! -e /go ]; do sleep 0.1; done";

/// Exits on SIGTERM after recording it. `/ready` says the trap is installed: before
/// that, SIGTERM to a pid namespace's init is ignored and the test would wait in vain.
const EXIT_ON_TERM: &str =
    "trap 'echo TERM > /termed; exit 0' TERM; : > /ready; while :; do sleep 0.1; done";

/// Survives SIGTERM (recording it), so only a real SIGKILL stops it.
const SURVIVE_TERM: &str =
    "trap 'echo TERM >> /signals' TERM; : > /ready; while :; do sleep 0.1; done";

const RUN_FOREVER: &str = "while :; do sleep 0.1; done";

const MISSING_EXECUTABLE: &str = "okvm-conformance-no-such-executable";

fn sh(script: &str) -> [&str; 3] {
    ["sh", "-c", script]
}

fn canonical(path: &Path) -> PathBuf {
    path.canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The state's `bundle`, asserting the spec's "absolute path".
#[track_caller]
fn state_bundle(state: &Value) -> PathBuf {
    let bundle = state["bundle"]
        .as_str()
        .unwrap_or_else(|| panic!("state has no bundle string: {state:#}"));
    assert!(
        Path::new(bundle).is_absolute(),
        "bundle must be absolute: {state:#}"
    );
    canonical(Path::new(bundle))
}

fn runtime_is_runc(sb: &Sandbox) -> bool {
    sb.runtime().file_name().is_some_and(|n| n == "runc")
}

/// The state fields the OCI runtime spec requires, plus `pid` while the process
/// exists (required there for created and running).
#[track_caller]
fn assert_spec_state(sb: &Sandbox, state: &Value, id: &str, bundle: &Path, status: &str) {
    let version = state["ociVersion"].as_str().unwrap_or_default();
    assert!(
        version.starts_with(|c: char| c.is_ascii_digit()),
        "ociVersion must be a version string: {state:#}"
    );
    assert_eq!(state["id"], id, "{state:#}");
    assert_eq!(state["status"], status, "{state:#}");
    assert_eq!(state_bundle(state), canonical(bundle), "{state:#}");
    if matches!(status, "created" | "running") {
        let pid = state_pid(state);
        assert!(
            HostProcess::find(pid).is_some(),
            "state pid {pid} is not a live process: {state:#}"
        );
    }
    if let Some(annotations) = state.get("annotations") {
        let all_strings = annotations
            .as_object()
            .is_some_and(|m| m.values().all(Value::is_string));
        assert!(all_strings, "annotations must map strings: {state:#}");
    }
    // Not in the spec, but runc's own state always carries it.
    if runtime_is_runc(sb) {
        let created = state["created"].as_str().unwrap_or_default();
        assert!(
            created.len() >= 20 && created.as_bytes()[10] == b'T',
            "runc's created must be an RFC 3339 time: {state:#}"
        );
    }
}

#[track_caller]
fn assert_gone(sb: &Sandbox, id: &str) {
    sb.invoke(&["state", id]).assert_failure_with_message();
    assert!(
        !sb.listed_ids().iter().any(|l| l == id),
        "{id} still listed"
    );
    assert_eq!(sb.state_entries_for(id), Vec::<PathBuf>::new());
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn lifecycle_create_start_stop_delete() {
    let sb = Sandbox::new();
    let id = sb.new_id("life");
    let bundle = sb.bundle("life", &sh(RUN_UNTIL_GO));

    sb.create(&id, bundle.path(), &[]).assert_success();
    let created = sb.state(&id);
    assert_eq!(created["status"], "created", "{created:#}");
    state_pid(&created);
    assert_eq!(state_bundle(&created), canonical(bundle.path()));
    // The spec: create MUST NOT run the user-specified program. Give a runtime
    // that wrongly starts it the time to show it.
    thread::sleep(Duration::from_millis(300));
    assert!(!bundle.has_marker("started"), "program ran before start");

    sb.invoke(&["start", &id]).assert_success();
    assert_eq!(sb.state(&id)["status"], "running");
    bundle.wait_for_marker("started");

    bundle.put_marker("go");
    let stopped = sb.wait_for_status(&id, "stopped");
    assert_eq!(stopped["id"], id.as_str());

    sb.invoke(&["delete", &id]).assert_success();
    assert_gone(&sb, &id);
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn state_has_the_fields_the_spec_requires() {
    let sb = Sandbox::new();
    let id = sb.new_id("state");
    let bundle = sb.bundle("state", &sh(RUN_UNTIL_GO));

    sb.create(&id, bundle.path(), &[]).assert_success();
    assert_spec_state(&sb, &sb.state(&id), &id, bundle.path(), "created");

    sb.invoke(&["start", &id]).assert_success();
    assert_spec_state(&sb, &sb.state(&id), &id, bundle.path(), "running");

    bundle.put_marker("go");
    let stopped = sb.wait_for_status(&id, "stopped");
    assert_spec_state(&sb, &stopped, &id, bundle.path(), "stopped");
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn pid_file_holds_the_state_pid() {
    let sb = Sandbox::new();
    let id = sb.new_id("pidfile");
    let bundle = sb.bundle("pidfile", &sh(RUN_FOREVER));
    let pid_file = sb.work_file("container.pid");

    let pid_arg = pid_file.to_str().unwrap();
    sb.create(&id, bundle.path(), &["--pid-file", pid_arg])
        .assert_success();
    let text = std::fs::read_to_string(&pid_file).expect("--pid-file written by create");
    let from_file: i64 = text
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("pid file {text:?}: {e}"));
    assert_eq!(from_file, state_pid(&sb.state(&id)));
    assert!(HostProcess::find(from_file).is_some());
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn kill_sends_sigterm_by_default() {
    let sb = Sandbox::new();
    let id = sb.new_id("term");
    let bundle = sb.bundle("term", &sh(EXIT_ON_TERM));
    sb.start_container(&id, &bundle);
    bundle.wait_for_marker("ready");

    sb.invoke(&["kill", &id]).assert_success();
    sb.wait_for_status(&id, "stopped");
    assert_eq!(bundle.wait_for_marker("termed").trim(), "TERM");
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn kill_accepts_signal_by_name_number_and_sig_name() {
    let sb = Sandbox::new();
    for signal in ["KILL", "9", "SIGKILL"] {
        let id = sb.new_id(&format!("kill{signal}"));
        let bundle = sb.bundle(&format!("kill{signal}"), &sh(SURVIVE_TERM));
        let pid = state_pid(&sb.start_container(&id, &bundle));
        let process = HostProcess::find(pid).expect("container process");
        bundle.wait_for_marker("ready");

        sb.invoke(&["kill", &id, signal]).assert_success();
        sb.wait_for_status(&id, "stopped");
        process.wait_gone();
        // A runtime that ignored the argument and sent SIGTERM would leave this.
        assert!(
            !bundle.has_marker("signals"),
            "`kill {signal}` delivered SIGTERM"
        );
    }
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn start_of_a_running_container_fails() {
    let sb = Sandbox::new();
    let id = sb.new_id("restart");
    let bundle = sb.bundle("restart", &sh(RUN_FOREVER));
    let pid = state_pid(&sb.start_container(&id, &bundle));

    sb.invoke(&["start", &id]).assert_failure_with_message();
    let state = sb.state(&id);
    assert_eq!(state["status"], "running", "{state:#}");
    assert_eq!(state_pid(&state), pid, "a second process was started");
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn delete_of_a_running_container_needs_force() {
    let sb = Sandbox::new();
    let id = sb.new_id("delrun");
    let bundle = sb.bundle("delrun", &sh(RUN_FOREVER));
    let pid = state_pid(&sb.start_container(&id, &bundle));
    let process = HostProcess::find(pid).expect("container process");

    sb.invoke(&["delete", &id]).assert_failure_with_message();
    assert_eq!(sb.state(&id)["status"], "running");
    assert!(process.is_running(), "delete without --force killed it");

    sb.invoke(&["delete", "--force", &id]).assert_success();
    assert_gone(&sb, &id);
    process.wait_gone();
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn create_with_a_taken_id_fails_and_leaves_the_original_alone() {
    let sb = Sandbox::new();
    let id = sb.new_id("dup");
    let original = sb.bundle("dup-original", &sh(RUN_UNTIL_GO));
    let intruder = sb.bundle("dup-intruder", &sh(RUN_UNTIL_GO));

    sb.create(&id, original.path(), &[]).assert_success();
    let before = sb.state(&id);

    // runc: "container with given ID already exists"; crun: "container `<id>` already exists".
    sb.create(&id, intruder.path(), &[])
        .assert_failure_with_message()
        .assert_stderr_mentions_any(&[&id, "already exists"]);

    let after = sb.state(&id);
    assert_eq!(after["status"], "created", "{after:#}");
    assert_eq!(after["pid"], before["pid"]);
    assert_eq!(state_bundle(&after), canonical(original.path()));
    sb.invoke(&["start", &id]).assert_success();
    original.wait_for_marker("started");
    assert!(
        !intruder.has_marker("started"),
        "the duplicate's program ran"
    );
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn every_verb_reports_an_unknown_id() {
    let sb = Sandbox::new();
    let id = sb.new_id("ghost");
    for verb in ["state", "start", "kill", "delete"] {
        // runc: "container does not exist"; crun names the id in the missing path.
        sb.invoke(&[verb, &id])
            .assert_failure_with_message()
            .assert_stderr_mentions_any(&[&id, "does not exist", "not found"]);
    }
    assert_eq!(sb.state_entries_for(&id), Vec::<PathBuf>::new());
}

/// A failed create must leave nothing a later `list` or `create` would trip over.
#[track_caller]
fn assert_create_fails_without_trace(sb: &Sandbox, id: &str, bundle: &Path, mentions: &[&str]) {
    let out = sb.create(id, bundle, &[]);
    out.assert_failure_with_message();
    if !mentions.is_empty() {
        out.assert_stderr_mentions_any(mentions);
    }
    assert_eq!(sb.listed_ids(), Vec::<String>::new());
    assert_gone(sb, id);
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn create_fails_cleanly_when_the_bundle_dir_is_missing() {
    let sb = Sandbox::new();
    let id = sb.new_id("nobundle");
    let missing = sb.work_file("no-such-bundle");
    let missing_text = missing.to_str().unwrap();
    assert_create_fails_without_trace(&sb, &id, &missing, &[missing_text]);
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn create_fails_cleanly_when_config_json_is_missing() {
    let sb = Sandbox::new();
    let id = sb.new_id("noconfig");
    let bundle = sb.bundle("noconfig", &sh(RUN_FOREVER));
    std::fs::remove_file(bundle.path().join("config.json")).unwrap();
    assert_create_fails_without_trace(&sb, &id, bundle.path(), &["config.json"]);
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn create_fails_cleanly_when_config_json_is_not_json() {
    let sb = Sandbox::new();
    let id = sb.new_id("badjson");
    let bundle = sb.bundle("badjson", &sh(RUN_FOREVER));
    std::fs::write(bundle.path().join("config.json"), "{not json").unwrap();
    // Wording differs too much (runc quotes the JSON decoder) to pin down.
    assert_create_fails_without_trace(&sb, &id, bundle.path(), &[]);
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn run_returns_the_exit_code_and_passes_stdio_through() {
    let sb = Sandbox::new();
    let id = sb.new_id("run");
    let script = "echo out-line; echo err-line >&2; exit 7";
    let bundle = sb.bundle("run", &sh(script));

    let out = sb.run_foreground(&id, &bundle);
    assert_eq!(out.code(), Some(7), "{out:#?}");
    assert_eq!(out.stdout, "out-line\n", "{out:#?}");
    assert!(out.stderr.contains("err-line"), "{out:#?}");
    // runc's run deletes what it ran (unless --keep), so the id can be reused.
    assert_gone(&sb, &id);
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn run_detach_leaves_the_container_running() {
    let sb = Sandbox::new();
    let id = sb.new_id("detach");
    let bundle = sb.bundle("detach", &sh(RUN_UNTIL_GO));

    sb.run_detached(&id, &bundle).assert_success();
    let state = sb.state(&id);
    assert_eq!(state["status"], "running", "{state:#}");
    assert!(HostProcess::find(state_pid(&state)).is_some());
    bundle.wait_for_marker("started");
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn list_shows_the_containers_in_its_root() {
    let sb = Sandbox::new();
    assert_eq!(sb.listed_ids(), Vec::<String>::new());
    let created_id = sb.new_id("listc");
    let running_id = sb.new_id("listr");
    let created_bundle = sb.bundle("listc", &sh(RUN_FOREVER));
    let running_bundle = sb.bundle("listr", &sh(RUN_FOREVER));
    sb.create(&created_id, created_bundle.path(), &[])
        .assert_success();
    let running_pid = state_pid(&sb.start_container(&running_id, &running_bundle));

    let table = sb.invoke(&["list"]);
    table.assert_success();
    for id in [&created_id, &running_id] {
        assert!(
            table
                .stdout
                .lines()
                .any(|l| l.split_whitespace().next() == Some(id)),
            "{id} missing from:\n{}",
            table.stdout
        );
    }

    let mut quiet = sb.listed_ids();
    quiet.sort();
    let mut expected = vec![created_id.clone(), running_id.clone()];
    expected.sort();
    assert_eq!(quiet, expected);

    let json = sb
        .invoke(&["list", "--format", "json"])
        .assert_success()
        .json();
    let entries = json
        .as_array()
        .unwrap_or_else(|| panic!("not an array: {json:#}"));
    assert_eq!(entries.len(), 2, "{json:#}");
    let entry = |id: &str| {
        entries
            .iter()
            .find(|e| e["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing from {json:#}"))
    };
    assert_eq!(entry(&created_id)["status"], "created");
    assert_eq!(entry(&running_id)["status"], "running");
    assert_eq!(entry(&running_id)["pid"], running_pid);
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn ps_lists_the_container_processes() {
    let sb = Sandbox::new();
    let probe = sb.invoke(&["ps", "--help"]);
    if !probe.success() {
        eprintln!(
            "SKIPPED: {} has no `ps` (`ps --help` exited {:?})",
            sb.runtime().display(),
            probe.code()
        );
        return;
    }
    let id = sb.new_id("ps");
    let bundle = sb.bundle("ps", &sh(RUN_FOREVER));
    let pid = state_pid(&sb.start_container(&id, &bundle));

    let table = sb.invoke(&["ps", &id]);
    table.assert_success();
    let pid_text = pid.to_string();
    assert!(
        table.stdout.split_whitespace().any(|w| w == pid_text),
        "pid {pid} missing from:\n{}",
        table.stdout
    );

    let json = sb
        .invoke(&["ps", "--format", "json", &id])
        .assert_success()
        .json();
    let pids: Vec<i64> = json
        .as_array()
        .and_then(|a| a.iter().map(Value::as_i64).collect())
        .unwrap_or_else(|| panic!("not an array of pids: {json:#}"));
    assert!(pids.contains(&pid), "{pid} missing from {json:#}");
    assert!(pids.iter().all(|&p| p > 0), "{json:#}");
}

/// The program name must reach the user whichever step notices it is missing.
#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn create_and_start_of_a_missing_executable_fail_naming_it() {
    let sb = Sandbox::new();
    let id = sb.new_id("noexe");
    let bundle = sb.bundle("noexe", &[&format!("/bin/{MISSING_EXECUTABLE}")]);

    let create = sb.create(&id, bundle.path(), &[]);
    let failure = if create.success() {
        // Later runtimes report it at start.
        sb.invoke(&["start", &id])
    } else {
        create
    };
    failure
        .assert_failure_with_message()
        .assert_stderr_mentions_any(&[MISSING_EXECUTABLE]);
    let state = sb.invoke(&["state", &id]);
    if state.success() {
        assert_ne!(state.json()["status"], "running", "{state:#?}");
    }
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn run_of_a_missing_executable_fails_naming_it() {
    let sb = Sandbox::new();
    let id = sb.new_id("runnoexe");
    // A bare name, so the lookup goes through the config's PATH.
    let bundle = sb.bundle("runnoexe", &[MISSING_EXECUTABLE]);

    let out = sb.run_foreground(&id, &bundle);
    out.assert_failure_with_message()
        .assert_stderr_mentions_any(&[MISSING_EXECUTABLE]);
    assert_gone(&sb, &id);
}

/// "1.0.2-dev" -> (1, 0, 2), for ordering.
fn version_triple(version: &str) -> (u64, u64, u64) {
    let core = version.split(['-', '+']).next().unwrap_or_default();
    let mut parts = core.split('.').map(|p| {
        p.parse()
            .unwrap_or_else(|e| panic!("{version:?} is not semver: {e}"))
    });
    let mut next = || {
        parts
            .next()
            .unwrap_or_else(|| panic!("{version:?} is not semver"))
    };
    (next(), next(), next())
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn features_reports_the_supported_oci_versions() {
    let sb = Sandbox::new();
    // `features` is newer than the rest of the CLI (runc 1.1 has it, crun 1.8 not).
    let probe = sb.invoke(&["features", "--help"]);
    if !probe.success() {
        eprintln!(
            "SKIPPED: {} has no `features` (`features --help` exited {:?}: {})",
            sb.runtime().display(),
            probe.code(),
            probe.stderr.trim()
        );
        return;
    }
    let features = sb.invoke(&["features"]).assert_success().json();
    let field = |name: &str| {
        features[name]
            .as_str()
            .unwrap_or_else(|| panic!("{name} missing: {features:#}"))
            .to_owned()
    };
    let (min, max) = (field("ociVersionMin"), field("ociVersionMax"));
    assert!(
        version_triple(&min) <= version_triple(&max),
        "{min} > {max}"
    );
}

#[test]
#[ignore = "conformance: set OKVM_CONFORMANCE_RUNTIME=/path/to/runtime"]
fn version_flag_prints_a_version_line() {
    let sb = Sandbox::new();
    let out = run_piped(Command::new(sb.runtime()).arg("--version"), COMMAND_TIMEOUT);
    out.assert_success();
    assert!(
        out.stdout.lines().any(|l| l.contains("version")),
        "{out:#?}"
    );
}
