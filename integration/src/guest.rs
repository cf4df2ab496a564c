//! One `okvm boot` with a vsock device, driven through okvm-init's protocol:
//! the fixture the `vmm` and `guest_container` suites share.

use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use okvm::guest::{host_port_path, Client};
use okvm_protocol::{Event, RequestBody, ResponseBody, CONTROL_PORT};

use crate::{artifact, okvm_bin, wait_within};

/// A booted guest whose okvm-init has announced itself. Its files (vsock
/// socket, console, okvm's log) are in `dir`; dropping it kills the VMM.
pub struct BootedGuest {
    pub child: Child,
    pub uds: PathBuf,
    pub client: Client,
    pub ready: Event,
    pub dir: tempfile::TempDir,
}

/// Unpacks the busybox test image into `dir`.
pub fn unpack_busybox(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let st = Command::new("tar")
        .arg("-xf")
        .arg(artifact("images/busybox-rootfs.tar"))
        .arg("-C")
        .arg(dir)
        .status()
        .unwrap();
    assert!(st.success(), "cannot unpack the busybox image");
}

impl BootedGuest {
    /// `okvm boot` with our kernel and initramfs, a vsock device and `extra`
    /// arguments (shares, vCPUs…); waits up to `limit` for okvm-init, whose
    /// control connection then answers within `limit` or fails the test.
    pub fn boot(dir: tempfile::TempDir, extra: &[String], limit: Duration) -> BootedGuest {
        crate::require_testhost();
        let uds = dir.path().join("vsock.sock");
        let ready = UnixListener::bind(host_port_path(&uds, CONTROL_PORT)).unwrap();
        let mut child = Command::new(okvm_bin())
            .arg("boot")
            .arg("--kernel")
            .arg(artifact("vmlinux"))
            .arg("--initrd")
            .arg(artifact("okvm-initrd.img"))
            .arg("--vsock-uds")
            .arg(&uds)
            .arg("--console")
            .arg(dir.path().join("console.log"))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .env("OKVM_LOG", "info")
            .stderr(std::fs::File::create(dir.path().join("okvm.log")).unwrap())
            .spawn()
            .expect("target/release/okvm (make builds it)");
        ready.set_nonblocking(true).unwrap();
        let deadline = Instant::now() + limit;
        let (mut client, event) = loop {
            match ready.accept() {
                Ok((s, _)) => break Client::announced(s).expect("okvm-init's announcement"),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("accept: {e}"),
            }
            if let Some(st) = child.try_wait().unwrap() {
                panic!(
                    "okvm boot ended ({st}) before okvm-init was ready\n{}",
                    diagnostics(dir.path())
                );
            }
            assert!(
                Instant::now() < deadline,
                "okvm-init not ready within {limit:?}\n{}",
                diagnostics(dir.path())
            );
            std::thread::sleep(Duration::from_millis(5));
        };
        client.set_timeout(Some(limit));
        BootedGuest {
            child,
            uds,
            client,
            ready: event,
            dir,
        }
    }

    pub fn console(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }

    /// okvm's log and the guest's console, for a failure message.
    pub fn diagnostics(&self) -> String {
        diagnostics(self.dir.path())
    }

    /// Sends one request; a broken connection fails the test with diagnostics.
    pub fn request(&mut self, body: RequestBody) -> ResponseBody {
        let what = format!("{body:?}");
        self.client
            .request(body)
            .unwrap_or_else(|e| panic!("{what}: {e}\n{}", diagnostics(self.dir.path())))
    }

    /// Asks okvm-init to power off; returns how `okvm boot` ended and its log.
    pub fn shutdown(mut self, limit: Duration) -> (ExitStatus, String) {
        let r = self.request(RequestBody::Shutdown);
        assert_eq!(r, ResponseBody::Done, "\n{}", self.diagnostics());
        let st = wait_within(&mut self.child, limit, "okvm boot");
        let log = std::fs::read_to_string(self.dir.path().join("okvm.log")).unwrap_or_default();
        (st, log)
    }
}

impl Drop for BootedGuest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn diagnostics(dir: &Path) -> String {
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
    format!(
        "okvm log:\n{}\nconsole:\n{}",
        read("okvm.log"),
        read("console.log")
    )
}
