//! The guest's own root. The kernel unpacks the initramfs into `rootfs`, a
//! mount with no parent, and pivot_root(2) refuses to move a process off
//! such a root (EINVAL), in any mount namespace copied from it. okvm-init
//! therefore does what switch_root does, without copying anything: it binds
//! the initramfs onto a directory of itself, moves that mount over `/` and
//! chroots into it. The new root has a parent, so container stages can
//! pivot_root away from it as runc does.

use nix::mount::{mount, MsFlags};

const STAGING: &str = "/.okvm-root";

/// Makes `/` a mount that pivot_root can leave. Call before anything else is
/// mounted (the bind is not recursive).
pub fn make_pivotable() -> Result<(), String> {
    let fail =
        |what: &str, e: nix::errno::Errno| format!("cannot re-root the initramfs ({what}): {e}");
    std::fs::create_dir_all(STAGING).map_err(|e| format!("cannot create {STAGING}: {e}"))?;
    mount(
        Some("/"),
        STAGING,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(|e| fail("bind", e))?;
    nix::unistd::chdir(STAGING).map_err(|e| fail("chdir", e))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(|e| fail("move", e))?;
    nix::unistd::chroot(".").map_err(|e| fail("chroot", e))?;
    nix::unistd::chdir("/").map_err(|e| fail("chdir /", e))?;
    // The staging directory shows through the bind (same filesystem): tidy.
    let _ = std::fs::remove_dir(STAGING);
    Ok(())
}
