//! Host processes a container owns (the sandbox, its virtiofsd), recorded with
//! their start times so that a recycled pid is never mistaken for ours.
//!
//! The sandbox is not a child of later `okvm` invocations (conmon or init
//! reaps it), so liveness is read from /proc: a zombie counts as gone.

use std::path::Path;

use serde::{Deserialize, Serialize};

const FILE: &str = "procs.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Proc {
    pub pid: i32,
    /// Field 22 of /proc/<pid>/stat (clock ticks after boot).
    pub start: u64,
}

/// (state char, start time) from /proc/<pid>/stat.
fn stat(pid: i32) -> Option<(char, u64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and ')': the fields follow the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    let mut fields = rest.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state come fields 4.., so starttime (22) is the 19th of these.
    let start = fields.nth(18)?.parse().ok()?;
    Some((state, start))
}

impl Proc {
    /// The running process `pid`, if there is one.
    pub fn of(pid: i32) -> Option<Proc> {
        stat(pid).map(|(_, start)| Proc { pid, start })
    }

    pub fn me() -> Proc {
        Proc::of(std::process::id() as i32).expect("/proc/self/stat is readable")
    }

    /// Still the same process, and not a zombie.
    pub fn alive(&self) -> bool {
        matches!(stat(self.pid), Some((s, start)) if start == self.start && s != 'Z' && s != 'X')
    }

    /// Sends `signal` if the process is still ours; false if it was gone.
    pub fn signal(&self, signal: i32) -> bool {
        if !self.alive() {
            return false;
        }
        // SAFETY: kill(2) takes plain integers; the start time check above
        // makes a recycled pid unlikely to be hit.
        unsafe { libc::kill(self.pid, signal) == 0 }
    }

    /// SIGKILL, then wait up to `timeout` for the process to be gone.
    pub fn kill_and_wait(&self, timeout: std::time::Duration) -> bool {
        self.signal(libc::SIGKILL);
        self.wait_gone(timeout)
    }

    /// Waits up to `timeout` for the process to be gone; false if it is not.
    pub fn wait_gone(&self, timeout: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + timeout;
        while self.alive() {
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        true
    }
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    /// From `waitid`'s report: its `si_code` and `si_status`; None for a
    /// child that only stopped, continued or was trapped.
    pub fn from_siginfo(code: i32, status: i32) -> Option<Exit> {
        match code {
            libc::CLD_EXITED => Some(Exit::Code(status)),
            libc::CLD_KILLED | libc::CLD_DUMPED => Some(Exit::Signal(status)),
            _ => None,
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(n) => match nix::sys::signal::Signal::try_from(n) {
                Ok(s) => write!(f, "signal {n}, {s}"),
                Err(_) => write!(f, "signal {n}"),
            },
        }
    }
}

/// Waits for child `pid` of this process to end, without reaping it (its
/// `Child`, or whoever waits for it, still gets its status): blocking, or
/// only looking when `block` is false (None: it has not ended yet).
pub fn ended(pid: u32, block: bool) -> Option<Exit> {
    let mut flags = libc::WEXITED | libc::WNOWAIT;
    if !block {
        flags |= libc::WNOHANG;
    }
    loop {
        // SAFETY: a zeroed siginfo_t is valid for waitid to fill in; it
        // lives on the stack for the call.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: plain integers and a pointer to that siginfo_t.
        let rc = unsafe { libc::waitid(libc::P_PID, pid, &mut info, flags) };
        if rc != 0 {
            if std::io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return None;
        }
        // SAFETY: waitid filled in a SIGCHLD siginfo (or left it zeroed,
        // pid 0, with WNOHANG), whose status field these read.
        let (child, status) = unsafe { (info.si_pid(), info.si_status()) };
        if child == 0 {
            return None;
        }
        return Exit::from_siginfo(info.si_code, status);
    }
}

/// What a sandbox records about the processes it started, and `create`
/// about itself.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Procs {
    pub sandbox: Option<Proc>,
    #[serde(default)]
    pub helpers: Vec<Proc>,
    /// The process that is creating the container (`okvm create`, the
    /// shim): while the state is `creating`, the container lives only as
    /// long as it does. Never killed by `delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub creator: Option<Proc>,
}

impl Procs {
    pub fn load(dir: &Path) -> Procs {
        std::fs::read(dir.join(FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    pub fn save(&self, dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join(".procs.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec(self).unwrap_or_default())?;
        std::fs::rename(tmp, dir.join(FILE))
    }

    /// Records the calling process as the container's sandbox (or a pod
    /// container's helper), keeping what else was recorded.
    pub fn record_sandbox(dir: &Path) -> std::io::Result<Procs> {
        let mut procs = Procs::load(dir);
        procs.sandbox = Some(Proc::me());
        procs.save(dir)?;
        Ok(procs)
    }

    /// Every recorded process that `delete` ends, sandbox first (not the
    /// creator).
    pub fn all(&self) -> impl Iterator<Item = &Proc> {
        self.sandbox.iter().chain(self.helpers.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_a_recycled_pid_is_not() {
        let me = Proc::me();
        assert!(me.alive());
        let other = Proc {
            start: me.start + 1,
            ..me
        };
        assert!(!other.alive());
        assert!(Proc::of(-5).is_none());
    }

    #[test]
    fn a_childs_end_is_seen_without_reaping_it() {
        let mut c = std::process::Command::new("sleep")
            .arg("100")
            .spawn()
            .unwrap();
        assert_eq!(ended(c.id(), false), None);
        c.kill().unwrap();
        assert_eq!(ended(c.id(), true), Some(Exit::Signal(9)));
        // Not reaped: its Child still gets the status.
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(c.wait().unwrap().signal(), Some(9));
        let mut c = std::process::Command::new("sh")
            .args(["-c", "exit 3"])
            .spawn()
            .unwrap();
        assert_eq!(ended(c.id(), true), Some(Exit::Code(3)));
        assert_eq!(c.wait().unwrap().code(), Some(3));
        assert_eq!(Exit::Signal(9).to_string(), "signal 9, SIGKILL");
        assert_eq!(Exit::Code(3).to_string(), "exit code 3");
        assert_eq!(Exit::Signal(99).to_string(), "signal 99");
        assert_eq!(Exit::from_siginfo(libc::CLD_STOPPED, 19), None);
    }

    #[test]
    fn a_reaped_child_is_gone() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let p = Proc::of(c.id() as i32);
        c.wait().unwrap();
        assert!(p.map_or(true, |p| !p.alive()));
    }
}
