//! Applying the OCI process in the stage: environment, executable lookup
//! (with runc's messages), cwd, rlimits, user, capabilities, umask and
//! noNewPrivileges, in the order runc applies them.

use std::collections::HashSet;
use std::ffi::CString;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use caps::{CapSet, Capability as Cap, CapsHashSet};
use nix::errno::Errno;
use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid};
use oci_spec::runtime::{Capabilities, LinuxCapabilities, PosixRlimitType, Process};

use crate::server::DEFAULT_PATH;

/// Why `args[0]` cannot be executed, worded as runc (Go's exec.LookPath)
/// words it, so engines and users see the message they know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LookupError {
    #[error("exec: {0:?}: executable file not found in $PATH")]
    NotFound(String),
    #[error("exec: {name:?}: stat {name}: {reason}")]
    Stat { name: String, reason: String },
    #[error("exec: {0:?}: is a directory")]
    IsDir(String),
    #[error("exec: {0:?}: permission denied")]
    Permission(String),
    #[error("no command given (process.args is empty)")]
    NoArgs,
}

/// Why one candidate path is not an executable.
enum Unusable {
    Stat(Errno),
    IsDir,
    Permission,
}

/// Go's findExecutable: it exists, is not a directory, and may be executed
/// by us (faccessat with the effective ids, so after the user switch).
fn check_executable(path: &Path) -> Result<(), Unusable> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Unusable::Stat(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
    if meta.is_dir() {
        return Err(Unusable::IsDir);
    }
    match nix::unistd::faccessat(
        None,
        path,
        nix::unistd::AccessFlags::X_OK,
        nix::fcntl::AtFlags::AT_EACCESS,
    ) {
        Ok(()) => Ok(()),
        Err(Errno::ENOSYS | Errno::EPERM) if meta.mode() & 0o111 != 0 => Ok(()),
        Err(_) => Err(Unusable::Permission),
    }
}

/// strerror as Go prints it ("no such file or directory").
fn go_errno(e: Errno) -> String {
    let desc = e.desc();
    let mut chars = desc.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => desc.to_string(),
    }
}

/// Resolves `name` like Go's exec.LookPath with `path_var` as $PATH: a name
/// with a slash is taken as it is; otherwise each PATH entry is tried (an
/// empty entry is the cwd).
pub fn lookup(name: &str, path_var: &str) -> Result<PathBuf, LookupError> {
    if name.is_empty() {
        return Err(LookupError::NotFound(String::new()));
    }
    if name.contains('/') {
        return match check_executable(Path::new(name)) {
            Ok(()) => Ok(PathBuf::from(name)),
            Err(Unusable::Stat(e)) => Err(LookupError::Stat {
                name: name.to_string(),
                reason: go_errno(e),
            }),
            Err(Unusable::IsDir) => Err(LookupError::IsDir(name.to_string())),
            Err(Unusable::Permission) => Err(LookupError::Permission(name.to_string())),
        };
    }
    for dir in path_var.split(':') {
        let candidate = Path::new(if dir.is_empty() { "." } else { dir }).join(name);
        if check_executable(&candidate).is_ok() {
            return Ok(candidate);
        }
    }
    Err(LookupError::NotFound(name.to_string()))
}

/// The process's environment: as given, plus PATH when it has none (the
/// default okvm-init's `Run` uses) and HOME from the image's /etc/passwd
/// (as runc does; `/` when the user has no entry).
pub fn environment(process: &Process, passwd: Option<&str>) -> Vec<String> {
    let mut env: Vec<String> = process.env().clone().unwrap_or_default();
    let has = |env: &[String], key: &str| env.iter().any(|e| e.split('=').next() == Some(key));
    if !has(&env, "PATH") {
        env.push(format!("PATH={DEFAULT_PATH}"));
    }
    if !has(&env, "HOME") {
        let uid = process.user().uid();
        let home = passwd
            .and_then(|p| home_of(uid, p))
            .unwrap_or_else(|| "/".into());
        env.push(format!("HOME={home}"));
    }
    env
}

/// `$PATH` in `env` (the last definition wins, as getenv sees it).
pub fn path_var(env: &[String]) -> &str {
    env.iter()
        .rev()
        .find_map(|e| e.strip_prefix("PATH="))
        .unwrap_or("")
}

/// The home directory of `uid` in /etc/passwd text.
pub fn home_of(uid: u32, passwd: &str) -> Option<String> {
    passwd.lines().find_map(|line| {
        let f: Vec<&str> = line.split(':').collect();
        match f.as_slice() {
            [_, _, u, _, _, home, ..] if u.parse() == Ok(uid) && !home.is_empty() => {
                Some(home.to_string())
            }
            _ => None,
        }
    })
}

