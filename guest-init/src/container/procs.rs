//! The container's processes: every guest process whose pid namespace is the
//! container's (the container process's own, or one joined by exec).

use std::path::{Path, PathBuf};

use nix::errno::Errno;

/// The pid namespace of guest process `pid` (the `pid:[inode]` link).
pub fn pid_namespace(pid: u32) -> std::io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/pid"))
}

/// Whether guest process `pid` lives in `ns`.
pub fn is_member(pid: u32, ns: &Path) -> bool {
    pid_namespace(pid).is_ok_and(|n| n == ns)
}

/// The guest pids of the processes in `ns`, ascending.
pub fn members(ns: &Path) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|pid| is_member(*pid, ns))
        .collect();
    pids.sort_unstable();
    pids
}

/// Sends signal number `signal` (0 checks existence) to guest process `pid`.
pub fn kill(pid: u32, signal: i32) -> Result<(), Errno> {
    // 0 and negative pids address groups or everyone: never meant here.
    let pid = match libc::pid_t::try_from(pid) {
        Ok(p) if p > 0 => p,
        _ => return Err(Errno::ESRCH),
    };
    if !(0..=libc::SIGRTMAX()).contains(&signal) {
        return Err(Errno::EINVAL);
    }
    // SAFETY: kill(2) with a positive pid touches no memory of ours.
    Errno::result(unsafe { libc::kill(pid, signal) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kill_refuses_group_and_broadcast_targets() {
        assert_eq!(kill(0, 0), Err(Errno::ESRCH));
        assert_eq!(kill(u32::MAX, 0), Err(Errno::ESRCH));
        assert_eq!(kill(std::process::id(), 99), Err(Errno::EINVAL));
        assert_eq!(kill(std::process::id(), 0), Ok(()));
    }

    #[test]
    fn this_process_is_a_member_of_its_own_namespace() {
        let me = std::process::id();
        let ns = pid_namespace(me).unwrap();
        assert!(is_member(me, &ns));
        assert!(members(&ns).contains(&me));
        assert!(members(Path::new("pid:[0]")).is_empty());
    }
}
