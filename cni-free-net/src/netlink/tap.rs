//! Persistent taps. The networking layer makes and deletes them; the VMM only
//! attaches to one (runtime/vmm's `Tap::open`), so a tap outlives VMM restarts
//! and its teardown is in one place.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt as _;

use super::error::{NetlinkError, Result};
use crate::ifname::IfName;

/// The flags the VMM attaches with: a tap (Ethernet frames), no packet-info
/// prefix, and a virtio-net header in front of every frame. A tap made with
/// other feature flags would refuse or garble the VMM's attach.
pub const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;

/// Creates the persistent tap `name` in the calling thread's network
/// namespace, down and unattached. Refuses a name that is already taken, by
/// a tap or anything else. Delete it with [`super::Handle::delete_link`].
pub fn create_persistent_tap(name: &IfName) -> Result<()> {
    let fail = |step, error| NetlinkError::Tap {
        name: name.to_string(),
        step,
        error,
    };
    // The tun device belongs to the namespace of whoever opens
    // /dev/net/tun, so this must happen on the calling thread.
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| fail("opening /dev/net/tun", e))?;

    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    // IfName guarantees at most IFNAMSIZ-1 bytes, so the NUL stays.
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.as_str().bytes()) {
        *dst = src as libc::c_char;
    }
    // IFF_TUN_EXCL makes the kernel refuse an existing name instead of
    // attaching to it: no window between a lookup and the create. It is a
    // create-time check only, not kept among the tap's flags, so the VMM's
    // attach with TAP_FLAGS still matches.
    ifr.ifr_ifru.ifru_flags = (TAP_FLAGS | libc::IFF_TUN_EXCL) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes back one ifreq, which lives on our
    // stack for the whole call; the fd is ours.
    let r = unsafe {
        libc::ioctl(
            tun.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    };
    if r < 0 {
        let error = io::Error::last_os_error();
        return Err(match error.raw_os_error() {
            // EBUSY: a tun/tap of that name (IFF_TUN_EXCL); EINVAL: another
            // kind of interface has the name.
            Some(libc::EBUSY | libc::EINVAL) if exists(name) => NetlinkError::TapExists {
                name: name.to_string(),
            },
            _ => fail("TUNSETIFF", error),
        });
    }
    // SAFETY: TUNSETPERSIST takes its argument by value and reads no memory;
    // the fd is ours.
    let r = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) };
    if r < 0 {
        // Closing the fd removes the not-yet-persistent tap again.
        return Err(fail("TUNSETPERSIST", io::Error::last_os_error()));
    }
    Ok(())
}

fn exists(name: &IfName) -> bool {
    let Ok(name) = std::ffi::CString::new(name.as_str()) else {
        return false;
    };
    // SAFETY: if_nametoindex only reads the NUL-terminated string, which
    // outlives the call.
    unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
}
