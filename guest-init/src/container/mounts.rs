//! The spec's mounts: OCI option strings to mount(2) flags and data, and
//! mounting one entry inside the container's root (before pivot_root).

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use oci_spec::runtime::Mount;

use super::paths::secure_join;

/// What an OCI mount's `options` mean to mount(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Flags for the mount itself (bind mounts get them in a remount).
    pub flags: MsFlags,
    /// Propagation, applied by a separate mount(2) call.
    pub propagation: MsFlags,
    /// Filesystem-specific options ("mode=755,size=65536k").
    pub data: String,
    /// Options okvm understands but does not apply (runc extensions).
    pub ignored: Vec<String>,
}

/// The option table runc uses: `(name, clear?, flag)`. A "clear" option
/// removes a flag an earlier option set ("ro" then "rw" is read-write).
const FLAGS: &[(&str, bool, MsFlags)] = &[
    ("acl", false, MsFlags::MS_POSIXACL),
    ("async", true, MsFlags::MS_SYNCHRONOUS),
    ("atime", true, MsFlags::MS_NOATIME),
    ("bind", false, MsFlags::MS_BIND),
    ("defaults", false, MsFlags::empty()),
    ("dev", true, MsFlags::MS_NODEV),
    ("diratime", true, MsFlags::MS_NODIRATIME),
    ("dirsync", false, MsFlags::MS_DIRSYNC),
    ("exec", true, MsFlags::MS_NOEXEC),
    ("iversion", false, MsFlags::MS_I_VERSION),
    ("lazytime", false, MsFlags::MS_LAZYTIME),
    ("loud", true, MsFlags::MS_SILENT),
    ("mand", false, MsFlags::MS_MANDLOCK),
    ("noacl", true, MsFlags::MS_POSIXACL),
    ("noatime", false, MsFlags::MS_NOATIME),
    ("nodev", false, MsFlags::MS_NODEV),
    ("nodiratime", false, MsFlags::MS_NODIRATIME),
    ("noexec", false, MsFlags::MS_NOEXEC),
    ("noiversion", true, MsFlags::MS_I_VERSION),
    ("nolazytime", true, MsFlags::MS_LAZYTIME),
    ("nomand", true, MsFlags::MS_MANDLOCK),
    ("norelatime", true, MsFlags::MS_RELATIME),
    ("nostrictatime", true, MsFlags::MS_STRICTATIME),
    ("nosuid", false, MsFlags::MS_NOSUID),
    ("rbind", false, MsFlags::MS_BIND.union(MsFlags::MS_REC)),
    ("relatime", false, MsFlags::MS_RELATIME),
    ("remount", false, MsFlags::MS_REMOUNT),
    ("ro", false, MsFlags::MS_RDONLY),
    ("rw", true, MsFlags::MS_RDONLY),
    ("silent", false, MsFlags::MS_SILENT),
    ("strictatime", false, MsFlags::MS_STRICTATIME),
    ("suid", true, MsFlags::MS_NOSUID),
    ("sync", false, MsFlags::MS_SYNCHRONOUS),
];

const PROPAGATION: &[(&str, MsFlags)] = &[
    ("private", MsFlags::MS_PRIVATE),
    ("rprivate", MsFlags::MS_PRIVATE.union(MsFlags::MS_REC)),
    ("shared", MsFlags::MS_SHARED),
    ("rshared", MsFlags::MS_SHARED.union(MsFlags::MS_REC)),
    ("slave", MsFlags::MS_SLAVE),
    ("rslave", MsFlags::MS_SLAVE.union(MsFlags::MS_REC)),
    ("unbindable", MsFlags::MS_UNBINDABLE),
    ("runbindable", MsFlags::MS_UNBINDABLE.union(MsFlags::MS_REC)),
];

