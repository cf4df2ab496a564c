//! okvm's own VMM end to end, inside the test host: `okvm boot` with virtio-fs,
//! vsock, net and rng; okvm-init announcing itself and running commands for
//! the host over vsock.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use okvm::guest::host_port_path;
use okvm_init::banner;
use okvm_integration::guest::{unpack_busybox, BootedGuest};
use okvm_integration::{artifact, okvm_boot, require_testhost, text};
use okvm_protocol::{Event, RequestBody, ResponseBody, Stdio as GuestStdio};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// One booted guest with the busybox image shared as tag "rootfs" and
/// mounted by okvm-init at /rootfs (with /proc, /sys and /dev bound in).
struct Vm {
    guest: BootedGuest,
}

impl std::ops::Deref for Vm {
    type Target = BootedGuest;
    fn deref(&self) -> &BootedGuest {
        &self.guest
    }
}

impl std::ops::DerefMut for Vm {
    fn deref_mut(&mut self) -> &mut BootedGuest {
        &mut self.guest
    }
}

impl Vm {
    fn boot(extra: &[&str]) -> Vm {
        require_testhost();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = dir.path().join("rootfs");
        unpack_busybox(&rootfs);
        let mut args = vec![
            "--share".to_string(),
            format!("rootfs={}", rootfs.display()),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let mut vm = Vm {
            guest: BootedGuest::boot(dir, &args, BOOT_TIMEOUT),
        };
        let mounted = vm.request(RequestBody::Mount {
            tag: "rootfs".into(),
            target: "/rootfs".into(),
        });
        assert_eq!(mounted, ResponseBody::Done);
        // The image's commands expect /proc, /sys and /dev.
        for fs in ["/proc", "/sys", "/dev"] {
            let r = vm.request(RequestBody::Run {
                args: ["/rootfs/bin/busybox", "mount", "--rbind", fs]
                    .iter()
                    .map(|s| s.to_string())
                    .chain([format!("/rootfs{fs}")])
                    .collect(),
                env: vec![],
                cwd: None,
                root: None,
                stdio: GuestStdio::Capture,
            });
            assert!(
                matches!(r, ResponseBody::Exited { code: Some(0), .. }),
                "{r:?}"
            );
        }
        vm
    }

    fn rootfs(&self) -> PathBuf {
        self.dir.path().join("rootfs")
    }

    /// Runs `sh -c script` in the image; returns (code, signal, stdout, stderr).
    fn sh(&mut self, script: &str) -> (Option<i32>, Option<i32>, String, String) {
        match self.run(&["/bin/sh", "-c", script], GuestStdio::Capture) {
            ResponseBody::Exited {
                code,
                signal,
                stdout,
                stderr,
                ..
            } => (code, signal, text(&stdout), text(&stderr)),
            other => panic!("{script}: {other:?}"),
        }
    }

    fn run(&mut self, args: &[&str], stdio: GuestStdio) -> ResponseBody {
        self.request(RequestBody::Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            root: Some("/rootfs".into()),
            stdio,
        })
    }

    /// Asks okvm-init to power off; returns how `okvm boot` ended.
    fn shutdown(self) -> (ExitStatus, String) {
        self.guest.shutdown(BOOT_TIMEOUT)
    }
}

