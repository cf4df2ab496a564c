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
//!
//! The guest is hostile (docs/security.md): a privileged container can mount
//! the share's tag and write wherever the share lets it. So every tmpfs this
//! module makes (the share's top, each pod container's part) is attached
//! read-only and filled through a second, writable mount of the same tmpfs
//! that only this process holds; the guest can write only inside the
//! containers' own trees, never where the host still has to work. And every
//! step below the share is fd-relative and refuses symlinks, so that even a
//! planted link could not steer root on the host elsewhere.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::mount::{
    fsconfig_create, fsconfig_set_string, fsmount, fsopen, move_mount, open_tree, FsMountFlags,
    FsOpenFlags, MountAttrFlags, MoveMountFlags, OpenTreeFlags,
};

use crate::bundle::ShareEntry;

/// Where each pod container's part of a pod's share goes, by container id.
pub const POD_CONTAINERS: &str = "containers";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot make the sandbox's mount namespace: {0}")]
    Namespace(nix::Error),
    #[error("cannot enter the mount namespace of the pod's sandbox (process {pid}): {err}")]
    Enter { pid: i32, err: nix::Error },
    #[error("cannot take {path} for the share: {err}")]
    Take { path: PathBuf, err: std::io::Error },
    #[error("cannot place {from} at {target} in the share: {err}")]
    Place {
        from: PathBuf,
        target: String,
        err: std::io::Error,
    },
    #[error("cannot {what} {path} in the share: {err}")]
    Share {
        what: &'static str,
        path: String,
        err: std::io::Error,
    },
}