/// runc and crun extensions that okvm does not implement; they are dropped
/// (with a console line) instead of reaching the filesystem as data.
const EXTENSIONS: &[&str] = &[
    "tmpcopyup",
    "notmpcopyup",
    "copy-symlink",
    "idmap",
    "ridmap",
    "rro",
    "rrw",
    "rnosuid",
    "rsuid",
    "rnodev",
    "rdev",
    "rnoexec",
    "rexec",
    "rnoatime",
    "ratime",
    "rrelatime",
    "rnorelatime",
    "rstrictatime",
    "rnostrictatime",
    "rnosymfollow",
    "rsymfollow",
];

impl Default for Options {
    fn default() -> Self {
        Options {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
            ignored: Vec::new(),
        }
    }
}

/// Parses OCI mount options, in order.
pub fn parse_options<S: AsRef<str>>(options: &[S]) -> Options {
    let mut out = Options::default();
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        let o = o.as_ref();
        if let Some((_, clear, flag)) = FLAGS.iter().find(|(n, _, _)| *n == o) {
            if *clear {
                out.flags.remove(*flag);
            } else {
                out.flags.insert(*flag);
            }
        } else if let Some((_, p)) = PROPAGATION.iter().find(|(n, _)| *n == o) {
            out.propagation.insert(*p);
        } else if EXTENSIONS.contains(&o) {
            out.ignored.push(o.to_string());
        } else {
            data.push(o);
        }
    }
    out.data = data.join(",");
    out
}

/// Flags that a bind mount only takes in a remount.
const REMOUNT_FLAGS: MsFlags = MsFlags::MS_RDONLY
    .union(MsFlags::MS_NOSUID)
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC)
    .union(MsFlags::MS_NOATIME)
    .union(MsFlags::MS_NODIRATIME)
    .union(MsFlags::MS_RELATIME)
    .union(MsFlags::MS_STRICTATIME);

/// What a mount turned out to be, for the steps that depend on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mounted {
    /// A tmpfs on /dev: the default devices go there.
    DevTmpfs,
    /// A devpts on /dev/pts: /dev/ptmx points into it.
    DevPts,
    Other,
    /// A cgroup filesystem the guest kernel refused (logged, not an error).
    Skipped,
}

/// Mounts `m` inside `root`. A bind mount's source is a path inside the
/// share mounted at `share`.
pub fn apply(
    root: &Path,
    share: &Path,
    m: &Mount,
    warnings: &mut Vec<String>,
) -> Result<Mounted, String> {
    let dest_in_container = m.destination();
    let dest = secure_join(root, dest_in_container)
        .map_err(|e| format!("mount destination {}: {e}", dest_in_container.display()))?;
    let opts = parse_options(m.options().as_deref().unwrap_or_default());
    if !opts.ignored.is_empty() {
        warnings.push(format!(
            "mount {}: ignoring options {}",
            dest_in_container.display(),
            opts.ignored.join(",")
        ));
    }
    let typ = m.typ().as_deref().unwrap_or("");
    let what = |e: Errno| format!("cannot mount {typ} on {}: {e}", dest_in_container.display());
    if typ == "bind" || opts.flags.contains(MsFlags::MS_BIND) {
        bind(share, m, &dest, &opts)
            .map_err(|e| format!("bind mount on {}: {e}", dest_in_container.display()))?;
    } else {
        std::fs::create_dir_all(&dest)
            .map_err(|e| format!("cannot create {}: {e}", dest_in_container.display()))?;
        let source = m
            .source()
            .as_ref()
            .map(|s| s.as_os_str().to_os_string())
            .unwrap_or_else(|| typ.into());
        let data = (!opts.data.is_empty()).then_some(opts.data.as_str());
        match mount(Some(source.as_os_str()), &dest, Some(typ), opts.flags, data) {
            Ok(()) => {}
            Err(e) if typ == "cgroup" || typ == "cgroup2" => {
                warnings.push(format!(
                    "skipping the {typ} mount on {}: {e}",
                    dest_in_container.display()
                ));
                return Ok(Mounted::Skipped);
            }
            Err(Errno::ENODEV) => {
                return Err(format!(
                    "mount type {typ:?} (on {}) is not supported by the guest kernel",
                    dest_in_container.display()
                ))
            }
            Err(e) => return Err(what(e)),
        }
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &dest,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(what)?;
    }
    Ok(match (typ, dest_in_container.to_str()) {
        ("tmpfs", Some("/dev")) => Mounted::DevTmpfs,
        ("devpts", Some("/dev/pts")) => Mounted::DevPts,
        _ => Mounted::Other,
    })
}