fn sha256_of(path: &Path) -> String {
    let out = Command::new("sha256sum").arg(path).output().unwrap();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn okvm_init_announces_itself_and_runs_commands_with_their_exit_status() {
    let mut vm = Vm::boot(&["--vcpus", "2"]);
    let Event::Ready { uptime_ms, version } = &vm.ready;
    assert!(*uptime_ms > 0 && *uptime_ms < 120_000, "{:?}", vm.ready);
    assert_eq!(version, env!("CARGO_PKG_VERSION"));

    let (code, _, out, _) = vm.sh("echo hello; echo oops >&2; exit 0");
    assert_eq!((code, out.as_str()), (Some(0), "hello\n"));
    let (code, signal, _, err) = vm.sh("echo oops >&2; exit 7");
    assert_eq!((code, signal, err.as_str()), (Some(7), None, "oops\n"));
    let (code, signal, _, _) = vm.sh("kill -TERM $$");
    assert_eq!((code, signal), (None, Some(15)));
    let (_, _, out, _) = vm.sh("cat /sys/devices/system/cpu/online; cat /etc/okvm-image");
    assert!(out.starts_with("0-1\n"), "two vCPUs online: {out}");
    assert!(out.contains("okvm test image"), "{out}");
    match vm.run(&["/no/such/program"], GuestStdio::Capture) {
        ResponseBody::Error { message } => {
            assert!(message.contains("/no/such/program"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    // The console went to the file we named, and carries the banner.
    let console = std::fs::read_to_string(vm.console()).unwrap();
    assert!(console.contains(banner::PREFIX), "{console}");

    let (status, err) = vm.shutdown();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(!err.contains("error"), "{err}");
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn virtio_fs_carries_files_both_ways() {
    let mut vm = Vm::boot(&[]);
    let from_host = vm.rootfs().join("from-host");
    let mut data = vec![0u8; 3 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    std::fs::write(&from_host, &data).unwrap();
    let (code, _, out, err) = vm.sh("sha256sum /from-host");
    assert_eq!(code, Some(0), "{err}");
    assert!(out.starts_with(&sha256_of(&from_host)), "{out}");

    let (code, _, out, err) =
        vm.sh("head -c 3145728 /dev/urandom > /from-guest && sync && sha256sum /from-guest");
    assert_eq!(code, Some(0), "{err}");
    let written = vm.rootfs().join("from-guest");
    assert_eq!(std::fs::metadata(&written).unwrap().len(), 3 << 20);
    assert!(out.starts_with(&sha256_of(&written)), "{out}");
    let (status, err) = vm.shutdown();
    assert_eq!(status.code(), Some(0), "{err}");
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn vsock_moves_megabytes_each_way_intact() {
    let mut vm = Vm::boot(&[]);
    let stdin_l = UnixListener::bind(host_port_path(&vm.uds, 6000)).unwrap();
    let stdout_l = UnixListener::bind(host_port_path(&vm.uds, 6001)).unwrap();
    let mut data = vec![0u8; 8 << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let feeder = {
        let data = data.clone();
        std::thread::spawn(move || {
            let (mut s, _) = stdin_l.accept().unwrap();
            s.write_all(&data).unwrap();
        })
    };
    let drainer = std::thread::spawn(move || {
        let (mut s, _) = stdout_l.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    let start = Instant::now();
    // `cat` copies guest stdin to stdout: 8 MiB host->guest, then back.
    let r = vm.run(
        &["/bin/cat"],
        GuestStdio::Streams {
            stdin: Some(6000),
            stdout: Some(6001),
            stderr: None,
        },
    );
    assert!(
        matches!(r, ResponseBody::Exited { code: Some(0), .. }),
        "{r:?}"
    );
    feeder.join().unwrap();
    let got = drainer.join().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(got.len(), data.len());
    assert!(got == data, "the bytes that came back differ");
    println!(
        "8 MiB each way in {secs:.2} s ({:.1} MiB/s per direction)",
        8.0 / secs
    );
    let (status, err) = vm.shutdown();
    assert_eq!(status.code(), Some(0), "{err}");
}

/// Runs `okvm boot` to its end; returns (exit code, stderr).
fn okvm_boot_to_end(args: &[&str]) -> (Option<i32>, String) {
    let (code, _out, err) = okvm_boot(args);
    (code, err)
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn a_broken_initramfs_or_missing_parts_are_one_clear_error() {
    require_testhost();
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.img");
    std::fs::write(&junk, b"this is not a cpio archive").unwrap();
    let kernel = artifact("vmlinux");
    let kernel = kernel.to_str().unwrap();
    let (code, err) = okvm_boot_to_end(&[
        "--kernel",
        kernel,
        "--initrd",
        junk.to_str().unwrap(),
        "--console",
        "off",
    ]);
    assert_ne!(code, Some(0), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("the guest kernel panicked: Kernel panic - not syncing"),
        "{err}"
    );

    let initrd = artifact("okvm-initrd.img");
    let initrd = initrd.to_str().unwrap();
    let share = format!("x={}", dir.path().join("missing").display());
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let good_share = format!("x={}", shared.display());
    for (args, needle) in [
        (
            vec!["--kernel", "/nonexistent/vmlinux", "--initrd", initrd],
            "/nonexistent/vmlinux",
        ),
        (
            vec!["--kernel", kernel, "--initrd", "/nonexistent/initrd"],
            "/nonexistent/initrd",
        ),
        (
            vec!["--kernel", kernel, "--initrd", initrd, "--share", &share],
            "does not exist",
        ),
        // virtiofsd is started before the tap is found missing.
        (
            vec![
                "--kernel",
                kernel,
                "--initrd",
                initrd,
                "--share",
                &good_share,
                "--tap",
                "okvmnosuch0",
            ],
            "okvmnosuch0",
        ),
    ] {
        let (code, err) = okvm_boot_to_end(&args);
        assert_ne!(code, Some(0), "{args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
    // Nothing was left behind: no virtiofsd serving our directory, no run directory.
    let ps = Command::new("pgrep")
        .args(["-f", &format!("shared-dir={}", shared.display())])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "virtiofsd left running: {}",
        text(&ps.stdout)
    );
    let tmp = std::env::temp_dir();
    let left: Vec<_> = std::fs::read_dir(&tmp)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("okvm-boot-"))
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "run directories left: {left:?}");
}

/// A persistent tap the test creates (and deletes), as the networking layer would.
struct TestTap(&'static str);

impl TestTap {
    fn create(name: &'static str, addr: &str) -> TestTap {
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let _ = Command::new("ip").args(["link", "del", name]).output();
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        let tap = TestTap(name);
        ip(&["addr", "add", addr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        tap
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", self.0]).output();
    }
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn the_guest_sees_a_nic_on_the_tap_and_reaches_the_host_through_it() {
    require_testhost();
    let _tap = TestTap::create("okvmt0", "10.99.0.1/24");
    let mut vm = Vm::boot(&["--tap", "okvmt0", "--mac", "02:00:0a:63:00:02"]);
    let (code, _, out, err) = vm.sh("cat /sys/class/net/eth0/address");
    assert_eq!((code, out.trim()), (Some(0), "02:00:0a:63:00:02"), "{err}");
    // Packets delivered both ways: ICMP echo to the host's end of the tap.
    let (code, _, out, err) = vm.sh(
        "ip addr add 10.99.0.2/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 10 10.99.0.1",
    );
    assert_eq!(code, Some(0), "{out}\n{err}");
    assert!(out.contains("3 packets received"), "{out}");
    // And the host reaches the guest.
    let ping = Command::new("busybox")
        .args(["ping", "-c", "2", "-W", "10", "10.99.0.2"])
        .output()
        .unwrap();
    assert!(ping.status.success(), "{}", text(&ping.stdout));
    let (status, err) = vm.shutdown();
    assert_eq!(status.code(), Some(0), "{err}");
}
