//! Smoke boot, inside the test host: QEMU `-M microvm -accel kvm` boots our guest
//! kernel with the okvm-init initramfs, okvm-init prints its banner and resets the
//! machine. This proves kernel, init and harness independently of okvm's own VMM;
//! QEMU stays as the baseline that VMM is benchmarked against.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::Duration;

use okvm_init::banner;
use okvm_integration::{artifact, okvm_boot, require_testhost, text, wait_within};

/// Boots vmlinux + initrd under QEMU microvm/KVM and returns (exit code, console).
fn qemu_boot(cmdline: &str, initrd: &std::path::Path) -> (Option<i32>, String) {
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,accel=kvm,acpi=off",
            "-cpu",
            "host",
            "-m",
            "256",
            "-smp",
            "1",
        ])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
        ])
        .arg("-no-reboot")
        .arg("-kernel")
        .arg(artifact("vmlinux"))
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", cmdline])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-system-x86_64 (apt install qemu-system-x86)");
    let status = wait_within(&mut child, Duration::from_secs(120), "the QEMU guest");
    let mut out = Vec::new();
    child.stdout.take().unwrap().read_to_end(&mut out).unwrap();
    let mut err = Vec::new();
    child.stderr.take().unwrap().read_to_end(&mut err).unwrap();
    (status.code(), text(&out) + &text(&err))
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn qemu_microvm_boots_our_kernel_to_okvm_init() {
    require_testhost();
    let (code, console) = qemu_boot(
        "console=ttyS0 reboot=t panic=-1 quiet",
        &artifact("okvm-initrd.img"),
    );
    let line = banner_line(&console, "");
    let up = banner::parse_uptime(line).expect("banner carries the boot time");
    assert!(
        up > Duration::ZERO && up < Duration::from_secs(60),
        "{line}"
    );
    assert!(line.contains("kernel 6.12."), "{line}");
    // okvm-init resets the guest, which QEMU (-no-reboot) turns into a clean exit.
    assert_eq!(code, Some(0), "{console}");
    println!("{line}");
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn a_broken_initramfs_is_a_kernel_panic_not_a_hang() {
    require_testhost();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, b"this is not a cpio archive").unwrap();
    // panic=-1 resets at once, so a broken image ends the VM instead of hanging it.
    let (code, console) = qemu_boot("console=ttyS0 reboot=t panic=-1", &junk);
    assert_eq!(code, Some(0), "{console}");
    assert!(!console.contains(banner::PREFIX), "{console}");
    assert!(console.contains("Kernel panic"), "{console}");
}

/// The okvm-init banner line in a guest's console output.
fn banner_line<'a>(out: &'a str, err: &str) -> &'a str {
    out.lines()
        .find(|l| l.contains(banner::PREFIX))
        .unwrap_or_else(|| panic!("no okvm-init banner in the console:\n{out}\n{err}"))
}

/// `okvm boot` of `kernel` with the okvm-init initramfs and `extra` flags.
fn okvm_boot_with_init(kernel: &std::path::Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let initrd = artifact("okvm-initrd.img");
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--initrd",
        initrd.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    okvm_boot(&args)
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn okvm_boot_runs_our_kernel_to_okvm_init_and_exits_0() {
    require_testhost();
    let (code, out, err) = okvm_boot_with_init(&artifact("vmlinux"), &[]);
    let line = banner_line(&out, &err);
    assert!(banner::parse_uptime(line).is_some(), "{line}");
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert_eq!(banner::parse_cpus(line), Some(1), "{line}");
    // Inside the test host KVM is (emulated) hardware: no PVM warning.
    assert!(!err.contains("warning"), "{err}");
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn okvm_boot_brings_several_vcpus_online() {
    require_testhost();
    let kernel = artifact("vmlinux");
    for n in ["2", "4"] {
        let (code, out, err) = okvm_boot_with_init(&kernel, &["--vcpus", n]);
        let line = banner_line(&out, &err);
        assert_eq!(banner::parse_cpus(line), n.parse().ok(), "{line}");
        assert_eq!(code, Some(0), "{out}\n{err}");
    }
    let (code, _, err) = okvm_boot(&["--kernel", kernel.to_str().unwrap(), "--vcpus", "9"]);
    assert_ne!(code, Some(0));
    assert!(
        err.contains("9 vCPUs requested; okvm supports 1 to 8"),
        "{err}"
    );
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn okvm_boot_bad_input_is_one_clear_error() {
    require_testhost();
    let initrd = artifact("okvm-initrd.img");
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk");
    std::fs::write(&junk, b"not a kernel").unwrap();
    for (kernel, needle) in [
        (
            "/nonexistent/vmlinux",
            "cannot open kernel /nonexistent/vmlinux",
        ),
        (
            junk.to_str().unwrap(),
            "is neither an ELF vmlinux nor a bzImage",
        ),
    ] {
        let (code, _out, err) =
            okvm_boot(&["--kernel", kernel, "--initrd", initrd.to_str().unwrap()]);
        assert_ne!(code, Some(0), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains(needle), "{err}");
    }
}

/// Debian's own kernel: a compressed bzImage, built with ACPI and modules,
/// as a user might bring.
fn debian_bzimage() -> std::path::PathBuf {
    let mut found: Vec<_> = std::fs::read_dir("/boot")
        .expect("/boot")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found
        .pop()
        .expect("a bzImage in /boot (make setup installs linux-image-cloud-amd64)")
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn okvm_boot_runs_a_distribution_bzimage_to_okvm_init() {
    require_testhost();
    let kernel = debian_bzimage();
    let (code, out, err) = okvm_boot_with_init(&kernel, &[]);
    let line = banner_line(&out, &err);
    let release = kernel
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    assert!(line.contains(&format!("kernel {release}")), "{line}");
    assert_eq!(code, Some(0), "{out}\n{err}");
}
