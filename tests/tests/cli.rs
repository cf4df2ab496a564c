//! The `okvm` binary as a user runs it.

use std::path::Path;
use std::process::Command;

use okvm_tests::bin;

#[test]
fn version_names_the_program() {
    let out = Command::new(bin("okvm")).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("okvm "), "{text:?}");
}

#[test]
fn check_kvm_says_one_line_that_matches_the_machine() {
    let out = Command::new(bin("okvm")).arg("check-kvm").output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 1, "{text:?}");
    assert!(text.starts_with("kvm: "), "{text:?}");
    let hardware = text.contains("usable at hardware speed (");
    assert_eq!(
        out.status.success(),
        hardware,
        "{text:?} vs {:?}",
        out.status
    );
    // Independent evidence from the machine itself.
    if !Path::new("/dev/kvm").exists() {
        assert!(text.contains("/dev/kvm does not exist"), "{text:?}");
    } else if Path::new("/sys/module/kvm_pvm").exists() {
        assert!(text.contains("PVM detected"), "{text:?}");
        assert_eq!(out.status.code(), Some(1));
    } else {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
        let flags = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .unwrap_or("");
        let virt = flags.split_whitespace().any(|f| f == "vmx" || f == "svm");
        if !virt {
            assert!(text.contains("neither vmx nor svm"), "{text:?}");
        }
    }
}

#[test]
fn initramfs_is_a_cpio_the_kernel_and_cpio_can_read() {
    let dir = tempfile::tempdir().unwrap();
    let init = dir.path().join("fake-init");
    std::fs::write(&init, b"#!/bin/sh\necho hi\n").unwrap();
    let img = dir.path().join("initrd.img");
    let st = Command::new(bin("okvm"))
        .args(["initramfs", "--init"])
        .arg(&init)
        .arg("-o")
        .arg(&img)
        .status()
        .unwrap();
    assert!(st.success());
    // GNU cpio, independent of our writer, lists and extracts it.
    let out = Command::new("cpio")
        .args(["-itv", "--quiet"])
        .stdin(std::fs::File::open(&img).unwrap())
        .output()
        .expect("cpio (apt install cpio)");
    assert!(out.status.success(), "{out:?}");
    let list = String::from_utf8(out.stdout).unwrap();
    let line = |name: &str| {
        list.lines()
            .find(|l| l.ends_with(&format!(" {name}")))
            .unwrap_or_else(|| panic!("{name} missing from:\n{list}"))
            .to_string()
    };
    assert!(line("init").starts_with("-rwxr-xr-x"), "{list}");
    assert!(line("dev/console").starts_with("crw-------"), "{list}");
    assert!(line("tmp").starts_with("drwxrwxrwt"), "{list}");
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    let st = Command::new("cpio")
        .args(["-id", "--quiet", "init"])
        .current_dir(&x)
        .stdin(std::fs::File::open(&img).unwrap())
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read(x.join("init")).unwrap(),
        b"#!/bin/sh\necho hi\n"
    );
}

#[test]
fn initramfs_with_missing_init_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("initrd.img");
    let out = Command::new(bin("okvm"))
        .args(["initramfs", "--init", "/nonexistent/okvm-init", "-o"])
        .arg(&img)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err:?}");
    assert!(err.contains("/nonexistent/okvm-init"), "{err:?}");
    assert!(!img.exists());
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "temp files left"
    );
}

#[test]
fn okvm_init_refuses_to_run_outside_a_guest() {
    let out = Command::new(bin("okvm-init")).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("must run as PID 1"), "{err:?}");
}