fn bind(share: &Path, m: &Mount, dest: &Path, opts: &Options) -> Result<(), String> {
    let rel = m
        .source()
        .as_ref()
        .ok_or_else(|| "a bind mount needs a source".to_string())?;
    let source = secure_join(share, rel).map_err(|e| e.to_string())?;
    let is_dir = std::fs::metadata(&source)
        .map_err(|e| format!("source {} (in the share): {e}", rel.display()))?
        .is_dir();
    make_target(dest, is_dir).map_err(|e| format!("cannot create the target: {e}"))?;
    let flags = MsFlags::MS_BIND | (opts.flags & MsFlags::MS_REC);
    mount(Some(&source), dest, None::<&str>, flags, None::<&str>).map_err(|e| e.to_string())?;
    // A bind mount takes ro/nosuid/… only when remounted.
    let extra = opts.flags & REMOUNT_FLAGS;
    if !extra.is_empty() {
        remount_bind(dest, extra).map_err(|e| format!("remount with {extra:?}: {e}"))?;
    }
    Ok(())
}

/// Creates a mount target: a directory, or an empty file to bind a file onto.
pub fn make_target(dest: &Path, dir: bool) -> std::io::Result<()> {
    if dir {
        return std::fs::create_dir_all(dest);
    }
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(dest)
    {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Remounts the bind mount at `path` with `flags`, keeping the
/// nosuid/nodev/noexec it already has.
pub fn remount_bind(path: &Path, flags: MsFlags) -> nix::Result<()> {
    let kept = current_flags(path)?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | kept | flags,
        None::<&str>,
    )
}

fn current_flags(path: &Path) -> nix::Result<MsFlags> {
    use nix::sys::statvfs::FsFlags;
    let f = nix::sys::statvfs::statvfs(path)?.flags();
    let mut out = MsFlags::empty();
    for (st, ms) in [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
    ] {
        if f.contains(st) {
            out |= ms;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn podman_style_options_become_flags_and_data() {
        let o = parse_options(&[
            "nosuid",
            "noexec",
            "newinstance",
            "ptmxmode=0666",
            "mode=0620",
            "gid=5",
        ]);
        assert_eq!(o.flags, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
        assert!(o.propagation.is_empty() && o.ignored.is_empty());

        let o = parse_options(&["rbind", "ro", "rprivate", "nodev", "relatime"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_BIND
                | MsFlags::MS_REC
                | MsFlags::MS_RDONLY
                | MsFlags::MS_NODEV
                | MsFlags::MS_RELATIME
        );
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert_eq!(o.data, "");
    }

    #[test]
    fn later_options_clear_earlier_ones() {
        let o = parse_options(&["ro", "nosuid", "rw", "suid", "exec", "dev"]);
        assert_eq!(o.flags, MsFlags::empty());
        let o = parse_options(&["defaults"]);
        assert_eq!(o, Options::default());
    }

    #[test]
    fn runc_extensions_are_set_aside() {
        let o = parse_options(&["tmpcopyup", "size=65536k", "rro"]);
        assert_eq!(o.ignored, ["tmpcopyup", "rro"]);
        assert_eq!(o.data, "size=65536k");
    }

    #[test]
    fn targets_are_made_as_files_or_directories() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("etc/hosts");
        make_target(&f, false).unwrap();
        assert!(f.is_file());
        make_target(&f, false).unwrap();
        let d = dir.path().join("a/b");
        make_target(&d, true).unwrap();
        assert!(d.is_dir());
    }
}