/// What the stage hands to execve once started.
pub struct Executable {
    pub path: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
}

fn cstrings(v: &[String], what: &str) -> Result<Vec<CString>, String> {
    v.iter()
        .map(|s| CString::new(s.as_str()).map_err(|_| format!("{what} {s:?} contains a NUL byte")))
        .collect()
}

/// Applies `process` to the stage itself (the root is already the
/// container's). Anything okvm cannot honour goes to `warnings`.
pub fn apply(process: &Process, warnings: &mut Vec<String>) -> Result<Executable, String> {
    let args = process.args().clone().unwrap_or_default();
    let first = args
        .first()
        .ok_or_else(|| LookupError::NoArgs.to_string())?;
    let passwd = std::fs::read_to_string("/etc/passwd").ok();
    let env = environment(process, passwd.as_deref());
    let cwd = process.cwd();
    nix::unistd::chdir(cwd).map_err(|e| {
        format!(
            "chdir to cwd ({:?}) set in config.json failed: {}",
            cwd.display().to_string(),
            go_errno(e)
        )
    })?;
    for r in process.rlimits().iter().flatten() {
        let res = rlimit_resource(r.typ());
        setrlimit(res, r.soft(), r.hard()).map_err(|e| format!("cannot set {}: {e}", r.typ()))?;
    }
    switch_user(process, warnings)?;
    let resolved = lookup(first, path_var(&env)).map_err(|e| e.to_string())?;
    let umask = process.user().umask().unwrap_or(0o022);
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(umask));
    if process.no_new_privileges() == Some(true) {
        nix::sys::prctl::set_no_new_privs().map_err(|e| format!("cannot set no_new_privs: {e}"))?;
    }
    Ok(Executable {
        path: CString::new(resolved.into_os_string().into_encoded_bytes())
            .map_err(|_| "the executable's path contains a NUL byte".to_string())?,
        argv: cstrings(&args, "argument")?,
        envp: cstrings(&env, "environment variable")?,
    })
}

/// The kernel resource an OCI rlimit names.
pub fn rlimit_resource(t: PosixRlimitType) -> Resource {
    use PosixRlimitType as T;
    match t {
        T::RlimitCpu => Resource::RLIMIT_CPU,
        T::RlimitFsize => Resource::RLIMIT_FSIZE,
        T::RlimitData => Resource::RLIMIT_DATA,
        T::RlimitStack => Resource::RLIMIT_STACK,
        T::RlimitCore => Resource::RLIMIT_CORE,
        T::RlimitRss => Resource::RLIMIT_RSS,
        T::RlimitNproc => Resource::RLIMIT_NPROC,
        T::RlimitNofile => Resource::RLIMIT_NOFILE,
        T::RlimitMemlock => Resource::RLIMIT_MEMLOCK,
        T::RlimitAs => Resource::RLIMIT_AS,
        T::RlimitLocks => Resource::RLIMIT_LOCKS,
        T::RlimitSigpending => Resource::RLIMIT_SIGPENDING,
        T::RlimitMsgqueue => Resource::RLIMIT_MSGQUEUE,
        T::RlimitNice => Resource::RLIMIT_NICE,
        T::RlimitRtprio => Resource::RLIMIT_RTPRIO,
        T::RlimitRttime => Resource::RLIMIT_RTTIME,
    }
}

/// An OCI capability's name ("CAP_CHOWN"): the enum's serialized form.
fn oci_name(c: &oci_spec::runtime::Capability) -> String {
    match serde_json::to_value(c) {
        Ok(serde_json::Value::String(s)) => s,
        _ => format!("{c:?}"),
    }
}

/// The capability the kernel knows under an OCI capability's name.
pub fn kernel_capability(c: &oci_spec::runtime::Capability) -> Option<Cap> {
    oci_name(c).parse().ok()
}

/// The OCI capability set `set` as kernel capabilities, keeping only those
/// this kernel supports (runc ignores the others with a warning).
fn kernel_set(
    set: &Option<Capabilities>,
    supported: &CapsHashSet,
    warnings: &mut Vec<String>,
) -> CapsHashSet {
    let mut out = HashSet::new();
    for c in set.iter().flatten() {
        match kernel_capability(c) {
            Some(k) if supported.contains(&k) => {
                out.insert(k);
            }
            _ => warnings.push(format!(
                "ignoring capability {}, unknown to the guest kernel",
                oci_name(c)
            )),
        }
    }
    out
}

