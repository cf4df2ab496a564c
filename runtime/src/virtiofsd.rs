//! One virtiofsd per virtio-fs share: found, started, waited for, and stopped.
//!
//! virtiofsd serves one directory per instance, so a VM with several tags runs
//! several. Each one dies with okvm (parent-death signal) and is stopped and
//! reaped when its [`Virtiofsd`] handle drops, so none outlives the VM; one
//! that ends on its own is noticed ([`Virtiofsd::on_exit`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
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

/// virtiofsd's RLIMIT_NOFILE for a guest of `mem_mib` MiB. virtiofsd holds
/// an fd for every inode the guest has looked up and not yet forgotten, so
/// the guest decides how many it holds. A guest caches at most about one
/// inode per KiB of its RAM (each costs it more than that), so 1024 per MiB
/// never stops a correct guest, and bounds what a hostile one pins on the
/// host: 262 144 for the default 256 MiB, never less than 65 536 nor more
/// than virtiofsd's own default of 1 000 000.
pub fn open_files(mem_mib: u64) -> u64 {
    mem_mib.saturating_mul(1024).clamp(65_536, 1_000_000)
}

/// A running virtiofsd; dropping it stops it.
pub struct Virtiofsd {
    child: Child,
    socket: PathBuf,
    /// Copies its stderr into its log, until it exits.
    log_relay: Option<JoinHandle<()>>,
    /// Set before the handle stops it: its end is then no news.
    stopping: Arc<AtomicBool>,
}

impl Virtiofsd {
    /// Starts virtiofsd sharing `dir` on `socket` for a guest of `mem_mib`
    /// MiB and waits until it listens. Its log goes to `log` (kept for the
    /// error message if it dies).
    pub fn start(
        bin: &Path,
        dir: &Path,
        socket: &Path,
        log: &Path,
        mem_mib: u64,
    ) -> Result<Self, Error> {
        if !dir.is_dir() {
            return Err(Error::NoDir(dir.into()));
        }
        let _ = std::fs::remove_file(socket);
        let spawn_err = |err| Error::Spawn {
            bin: bin.into(),
            err,
        };
        let logfile = std::fs::File::create(log).map_err(spawn_err)?;
        let (stderr, stderr_w) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| spawn_err(e.into()))?;
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", dir.display()))
            // okvm is already confined as the engine confines it; virtiofsd's own
            // namespace sandbox needs privileges a rootless or nested host may lack.
            .arg("--sandbox=none")
            // "auto": the guest revalidates against the host, so files the host
            // changes under a running container are seen (volumes, podman cp).
            .arg("--cache=auto")
            .arg(format!("--rlimit-nofile={}", open_files(mem_mib)))
            .arg("--log-level=error")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr_w);
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
        let child = cmd.spawn().map_err(spawn_err)?;
        // Only the child may hold the write end, or the relay never ends.
        drop(cmd);
        let log_relay = std::thread::Builder::new()
            .name("virtiofsd-log".into())
            .spawn(move || relay_log(std::fs::File::from(stderr), logfile))
            .ok();
        let mut me = Virtiofsd {
            child,
            socket: socket.into(),
            log_relay,
            stopping: Arc::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = me.child.try_wait() {
                me.end_log_relay();
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

    /// Calls `then`, on a thread of its own, with how virtiofsd ended if it
    /// ends by itself (killed, crashed) rather than through this handle.
    pub fn on_exit(&self, then: impl FnOnce(crate::procs::Exit) + Send + 'static) {
        let (pid, stopping) = (self.child.id(), self.stopping.clone());
        let watched = std::thread::Builder::new()
            .name("virtiofsd-exit".into())
            .spawn(move || {
                // Not reaped here: the handle still waits for it.
                if let Some(how) = crate::procs::ended(pid, true) {
                    if !stopping.load(Ordering::SeqCst) {
                        then(how)
                    }
                }
            });
        if let Err(e) = watched {
            log::warn!("cannot watch virtiofsd: {e}");
        }
    }

    /// Once virtiofsd has exited: waits until its last words are in its log.
    fn end_log_relay(&mut self) {
        if let Some(relay) = self.log_relay.take() {
            let _ = relay.join();
        }
    }
}

/// The longest line of virtiofsd's kept in its log.
const MAX_LOG_LINE: u64 = 1024;

/// Copies virtiofsd's stderr into its log a line at a time, at most as many
/// lines as the guest-caused log budget allows: a hostile guest kernel can
/// make virtiofsd log (a FUSE_INIT of an unsupported version is logged each
/// time). Lines beyond the budget are counted, and the count is logged with
/// the next line that passes.
fn relay_log(stderr: std::fs::File, mut log: std::fs::File) {
    use okvm_vmm::ratelimit::{Bucket, BURST, REFILL};
    let mut bucket = Bucket::new(BURST, REFILL);
    let mut lines = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match lines
            .by_ref()
            .take(MAX_LOG_LINE)
            .read_until(b'\n', &mut line)
        {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let Some(refused) = bucket.admit(Instant::now()) else {
            continue;
        };
        let text = String::from_utf8_lossy(&line);
        let mut out = format!(
            "{}",
            okvm_vmm::ratelimit::quote(text.trim_end_matches('\n'))
        );
        if refused > 0 {
            out.push_str(&format!(" ({refused} earlier lines suppressed)"));
        }
        out.push('\n');
        let _ = log.write_all(out.as_bytes());
    }
}

impl Drop for Virtiofsd {
    fn drop(&mut self) {
        // SIGKILL: virtiofsd keeps serving on SIGTERM while a VMM is still
        // connected, and it has nothing to flush (writes reach the host file
        // system synchronously).
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.end_log_relay();
        let _ = std::fs::remove_file(&self.socket);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_virtiofsd_lines_reaches_its_log_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("virtiofsd.log");
        let (read, write) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            let mut w = std::fs::File::from(write);
            for i in 0..10_000 {
                writeln!(
                    w,
                    "[ERROR virtiofsd] Unsupported fuse protocol version: {i}.0"
                )
                .unwrap();
            }
        });
        relay_log(
            std::fs::File::from(read),
            std::fs::File::create(&log).unwrap(),
        );
        writer.join().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Written within a second: the burst only.
        assert_eq!(lines.len(), okvm_vmm::ratelimit::BURST as usize, "{text}");
        assert!(lines[0].ends_with("version: 0.0"));
    }

    fn sleeping() -> Virtiofsd {
        Virtiofsd {
            child: Command::new("sleep").arg("100").spawn().unwrap(),
            socket: "/nonexistent/okvm-test.sock".into(),
            log_relay: None,
            stopping: Arc::default(),
        }
    }

    #[test]
    fn an_end_of_its_own_is_noticed_and_a_stop_is_not() {
        let fsd = sleeping();
        let (tx, rx) = std::sync::mpsc::channel();
        fsd.on_exit(move |how| tx.send(how).unwrap());
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(fsd.pid() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .unwrap();
        let how = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(how, crate::procs::Exit::Signal(9));
        drop(fsd);

        let fsd = sleeping();
        let (tx, rx) = std::sync::mpsc::channel();
        fsd.on_exit(move |how| tx.send(how).unwrap());
        drop(fsd);
        // The watcher saw the stop and said nothing.
        assert!(matches!(
            rx.recv_timeout(Duration::from_secs(10)),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected)
        ));
    }

    #[test]
    fn the_open_file_limit_follows_guest_memory() {
        assert_eq!(open_files(256), 262_144);
        assert_eq!(open_files(16), 65_536);
        assert_eq!(open_files(1 << 30), 1_000_000);
    }
}
