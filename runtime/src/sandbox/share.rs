//! The sandbox's virtio-fs share: a tmpfs holding the container's rootfs and
//! its bind-mount sources, assembled in the sandbox's own mount namespace.
//!
//! Those mounts exist only in that namespace, so they vanish with the sandbox
//! and its virtiofsd, however they end (SIGKILL included): nothing can be left
//! mounted on the host. The namespace is a slave of the host's, so when podman
//! unmounts the container's storage later, the unmount reaches it too.

use std::path::Path;

use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};

use crate::bundle::ShareEntry;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot make the sandbox's mount namespace: {0}")]
    Namespace(nix::Error),
    #[error("cannot {what} {path}: {err}")]
    Mount {
        what: &'static str,
        path: String,
        err: nix::Error,
    },
    #[error("cannot create {path}: {err}")]
    Create { path: String, err: std::io::Error },
}

/// Enters a mount namespace of our own (this process and its children).
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

/// Mounts a tmpfs on `dir` and places every entry in it.
pub fn assemble(dir: &Path, entries: &[ShareEntry]) -> Result<(), Error> {
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
    for e in entries {
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
        let mut flags = MsFlags::MS_BIND;
        if e.recursive {
            flags |= MsFlags::MS_REC;
        }
        mount(Some(&e.source), &target, None::<&str>, flags, None::<&str>).map_err(|err| {
            Error::Mount {
                what: "bind-mount",
                path: format!("{} on {}", shown(&e.source), shown(&target)),
                err,
            }
        })?;
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
