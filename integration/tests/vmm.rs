//! okvm's own VMM end to end, inside the test host: `okvm boot` with virtio-fs,
//! vsock, net and rng; okvm-init announcing itself and running commands for
//! the host over vsock.

use std::io::{Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use okvm::guest::{host_port_path, Client};
use okvm_init::banner;
use okvm_integration::{artifact, okvm_bin, okvm_boot, require_testhost, text, wait_within};
use okvm_protocol::{Event, RequestBody, ResponseBody, Stdio as GuestStdio, CONTROL_PORT};

const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// A directory holding the busybox test image's files, to share as a rootfs.
fn busybox_rootfs(dir: &Path) -> PathBuf {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(&root).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(artifact("images/busybox-rootfs.tar"))
        .arg("-C")
        .arg(&root)
        .status()
        .unwrap();
    assert!(st.success(), "cannot unpack the busybox image");
    root
}

/// One `okvm boot` with a vsock device, its rootfs shared as tag "rootfs" and
/// mounted by okvm-init at /rootfs, and a control connection to okvm-init.
struct Vm {
    child: Child,
    uds: PathBuf,
    client: Client,
    ready: Event,
    console: PathBuf,
    dir: tempfile::TempDir,
}

impl Vm {
    fn boot(extra: &[&str]) -> Vm {
        require_testhost();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = busybox_rootfs(dir.path());
        let uds = dir.path().join("vsock.sock");
        let console = dir.path().join("console.log");
        let log = dir.path().join("okvm.log");
        let ready_listener = UnixListener::bind(host_port_path(&uds, CONTROL_PORT)).unwrap();
        let child = Command::new(okvm_bin())
            .arg("boot")
            .arg("--kernel")
            .arg(artifact("vmlinux"))
            .arg("--initrd")
            .arg(artifact("okvm-initrd.img"))
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--console")
            .arg(&console)
            .arg("--share")
            .arg(format!("rootfs={}", rootfs.display()))
            .args(extra)
            .stdin(Stdio::null())
            .env("OKVM_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("target/release/okvm (make builds it)");
        let mut child = child;
        let (client, ready) = accept_within(&ready_listener, &mut child, &dir, BOOT_TIMEOUT);
        let mut vm = Vm {
            child,
            uds,
            client,
            ready,
            console,
            dir,
        };
        // A guest that stops answering fails the test instead of hanging it.
        vm.client.set_timeout(Some(BOOT_TIMEOUT)).unwrap();
        let mounted = vm.client.request(RequestBody::Mount {
            tag: "rootfs".into(),
            target: "/rootfs".into(),
        });
        assert!(
            matches!(mounted, Ok(ResponseBody::Done)),
            "mount: {mounted:?}"
        );
        // The image's commands expect /proc, /sys and /dev.
        for fs in ["/proc", "/sys", "/dev"] {
            let r = vm.client.request(RequestBody::Run {
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
                matches!(r, Ok(ResponseBody::Exited { code: Some(0), .. })),
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
        let r = self.client.request(RequestBody::Run {
            args: args.iter().map(|s| s.to_string()).collect(),
            env: vec![],
            cwd: None,
            root: Some("/rootfs".into()),
            stdio,
        });
        r.unwrap_or_else(|e| panic!("running {args:?}: {e}\n{}", diagnostics(self.dir.path())))
    }

    /// Asks okvm-init to power off; returns how `okvm boot` ended.
    fn shutdown(mut self) -> (ExitStatus, String) {
        let r = self.client.request(RequestBody::Shutdown);
        assert!(matches!(r, Ok(ResponseBody::Done)), "{r:?}");
        let st = wait_within(&mut self.child, BOOT_TIMEOUT, "okvm boot");
        let err = std::fs::read_to_string(self.dir.path().join("okvm.log")).unwrap_or_default();
        (st, err)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// okvm's log and the guest's console, for a failure message.
fn diagnostics(dir: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    format!(
        "okvm log:\n{}\nconsole:\n{}",
        read("okvm.log"),
        read("console.log")
    )
}

fn accept_within(
    listener: &UnixListener,
    child: &mut Child,
    dir: &tempfile::TempDir,
    limit: Duration,
) -> (Client, Event) {
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + limit;
    loop {
        match listener.accept() {
            Ok((s, _)) => return Client::announced(s).expect("okvm-init's announcement"),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("accept: {e}"),
        }
        if let Some(st) = child.try_wait().unwrap() {
            panic!(
                "okvm boot exited ({st}) before okvm-init was ready\n{}",
                diagnostics(dir.path())
            );
        }
        assert!(
            Instant::now() < deadline,
            "okvm-init not ready within {limit:?}\n{}",
            diagnostics(dir.path())
        );
        std::thread::sleep(Duration::from_millis(5));
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
    let console = std::fs::read_to_string(&vm.console).unwrap();
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
