//! The sandbox's virtio-fs share: a tmpfs holding each container's rootfs and
//! its bind-mount sources, assembled in the sandbox's own mount namespace.
//!
//! Those mounts exist only in that namespace, so they vanish with the sandbox
//! and its virtiofsd, however they end (SIGKILL included): nothing can be left
//! mounted on the host.
//!
//! Sources are taken as detached mount trees (`open_tree`) in the caller's
//! namespace and attached (`move_mount`) in the sandbox's. The two steps may
//! happen in different namespaces: a pod's container joins a sandbox that was
//! made before containerd mounted that container's rootfs on the host, so the
//! sandbox's namespace has never seen the mount, and a plain bind from there
//! could not reach it.

use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rustix::mount::{move_mount, open_tree, MoveMountFlags, OpenTreeFlags};

use crate::bundle::ShareEntry;

/// Where each pod container's part of a pod's share goes, by container id.
pub const POD_CONTAINERS: &str = "containers";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot make the sandbox's mount namespace: {0}")]
    Namespace(nix::Error),
    #[error("cannot enter the mount namespace of the pod's sandbox (process {pid}): {err}")]
    Enter { pid: i32, err: nix::Error },
    #[error("cannot {what} {path}: {err}")]
    Mount {
        what: &'static str,
        path: String,
        err: nix::Error,
    },
    #[error("cannot take {path} for the share: {err}")]
    Take { path: PathBuf, err: std::io::Error },
    #[error("cannot place {from} at {target}: {err}")]
    Place {
        from: PathBuf,
        target: PathBuf,
        err: std::io::Error,
    },
    #[error("cannot create {path}: {err}")]
    Create { path: String, err: std::io::Error },
}

/// Enters a mount namespace of our own (this process and its children), a
/// slave of the host's.
pub fn private_namespace() -> Result<(), Error> {
    unshare(CloneFlags::CLONE_NEWNS).map_err(Error::Namespace)?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    )
    .map_err(Error::Namespace)
}

/// Moves this process into the mount namespace of sandbox process `pid`.
/// The process must be single-threaded (setns refuses otherwise).
pub fn enter_namespace_of(pid: i32) -> Result<(), Error> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).map_err(|e| Error::Enter {
        pid,
        err: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::ESRCH)),
    })?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNS).map_err(|err| Error::Enter { pid, err })
}

/// A share entry's source, taken from the namespace it was opened in.
pub struct Tree {
    entry: ShareEntry,
    mount: OwnedFd,
}

/// Takes every entry's source as a detached copy (with the mounts below it
/// when the entry is recursive).
pub fn take(entries: &[ShareEntry]) -> Result<Vec<Tree>, Error> {
    entries
        .iter()
        .map(|e| {
            let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            if e.recursive {
                flags |= OpenTreeFlags::AT_RECURSIVE;
            }
            let mount =
                open_tree(rustix::fs::CWD, &e.source, flags).map_err(|err| Error::Take {
                    path: e.source.clone(),
                    err: err.into(),
                })?;
            Ok(Tree {
                entry: e.clone(),
                mount,
            })
        })
        .collect()
}

/// Mounts a tmpfs on `dir` and attaches every tree in it.
pub fn place(dir: &Path, trees: Vec<Tree>) -> Result<(), Error> {
    let shown = |p: &Path| p.display().to_string();
    std::fs::create_dir_all(dir).map_err(|err| Error::Create {
        path: shown(dir),
        err,
    })?;
    mount(
        Some("okvm-share"),
        dir,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(|err| Error::Mount {
        what: "mount a tmpfs on",
        path: shown(dir),
        err,
    })?;
    for Tree { entry: e, mount: m } in trees {
        let target = dir.join(&e.name);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|err| Error::Create {
                path: shown(parent),
                err,
            })?;
        }
        let made = if e.source.is_dir() {
            std::fs::create_dir(&target)
        } else {
            std::fs::File::create(&target).map(drop)
        };
        made.map_err(|err| Error::Create {
            path: shown(&target),
            err,
        })?;
        move_mount(
            m.as_fd(),
            "",
            rustix::fs::CWD,
            &target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )
        .map_err(|err| Error::Place {
            from: e.source.clone(),
            target: target.clone(),
            err: err.into(),
        })?;
        // Mounts the host adds below a volume later still reach the guest,
        // but nothing done here travels back to the host.
        let _ = mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_SLAVE,
            None::<&str>,
        );
        if e.readonly {
            // Read-only on the host side too: the guest cannot write through
            // the share even if it ignored its own ro mount.
            mount(
                None::<&str>,
                &target,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                None::<&str>,
            )
            .map_err(|err| Error::Mount {
                what: "make read-only",
                path: shown(&target),
                err,
            })?;
        }
    }
    Ok(())
}

/// [`take`] and [`place`] in one namespace.
pub fn assemble(dir: &Path, entries: &[ShareEntry]) -> Result<(), Error> {
    place(dir, take(entries)?)
}

/// Unmounts `path` and everything below it, lazily (a process may still
/// hold files there for a moment); a path that is not mounted, or does not
/// exist, is fine.
pub fn detach(path: &Path) {
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => log::warn!("cannot unmount {}: {e}", path.display()),
    }
}

/// [`detach`]es `dir` and removes the directory.
pub fn dismantle(dir: &Path) {
    detach(dir);
    let _ = std::fs::remove_dir(dir);
}
