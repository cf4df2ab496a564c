//! The container's root, built in the stage's own mount namespace: the
//! rootfs from the share, the spec's mounts, runc's default devices,
//! pivot_root, then hostname, sysctls, read-only and masked paths.

use std::io::ErrorKind;
use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use okvm_protocol::ContainerSpec;

use super::mounts::{self, remount_bind, Mounted};
use super::paths::secure_join;

/// The devices runc creates in a /dev of its own: (name, major, minor).
const DEVICES: &[(&str, u64, u64)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

const DEV_LINKS: &[(&str, &str)] = &[
    ("fd", "/proc/self/fd"),
    ("stdin", "/proc/self/fd/0"),
    ("stdout", "/proc/self/fd/1"),
    ("stderr", "/proc/self/fd/2"),
];

/// What the later steps need to know about the root that was built.
pub struct Built {
    /// /dev is a tmpfs of the container's own (so /dev/console may be made).
    pub own_dev: bool,
}

/// Enters new mount and UTS namespaces, builds the root from `<share>/<rootfs>`
/// and the spec's mounts, and makes it the root (the cwd is `/` afterwards).
pub fn build(
    share: &Path,
    spec: &ContainerSpec,
    warnings: &mut Vec<String>,
) -> Result<Built, String> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWUTS)
        .map_err(|e| format!("cannot create the container's namespaces: {e}"))?;
    // Nothing done here may reach okvm-init's namespace.
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mount namespace private: {e}"))?;
    let root = secure_join(share, Path::new(&spec.rootfs))
        .map_err(|e| format!("rootfs {:?}: {e}", spec.rootfs))?;
    if !root.is_dir() {
        return Err(format!(
            "rootfs {:?} is not a directory in the share {:?}",
            spec.rootfs, spec.share_tag
        ));
    }
    // pivot_root needs the new root to be a mount point.
    mount(
        Some(&root),
        &root,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot bind the rootfs: {e}"))?;
    let (mut own_dev, mut devpts) = (false, false);
    for m in &spec.mounts {
        match mounts::apply(&root, share, m, warnings)? {
            Mounted::DevTmpfs => own_dev = true,
            Mounted::DevPts => devpts = true,
            Mounted::Other | Mounted::Skipped => {}
        }
    }
    if own_dev {
        default_devices(&root, devpts)?;
    }
    // runc creates a missing cwd (as root, before any user switch).
    let cwd = spec.process.cwd();
    let cwd_path = secure_join(&root, cwd).map_err(|e| format!("cwd {}: {e}", cwd.display()))?;
    std::fs::create_dir_all(&cwd_path)
        .map_err(|e| format!("cannot create the cwd {}: {e}", cwd.display()))?;
    pivot(&root, warnings)?;
    Ok(Built { own_dev })
}

fn default_devices(root: &Path, devpts: bool) -> Result<(), String> {
    let dev = root.join("dev");
    for (name, major, minor) in DEVICES {
        let path = dev.join(name);
        match mknod(
            &path,
            SFlag::S_IFCHR,
            Mode::from_bits_truncate(0o666),
            makedev(*major, *minor),
        ) {
            Ok(()) | Err(Errno::EEXIST) => {}
            Err(e) => return Err(format!("cannot create /dev/{name}: {e}")),
        }
    }
    let mut links: Vec<(&str, &str)> = DEV_LINKS.to_vec();
    if devpts {
        // The container's own pty instance, as runc sets it up.
        match std::fs::remove_file(dev.join("ptmx")) {
            Err(e) if e.kind() != ErrorKind::NotFound => {
                return Err(format!("cannot replace /dev/ptmx: {e}"))
            }
            _ => links.push(("ptmx", "pts/ptmx")),
        }
    }
    for (name, target) in links {
        match std::os::unix::fs::symlink(target, dev.join(name)) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => {
                return Err(format!("cannot create /dev/{name}: {e}"))
            }
            _ => {}
        }
    }
    Ok(())
}

/// Makes `root` the root. pivot_root, as runc does; if the guest's own root
/// could not be pivoted away from (the initramfs itself), the runc
/// `--no-pivot` way: move the new root over `/` and chroot into it.
fn pivot(root: &Path, warnings: &mut Vec<String>) -> Result<(), String> {
    let fail = |what: &str, e: Errno| format!("cannot make the rootfs the root ({what}): {e}");
    nix::unistd::chdir(root).map_err(|e| fail("chdir", e))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root is stacked on the new one: detach it, and with it
            // every guest mount (the share included) from this namespace.
            umount2(".", MntFlags::MNT_DETACH).map_err(|e| fail("detach the old root", e))?;
        }
        Err(Errno::EINVAL) => {
            warnings
                .push("pivot_root refused (EINVAL): moving the root over / and chrooting".into());
            mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
                .map_err(|e| fail("move", e))?;
            nix::unistd::chroot(".").map_err(|e| fail("chroot", e))?;
        }
        Err(e) => return Err(fail("pivot_root", e)),
    }
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))
}

/// What runc does inside the new root: hostname, sysctls, read-only paths,
/// masked paths, then the read-only root.
pub fn finish(spec: &ContainerSpec) -> Result<(), String> {
    if let Some(h) = &spec.hostname {
        nix::unistd::sethostname(h).map_err(|e| format!("cannot set the hostname {h:?}: {e}"))?;
    }
    for (key, value) in &spec.sysctl {
        let path = sysctl_path(key).ok_or_else(|| format!("invalid sysctl name {key:?}"))?;
        std::fs::write(&path, value)
            .map_err(|e| format!("cannot set sysctl {key}={value}: {e}"))?;
    }
    for p in &spec.readonly_paths {
        let p = Path::new(p);
        if !exists(p) {
            continue;
        }
        let fail = |e: Errno| format!("cannot make {} read-only: {e}", p.display());
        mount(
            Some(p),
            p,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(fail)?;
        remount_bind(p, MsFlags::MS_RDONLY).map_err(fail)?;
    }
    for p in &spec.masked_paths {
        let p = Path::new(p);
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            continue;
        };
        let masked = if meta.is_dir() {
            mount(
                Some("tmpfs"),
                p,
                Some("tmpfs"),
                MsFlags::MS_RDONLY,
                None::<&str>,
            )
        } else {
            mount(
                Some("/dev/null"),
                p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        };
        masked.map_err(|e| format!("cannot mask {}: {e}", p.display()))?;
    }
    if spec.readonly {
        remount_bind(Path::new("/"), MsFlags::MS_RDONLY)
            .map_err(|e| format!("cannot make the root read-only: {e}"))?;
    }
    Ok(())
}

fn exists(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// `/proc/sys/net/ipv4/ip_forward` for `net.ipv4.ip_forward`; None for a
/// name that would leave /proc/sys.
pub fn sysctl_path(key: &str) -> Option<String> {
    let parts: Vec<&str> = key.split('.').collect();
    if parts
        .iter()
        .any(|p| p.is_empty() || p.contains('/') || *p == "..")
    {
        return None;
    }
    Some(format!("/proc/sys/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctl_names_map_into_proc_sys_only() {
        assert_eq!(
            sysctl_path("net.ipv4.ip_forward").as_deref(),
            Some("/proc/sys/net/ipv4/ip_forward")
        );
        assert_eq!(
            sysctl_path("kernel.shmmax").as_deref(),
            Some("/proc/sys/kernel/shmmax")
        );
        for bad in ["", "net..x", "../etc", "net/ipv4", "a."] {
            assert_eq!(sysctl_path(bad), None, "{bad}");
        }
    }
}