/// Bounding set, groups and gid, uid (keeping capabilities across it), then
/// the effective, permitted and inheritable sets and the ambient set last.
fn switch_user(process: &Process, warnings: &mut Vec<String>) -> Result<(), String> {
    let user = process.user();
    let caps = process.capabilities().as_ref();
    let supported = caps::runtime::thread_all_supported();
    let sets = caps.map(|c| CapabilitySets::new(c, &supported, warnings));
    let fail = |what: &str, e: &dyn std::fmt::Display| format!("cannot {what}: {e}");
    if let Some(sets) = &sets {
        for c in supported.difference(&sets.bounding) {
            caps::drop(None, CapSet::Bounding, *c)
                .map_err(|e| fail("drop from the bounding set", &e))?;
        }
    }
    let groups: Vec<Gid> = user
        .additional_gids()
        .iter()
        .flatten()
        .map(|g| Gid::from_raw(*g))
        .collect();
    nix::unistd::setgroups(&groups).map_err(|e| fail("set the additional groups", &e))?;
    nix::unistd::setgid(Gid::from_raw(user.gid())).map_err(|e| fail("set the gid", &e))?;
    if sets.is_some() {
        caps::securebits::set_keepcaps(true).map_err(|e| fail("keep capabilities", &e))?;
    }
    nix::unistd::setuid(Uid::from_raw(user.uid())).map_err(|e| fail("set the uid", &e))?;
    let Some(sets) = sets else { return Ok(()) };
    caps::securebits::set_keepcaps(false).map_err(|e| fail("reset keepcaps", &e))?;
    // Inheritable while the permitted set is still whole, effective before
    // permitted shrinks under it.
    for (set, value) in [
        (CapSet::Inheritable, &sets.inheritable),
        (CapSet::Effective, &sets.effective),
        (CapSet::Permitted, &sets.permitted),
    ] {
        caps::set(None, set, value)
            .map_err(|e| fail(&format!("set the {set:?} capabilities"), &e))?;
    }
    // As runc: an ambient capability the kernel refuses (it must also be
    // permitted and inheritable) is a warning, not a failure; runc's default
    // spec asks for ambient capabilities without inheritable ones.
    for c in &sets.ambient {
        if let Err(e) = caps::raise(None, CapSet::Ambient, *c) {
            eprintln!("okvm-init: cannot raise ambient {c}: {e}");
        }
    }
    Ok(())
}

struct CapabilitySets {
    bounding: CapsHashSet,
    effective: CapsHashSet,
    permitted: CapsHashSet,
    inheritable: CapsHashSet,
    ambient: CapsHashSet,
}

