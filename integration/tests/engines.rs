//! Inside the test host, the container engines okvm plugs into work out of the box
//! with their stock runtimes (crun for podman, runc for containerd). Later suites
//! run the same engines with okvm; these prove the ground they stand on.

use std::process::Command;

use okvm_integration::{import_images, require_testhost, text};

fn images() {
    import_images();
}

fn sh(script: &str) -> std::process::Output {
    Command::new("sh").args(["-c", script]).output().unwrap()
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn podman_runs_busybox_with_crun_and_returns_its_exit_code() {
    require_testhost();
    images();
    let out = sh(
        "podman run --rm --runtime crun localhost/okvm-busybox sh -c 'cat /etc/okvm-image; exit 7'",
    );
    assert_eq!(out.status.code(), Some(7), "{out:?}");
    assert_eq!(
        text(&out.stdout),
        "okvm test image (busybox from Debian busybox-static)\n"
    );
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn podman_default_network_publishes_ports() {
    require_testhost();
    images();
    let out = sh("podman run -d --name web -p 8080:80 localhost/okvm-busybox httpd -f -p 80 -h /etc \
         && for i in $(seq 50); do timeout 5 busybox wget -q -O - http://127.0.0.1:8080/okvm-image && break; sleep 0.2; done; \
         rc=$?; podman rm -f -t 0 web >/dev/null; exit $rc");
    assert!(out.status.success(), "{out:?}");
    assert!(text(&out.stdout).contains("okvm test image"), "{out:?}");
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn containerd_runs_busybox_with_runc_and_returns_its_exit_code() {
    require_testhost();
    images();
    let out = sh("ctr run --rm localhost/okvm-busybox:latest engines-t1 sh -c 'echo from-containerd; exit 4'");
    assert_eq!(out.status.code(), Some(4), "{out:?}");
    assert_eq!(text(&out.stdout), "from-containerd\n");
}
