//! The shim binary as containerd sees it: exit status and what it prints.

use std::process::{Command, Output};

const NOT_IMPLEMENTED: &str =
    "containerd-shim-okvm-v2: the Task service is not implemented yet (see issue: containerd shim)\n";

fn shim(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_containerd-shim-okvm-v2"))
        .args(args)
        .output()
        .expect("run the shim binary")
}

fn containerd_args(action: &str) -> Vec<&str> {
    vec![
        "-namespace",
        "default",
        "-address",
        "/run/containerd/containerd.sock",
        "-publish-binary",
        "/usr/bin/containerd",
        "-id",
        "abc123",
        action,
    ]
}

#[test]
fn version_prints_name_and_version() {
    for flag in ["-v", "--version"] {
        let out = shim(&[flag]);
        assert!(out.status.success(), "{flag}: {out:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("containerd-shim-okvm-v2 {}\n", env!("CARGO_PKG_VERSION"))
        );
    }
}

#[test]
fn start_and_delete_say_plainly_that_the_task_service_is_missing() {
    for action in ["start", "delete"] {
        let out = shim(&containerd_args(action));
        assert_eq!(out.status.code(), Some(1), "{action}: {out:?}");
        assert_eq!(String::from_utf8_lossy(&out.stderr), NOT_IMPLEMENTED);
        // containerd reads the shim's address from stdout after `start`:
        // nothing must be printed there on failure.
        assert!(out.stdout.is_empty(), "{action} printed to stdout");
    }
}

#[test]
fn usage_errors_exit_2_with_the_reason() {
    let out = shim(&["-bogus", "start"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("containerd-shim-okvm-v2: flag provided but not defined: -bogus\n"),
        "{stderr}"
    );

    let out = shim(&["-namespace", "default", "-id"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("flag needs an argument: -id"));

    let out = shim(&["-namespace", "default", "start"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing required flag -id"));
}

#[test]
fn help_goes_to_stdout_and_succeeds() {
    let out = shim(&["-h"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("usage: containerd-shim-okvm-v2"));
}