impl CapabilitySets {
    /// A set the spec leaves out is empty, as in runc.
    fn new(c: &LinuxCapabilities, supported: &CapsHashSet, warnings: &mut Vec<String>) -> Self {
        let mut w = Vec::new();
        let mut set = |s: &Option<Capabilities>| kernel_set(s, supported, &mut w);
        let sets = CapabilitySets {
            bounding: set(c.bounding()),
            effective: set(c.effective()),
            permitted: set(c.permitted()),
            inheritable: set(c.inheritable()),
            ambient: set(c.ambient()),
        };
        w.sort();
        w.dedup();
        warnings.extend(w);
        sets
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lookup_speaks_like_runc() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let tool = bin.join("tool");
        std::fs::write(&tool, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = bin.join("data");
        std::fs::write(&data, "").unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
        let path = format!("/nonexistent:{}", bin.display());

        assert_eq!(lookup("tool", &path), Ok(tool.clone()));
        assert_eq!(
            lookup("nosuch", &path).unwrap_err().to_string(),
            r#"exec: "nosuch": executable file not found in $PATH"#
        );
        assert_eq!(
            lookup("/x/nosuch", &path).unwrap_err().to_string(),
            r#"exec: "/x/nosuch": stat /x/nosuch: no such file or directory"#
        );
        let bin_s = bin.display().to_string();
        assert_eq!(
            lookup(&bin_s, &path).unwrap_err().to_string(),
            format!("exec: {bin_s:?}: is a directory")
        );
        assert_eq!(lookup(tool.to_str().unwrap(), ""), Ok(tool.clone()));
        // A file without execute bits is skipped on PATH.
        assert!(matches!(
            lookup("data", &path),
            Err(LookupError::NotFound(_))
        ));
        assert!(matches!(lookup("tool", ""), Err(LookupError::NotFound(_))));
    }

    fn process(json: &str) -> Process {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn environment_gets_path_and_home_defaults() {
        let passwd = "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let p = process(r#"{"user":{"uid":1000,"gid":1000},"cwd":"/","env":["A=1"]}"#);
        let env = environment(&p, Some(passwd));
        assert_eq!(
            env,
            ["A=1", &format!("PATH={DEFAULT_PATH}"), "HOME=/home/alice"]
        );
        assert_eq!(path_var(&env), DEFAULT_PATH);

        let p = process(r#"{"user":{"uid":7,"gid":7},"cwd":"/","env":["PATH=/bin","HOME=/h"]}"#);
        assert_eq!(environment(&p, Some(passwd)), ["PATH=/bin", "HOME=/h"]);
        let p = process(r#"{"user":{"uid":7,"gid":7},"cwd":"/"}"#);
        assert!(environment(&p, None).contains(&"HOME=/".to_string()));
        assert_eq!(home_of(0, passwd).as_deref(), Some("/root"));
        assert_eq!(home_of(5, "bad line\n"), None);
    }

    #[test]
    fn rlimit_names_map_to_kernel_resources() {
        for (name, want) in [
            ("RLIMIT_NOFILE", Resource::RLIMIT_NOFILE),
            ("RLIMIT_NPROC", Resource::RLIMIT_NPROC),
            ("RLIMIT_CORE", Resource::RLIMIT_CORE),
            ("RLIMIT_RTTIME", Resource::RLIMIT_RTTIME),
            ("RLIMIT_MSGQUEUE", Resource::RLIMIT_MSGQUEUE),
        ] {
            let t: PosixRlimitType = serde_json::from_value(name.into()).unwrap();
            assert_eq!(rlimit_resource(t), want, "{name}");
        }
        assert!(serde_json::from_value::<PosixRlimitType>("RLIMIT_NOPE".into()).is_err());
    }

    #[test]
    fn every_oci_capability_name_is_a_kernel_capability() {
        let names = [
            "CAP_AUDIT_CONTROL",
            "CAP_AUDIT_READ",
            "CAP_AUDIT_WRITE",
            "CAP_BLOCK_SUSPEND",
            "CAP_BPF",
            "CAP_CHECKPOINT_RESTORE",
            "CAP_CHOWN",
            "CAP_DAC_OVERRIDE",
            "CAP_DAC_READ_SEARCH",
            "CAP_FOWNER",
            "CAP_FSETID",
            "CAP_IPC_LOCK",
            "CAP_IPC_OWNER",
            "CAP_KILL",
            "CAP_LEASE",
            "CAP_LINUX_IMMUTABLE",
            "CAP_MAC_ADMIN",
            "CAP_MAC_OVERRIDE",
            "CAP_MKNOD",
            "CAP_NET_ADMIN",
            "CAP_NET_BIND_SERVICE",
            "CAP_NET_BROADCAST",
            "CAP_NET_RAW",
            "CAP_PERFMON",
            "CAP_SETGID",
            "CAP_SETFCAP",
            "CAP_SETPCAP",
            "CAP_SETUID",
            "CAP_SYS_ADMIN",
            "CAP_SYS_BOOT",
            "CAP_SYS_CHROOT",
            "CAP_SYS_MODULE",
            "CAP_SYS_NICE",
            "CAP_SYS_PACCT",
            "CAP_SYS_PTRACE",
            "CAP_SYS_RAWIO",
            "CAP_SYS_RESOURCE",
            "CAP_SYS_TIME",
            "CAP_SYS_TTY_CONFIG",
            "CAP_SYSLOG",
            "CAP_WAKE_ALARM",
        ];
        for name in names {
            let c: oci_spec::runtime::Capability = serde_json::from_value(name.into()).unwrap();
            assert_eq!(
                kernel_capability(&c).map(|k| k.to_string()).as_deref(),
                Some(name)
            );
        }
        // Engines also write them without the prefix, in any case.
        let c: oci_spec::runtime::Capability = serde_json::from_value("net_raw".into()).unwrap();
        assert_eq!(kernel_capability(&c), Some(Cap::CAP_NET_RAW));
    }

    #[test]
    fn missing_capability_sets_are_empty_and_unknown_ones_warned() {
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_KILL","CAP_CHOWN"],"effective":["CAP_KILL"]}"#,
        )
        .unwrap();
        let supported: CapsHashSet = [Cap::CAP_KILL].into();
        let mut w = Vec::new();
        let s = CapabilitySets::new(&c, &supported, &mut w);
        assert_eq!(s.bounding, [Cap::CAP_KILL].into());
        assert_eq!(s.effective, [Cap::CAP_KILL].into());
        assert!(s.permitted.is_empty() && s.ambient.is_empty() && s.inheritable.is_empty());
        assert_eq!(
            w,
            ["ignoring capability CAP_CHOWN, unknown to the guest kernel"]
        );
    }
}
