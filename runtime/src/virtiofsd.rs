//! One virtiofsd per virtio-fs share: found, started, waited for, and stopped.
//!
//! virtiofsd serves one directory per instance, so a VM with several tags runs
//! several. Each one dies with okvm (parent-death signal) and is stopped and
//! reaped when its [`Virtiofsd`] handle drops, so none outlives the VM.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("virtiofsd not found (set OKVM_VIRTIOFSD, or `cargo install virtiofsd --locked`; `make setup` does)")]
    NotFound,
    #[error("shared directory {0} does not exist or is not a directory")]
    NoDir(PathBuf),
    #[error("cannot start virtiofsd {bin}: {err}")]
    Spawn { bin: PathBuf, err: std::io::Error },
    #[error("virtiofsd for {dir} exited before it was ready ({status}): {log}")]
    Died {
        dir: PathBuf,
        status: std::process::ExitStatus,
        log: String,
    },
    #[error("virtiofsd for {0} did not create its socket within 10 s")]
    Timeout(PathBuf),
}

/// Where virtiofsd is: $OKVM_VIRTIOFSD, then PATH, then the usual install places.
pub fn find() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("OKVM_VIRTIOFSD") {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")))
        .unwrap_or_else(|| "/root/.cargo".into());
    std::env::split_paths(&path)
        .map(|d| d.join("virtiofsd"))
        .chain([
            "/usr/libexec/virtiofsd".into(),
            "/usr/lib/qemu/virtiofsd".into(),
            cargo_home.join("bin/virtiofsd"),
            "/root/.cargo/bin/virtiofsd".into(),
        ])
        .find(|p| p.is_file())
        .ok_or(Error::NotFound)
}

/// A running virtiofsd; dropping it stops it.
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
}

impl Virtiofsd {
    /// Starts virtiofsd sharing `dir` on `socket` and waits until it listens.
    /// Its log goes to `log` (kept for the error message if it dies).
    pub fn start(bin: &Path, dir: &Path, socket: &Path, log: &Path) -> Result<Self, Error> {
        if !dir.is_dir() {
            return Err(Error::NoDir(dir.into()));
        }
        let _ = std::fs::remove_file(socket);
        let logfile = std::fs::File::create(log).map_err(|err| Error::Spawn {
            bin: bin.into(),
            err,
        })?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            // okvm is already confined as the engine confines it; virtiofsd's own
            // namespace sandbox needs privileges a rootless or nested host may lack.
            .arg("--sandbox=none")
            // "auto": the guest revalidates against the host, so files the host
            // changes under a running container are seen (volumes, podman cp).
            .arg("--cache=auto")
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(logfile);
        // SAFETY: prctl is async-signal-safe and touches no memory of ours; it
        // runs in the forked child before exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|err| Error::Spawn {
            bin: bin.into(),
            err,
        })?;
        let mut me = Virtiofsd {
            child,
            socket: socket.into(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                return Err(Error::Died {
                    dir: dir.into(),
                    status,
                    log: log.trim().replace('\n', "; "),
                });
            }
            // No probe connection: virtiofsd serves exactly one frontend and
            // exits when it leaves. The VMM retries a refused connect, which
            // covers the instant between bind and listen.
            if std::fs::symlink_metadata(socket)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
            {
                break;
            }
            if Instant::now() > deadline {
                return Err(Error::Timeout(dir.into()));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(me)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // SIGKILL: virtiofsd keeps serving on SIGTERM while a VMM is still
        // connected, and it has nothing to flush (writes reach the host file
        // system synchronously).
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.socket);
    }
}
