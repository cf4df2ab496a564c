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

/// What a sandbox records about the processes it started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Procs {
    pub sandbox: Option<Proc>,
    #[serde(default)]
    pub helpers: Vec<Proc>,
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

    /// Every recorded process, sandbox first.
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
    fn a_reaped_child_is_gone() {
        let mut c = std::process::Command::new("true").spawn().unwrap();
        let p = Proc::of(c.id() as i32);
        c.wait().unwrap();
        assert!(p.map_or(true, |p| !p.alive()));
    }
}