fn share_err(
    what: &'static str,
    path: impl Into<String>,
) -> impl FnOnce(rustix::io::Errno) -> Error {
    let path = path.into();
    move |e| Error::Share {
        what,
        path,
        err: e.into(),
    }
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
/// when the entry is recursive). A read-only entry is made read-only here,
/// all the way down (as runc's "rro"), before anything can reach it.
pub fn take(entries: &[ShareEntry]) -> Result<Vec<Tree>, Error> {
    entries
        .iter()
        .map(|e| {
            let taken = |err: std::io::Error| Error::Take {
                path: e.source.clone(),
                err,
            };
            let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
            if e.recursive {
                flags |= OpenTreeFlags::AT_RECURSIVE;
            }
            let mount =
                open_tree(rustix::fs::CWD, &e.source, flags).map_err(|err| taken(err.into()))?;
            if e.readonly {
                set_attr(mount.as_fd(), &SetAttr::read_only()).map_err(|err| taken(err.into()))?;
            }
            Ok(Tree {
                entry: e.clone(),
                mount,
            })
        })
        .collect()
}

/// Makes the sandbox's share at `dir` (a directory of the state dir, which
/// only root on the host can reach): a read-only tmpfs holding `trees` and
/// the empty directory pod containers' parts go in.
pub fn assemble(dir: &Path, trees: Vec<Tree>) -> Result<(), Error> {
    let shown = dir.display().to_string();
    std::fs::create_dir_all(dir).map_err(|err| Error::Share {
        what: "create",
        path: shown.clone(),
        err,
    })?;
    let at = rustix::fs::open(
        dir,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(share_err("open", shown))?;
    attach_part(at.as_fd(), trees, &[POD_CONTAINERS])
}

/// Adds a pod container's part to the live share at `share` (this process
/// must be in the sandbox's mount namespace): `containers/<id>/` holding
/// `trees`.
pub fn add_part(share: &Path, id: &str, trees: Vec<Tree>) -> Result<(), Error> {
    let part = format!("{POD_CONTAINERS}/{id}");
    let top = rustix::fs::open(
        share,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(share_err("open", share.display().to_string()))?;
    // The share's top is read-only (to the guest, and so to us through it):
    // the mount point is made through a writable view of the same tmpfs.
    let writable = writable_view(top.as_fd()).map_err(share_err("open a writable view of", "/"))?;
    let containers = beneath(writable.as_fd(), POD_CONTAINERS, true)
        .map_err(share_err("open", POD_CONTAINERS))?;
    rustix::fs::mkdirat(&containers, id, Mode::from_raw_mode(0o755))
        .map_err(share_err("create", part.clone()))?;
    let attached = beneath(top.as_fd(), &part, true)
        .map_err(share_err("open", part))
        .and_then(|at| attach_part(at.as_fd(), trees, &[]));
    if attached.is_err() {
        if let Err(e) = remove_part(share, id) {
            log::warn!("{e}");
        }
    }
    attached
}

/// Takes a pod container's part out of the live share again (after a failed
/// start, or a helper that died before the guest saw its part: a part that
/// served a container stays until the pod ends, see `member`). A part that
/// is not there is fine.
pub fn remove_part(share: &Path, id: &str) -> Result<(), Error> {
    let part = format!("{POD_CONTAINERS}/{id}");
    detach(&share.join(&part));
    let removed = rustix::fs::open(
        share,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .and_then(|top| writable_view(top.as_fd()))
    .and_then(|w| beneath(w.as_fd(), POD_CONTAINERS, true))
    .and_then(|c| rustix::fs::unlinkat(&c, id, rustix::fs::AtFlags::REMOVEDIR));
    match removed {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(share_err("remove", part)(e)),
    }
}

/// Attaches a new tmpfs, read-only, on the directory `at`, then places each
/// tree in it and makes `dirs` (empty directories) there.
fn attach_part(at: BorrowedFd, trees: Vec<Tree>, dirs: &[&str]) -> Result<(), Error> {
    let made = share_err("make", "a tmpfs");
    let fs = fsopen("tmpfs", FsOpenFlags::FSOPEN_CLOEXEC).map_err(made)?;
    fsconfig_set_string(&fs, "mode", "0755")
        .and_then(|()| fsconfig_create(&fs))
        .map_err(share_err("make", "a tmpfs"))?;
    let shown = fsmount(
        &fs,
        FsMountFlags::FSMOUNT_CLOEXEC,
        MountAttrFlags::MOUNT_ATTR_RDONLY
            | MountAttrFlags::MOUNT_ATTR_NOSUID
            | MountAttrFlags::MOUNT_ATTR_NODEV,
    )
    .map_err(share_err("mount", "a tmpfs"))?;
    move_mount(
        &shown,
        "",
        at,
        "",
        MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
    )
    .map_err(share_err("attach", "a tmpfs"))?;
    let writable =
        writable_view(shown.as_fd()).map_err(share_err("open a writable view of", "a tmpfs"))?;
    for dir in dirs {
        make_path(writable.as_fd(), dir, true)?;
    }
    for Tree { entry: e, mount: m } in trees {
        let place = |err: std::io::Error| Error::Place {
            from: e.source.clone(),
            target: e.name.clone(),
            err,
        };
        let is_dir = rustix::fs::fstat(&m)
            .map(|st| FileType::from_raw_mode(st.st_mode) == FileType::Directory)
            .map_err(|err| place(err.into()))?;
        make_path(writable.as_fd(), &e.name, is_dir)?;
        let target = beneath(shown.as_fd(), &e.name, is_dir).map_err(|err| place(err.into()))?;
        move_mount(
            &m,
            "",
            &target,
            "",
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
        )
        .map_err(|err| place(err.into()))?;
        // Mounts the host adds below a volume later still reach the guest,
        // but nothing done here travels back to the host.
        set_attr(m.as_fd(), &SetAttr::slave()).map_err(|err| place(err.into()))?;
    }
    Ok(())
}

/// Creates `path` (relative, in a tmpfs only this process can write) and its
/// parents: the last component a directory or an empty file.
fn make_path(root: BorrowedFd, path: &str, dir: bool) -> Result<(), Error> {
    let (parent, leaf) = match path.rsplit_once('/') {
        Some((p, l)) => (Some(p), l),
        None => (None, path),
    };
    let mut at = rustix::io::dup(root).map_err(share_err("open", path.to_string()))?;
    for part in parent.into_iter().flat_map(|p| p.split('/')) {
        match rustix::fs::mkdirat(&at, part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(share_err("create", path.to_string())(e)),
        }
        at = beneath(at.as_fd(), part, true).map_err(share_err("open", path.to_string()))?;
    }
    let made = if dir {
        rustix::fs::mkdirat(&at, leaf, Mode::from_raw_mode(0o755))
    } else {
        rustix::fs::openat(
            &at,
            leaf,
            OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )
        .map(drop)
    };
    made.map_err(share_err("create", path.to_string()))
}

/// Opens `path` below `root`: never through a symlink, never above `root`,
/// never onto another mount.
fn beneath(root: BorrowedFd, path: &str, dir: bool) -> rustix::io::Result<OwnedFd> {
    let mut flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    if dir {
        flags |= OFlags::DIRECTORY;
    }
    rustix::fs::openat2(
        root,
        path,
        flags,
        Mode::empty(),
        ResolveFlags::BENEATH
            | ResolveFlags::NO_SYMLINKS
            | ResolveFlags::NO_MAGICLINKS
            | ResolveFlags::NO_XDEV,
    )
}

/// A writable, detached mount of the tmpfs whose read-only mount is `top`.
fn writable_view(top: BorrowedFd) -> rustix::io::Result<OwnedFd> {
    let view = open_tree(
        top,
        "",
        OpenTreeFlags::OPEN_TREE_CLONE
            | OpenTreeFlags::OPEN_TREE_CLOEXEC
            | OpenTreeFlags::AT_EMPTY_PATH,
    )?;
    set_attr(view.as_fd(), &SetAttr::writable_top())?;
    Ok(view)
}

/// `mount_setattr(2)` arguments (rustix has no wrapper for it).
struct SetAttr {
    set: u64,
    clear: u64,
    propagation: u64,
    recursive: bool,
}

impl SetAttr {
    fn read_only() -> Self {
        Self {
            set: libc::MOUNT_ATTR_RDONLY,
            clear: 0,
            propagation: 0,
            recursive: true,
        }
    }
    fn writable_top() -> Self {
        Self {
            set: 0,
            clear: libc::MOUNT_ATTR_RDONLY,
            propagation: 0,
            recursive: false,
        }
    }
    fn slave() -> Self {
        Self {
            set: 0,
            clear: 0,
            propagation: libc::MS_SLAVE,
            recursive: true,
        }
    }
}

/// Changes the mount `fd` (and the mounts below it when recursive).
fn set_attr(fd: BorrowedFd, attr: &SetAttr) -> rustix::io::Result<()> {
    let args = libc::mount_attr {
        attr_set: attr.set,
        attr_clr: attr.clear,
        propagation: attr.propagation,
        userns_fd: 0,
    };
    let mut flags = libc::AT_EMPTY_PATH;
    if attr.recursive {
        flags |= libc::AT_RECURSIVE;
    }
    // SAFETY: `fd` is a valid mount fd for the call's duration, the path is a
    // NUL-terminated empty string, and `args` is a live `mount_attr` whose
    // size is passed alongside it; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            c"".as_ptr(),
            flags,
            &args as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(
            rustix::io::Errno::from_io_error(&std::io::Error::last_os_error())
                .unwrap_or(rustix::io::Errno::INVAL),
        )
    }
}

/// Unmounts `path` and everything below it, lazily (a process may still
/// hold files there for a moment); a path that is not mounted, or does not
/// exist, is fine. Never follows a symlink at `path`.
pub fn detach(path: &Path) {
    match umount2(path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
        Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => log::warn!("cannot unmount {}: {e}", path.display()),
    }
}
