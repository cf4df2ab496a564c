//! Attaching to a host tap interface that the networking layer already made.
//!
//! The VMM never creates interfaces: which tap a VM gets, its bridge, its
//! addresses and firewall rules belong to the networking layer. TUNSETIFF would
//! happily create a fresh, unconnected tap for a name that does not exist, so
//! [`Tap::open`] checks first and refuses a missing interface.
//!
//! Frames cross the fd with a 12-byte `virtio_net_hdr_v1` in front, exactly as
//! virtio-net puts them in the guest's buffers, so the device passes checksum
//! and segmentation offloads through without touching the packets.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;

/// Size of the vnet header on the tap: virtio_net_hdr_v1, i.e. the legacy
/// header plus num_buffers (virtio 1.2, 5.1.6).
pub const VNET_HDR_LEN: usize = 12;

/// Longest interface name the kernel accepts (IFNAMSIZ minus the NUL).
const MAX_NAME_LEN: usize = libc::IFNAMSIZ - 1;

/// Why a tap interface cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("invalid tap interface name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },
    #[error("tap interface {0} does not exist")]
    Missing(String),
    #[error("cannot look up tap interface {name}: {source}")]
    Lookup {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open /dev/net/tun for tap interface {name}: {source}")]
    OpenTun {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot attach to tap interface {name}{hint}: {source}")]
    Attach {
        name: String,
        hint: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("tap interface {name}: {step} failed: {source}")]
    Configure {
        name: String,
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// An open, non-blocking queue of an existing tap interface, with vnet headers.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the existing tap interface `name` (in the caller's network
    /// namespace). The interface must be persistent (`ip tuntap add ...`) and
    /// not in use by another process.
    pub fn open(name: &str) -> Result<Tap, TapError> {
        validate_name(name)?;
        // Looked up by index rather than in /sys/class/net: sysfs shows the
        // namespace it was mounted in, which need not be the VMM's.
        match nix::net::if_::if_nametoindex(name) {
            Ok(_) => {}
            Err(nix::errno::Errno::ENODEV | nix::errno::Errno::ENXIO) => {
                return Err(TapError::Missing(name.to_string()))
            }
            Err(e) => {
                return Err(TapError::Lookup {
                    name: name.to_string(),
                    source: e.into(),
                })
            }
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/net/tun")
            .map_err(|source| TapError::OpenTun {
                name: name.to_string(),
                source,
            })?;
        let tap = Tap {
            file,
            name: name.to_string(),
        };
        tap.attach()?;
        tap.configure_vnet_header()?;
        // Offload state lives on the interface and outlasts its last user:
        // start from none until a guest says what it can take.
        tap.set_offload(0)?;
        Ok(tap)
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Which offloads the tap may use in frames it hands us (TUN_F_* bits):
    /// partially checksummed frames and GSO packets the guest said it takes.
    pub fn set_offload(&self, tun_flags: u32) -> Result<(), TapError> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value and reads no
        // memory; the fd is a tun fd we own.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(tun_flags),
            )
        };
        self.check(r, "setting offloads (TUNSETOFFLOAD)")
    }

    /// TUNSETIFF as a tap with vnet headers: attaches to the interface, or
    /// creates it if it does not exist.
    fn set_iff(&self) -> io::Result<()> {
        let mut ifr = self.ifreq();
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes back one `ifreq`, which lives on
        // our stack for the whole call; the fd is ours.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETIFF,
                &mut ifr as *mut libc::ifreq,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn attach(&self) -> Result<(), TapError> {
        if let Err(source) = self.set_iff() {
            let hint = match source.raw_os_error() {
                Some(libc::EBUSY) => " (it is in use by another process)",
                Some(libc::EINVAL) => {
                    " (it is not a tap interface, or was created with incompatible flags such as multi_queue)"
                }
                Some(libc::EPERM) => " (its owner/group do not allow us, and we lack CAP_NET_ADMIN)",
                _ => "",
            };
            return Err(TapError::Attach {
                name: self.name.clone(),
                hint,
                source,
            });
        }
        // The interface could have been deleted between the lookup and
        // TUNSETIFF, which then created a transient one. Only a tap created by
        // this very fd is non-persistent and free to attach to (another
        // process's transient tap would have been busy), so that is the sign;
        // dropping the fd destroys the stray interface again.
        let mut ifr = self.ifreq();
        // SAFETY: TUNGETIFF fills one `ifreq` on our stack; the fd is ours.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNGETIFF,
                &mut ifr as *mut libc::ifreq,
            )
        };
        self.check(r, "reading its flags (TUNGETIFF)")?;
        // SAFETY: TUNGETIFF stored the flags in this union member, and any
        // bit pattern is a valid c_short.
        let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
        if flags & libc::IFF_PERSIST == 0 {
            return Err(TapError::Missing(self.name.clone()));
        }
        Ok(())
    }

    fn configure_vnet_header(&self) -> Result<(), TapError> {
        let len = VNET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one c_int through the pointer, which
        // points at a live local; the fd is ours.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETVNETHDRSZ,
                &len as *const libc::c_int,
            )
        };
        self.check(r, "setting the vnet header size (TUNSETVNETHDRSZ)")
    }

    /// An `ifreq` carrying our (validated, so NUL-terminated) name.
    fn ifreq(&self) -> libc::ifreq {
        // SAFETY: `ifreq` is plain C data (bytes, integers, a raw pointer in a
        // union) for which all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in ifr.ifr_name.iter_mut().zip(self.name.bytes()) {
            *dst = src as libc::c_char;
        }
        ifr
    }

    fn check(&self, r: libc::c_int, step: &'static str) -> Result<(), TapError> {
        if r < 0 {
            return Err(TapError::Configure {
                name: self.name.clone(),
                step,
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }
}

impl AsFd for Tap {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// The kernel's rules for interface names (`dev_valid_name`), so that a bad
/// name fails here with a reason instead of as an ioctl's EINVAL.
fn validate_name(name: &str) -> Result<(), TapError> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("it is a path component")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains(':') {
        Some("it contains ':'")
    } else if name.bytes().any(|b| b.is_ascii_whitespace()) {
        Some("it contains whitespace")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(TapError::InvalidName {
            name: name.to_string(),
            reason,
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::virtio::net;

    #[test]
    fn names_the_kernel_would_refuse_are_refused_first() {
        for bad in [
            "",
            "sixteen-bytes-xx",
            "a/b",
            "a\0b",
            ".",
            "..",
            "a b",
            "a:1",
            "tab\there",
        ] {
            match Tap::open(bad) {
                Err(TapError::InvalidName { name, .. }) => assert_eq!(name, bad),
                other => panic!("{bad:?}: expected an invalid-name error, got {other:?}"),
            }
        }
        let e = Tap::open("a/b").unwrap_err().to_string();
        assert_eq!(e, "invalid tap interface name \"a/b\": it contains '/'");
        assert!(validate_name("fifteen-bytes-x").is_ok());
    }

    /// Runs `f` on a thread of its own in a fresh network namespace, so that
    /// nothing it does can touch the host's links. `None` when the sandbox
    /// does not allow it (not root, no /dev/net/tun).
    pub(crate) fn in_new_netns<T: Send + 'static>(
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        if !std::path::Path::new("/dev/net/tun").exists() {
            eprintln!("skipped: no /dev/net/tun");
            return None;
        }
        std::thread::spawn(move || {
            // A network namespace is per thread: this one dies with the thread.
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                eprintln!("skipped: cannot create a network namespace: {e}");
                return None;
            }
            Some(f())
        })
        .join()
        .expect("the namespace thread panicked")
    }

    /// A tun fd for `name` that is not attached to anything yet.
    fn unattached(name: &str) -> Tap {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")
            .expect("open /dev/net/tun");
        Tap {
            file,
            name: name.to_string(),
        }
    }

    /// What the networking layer does: a persistent tap nobody is attached to.
    pub(crate) fn create_persistent_tap(name: &str) {
        let tap = unattached(name);
        tap.set_iff().expect("TUNSETIFF");
        // SAFETY: TUNSETPERSIST takes its argument by value.
        let r = unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::TUNSETPERSIST,
                1 as libc::c_ulong,
            )
        };
        assert!(r >= 0, "TUNSETPERSIST: {}", io::Error::last_os_error());
    }

    /// `ip link set NAME up`, in the caller's namespace.
    pub(crate) fn set_link_up(name: &str) {
        use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
        let sock = socket(
            AddressFamily::Inet,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .expect("socket");
        let tap = Tap {
            file: File::from(sock),
            name: name.to_string(),
        };
        let mut ifr = tap.ifreq();
        // SAFETY: SIOCGIFFLAGS fills the `ifreq` on our stack.
        let r = unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::SIOCGIFFLAGS,
                &mut ifr as *mut libc::ifreq,
            )
        };
        assert!(r >= 0, "SIOCGIFFLAGS: {}", io::Error::last_os_error());
        // SAFETY: SIOCGIFFLAGS stored the flags there.
        let flags = unsafe { ifr.ifr_ifru.ifru_flags };
        ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as i16;
        // SAFETY: SIOCSIFFLAGS reads the `ifreq` on our stack.
        let r = unsafe {
            libc::ioctl(
                tap.file.as_raw_fd(),
                libc::SIOCSIFFLAGS,
                &mut ifr as *mut libc::ifreq,
            )
        };
        assert!(r >= 0, "SIOCSIFFLAGS: {}", io::Error::last_os_error());
    }

    #[test]
    fn a_tap_that_vanishes_before_the_attach_is_not_recreated() {
        // The lookup said yes, then the interface went: TUNSETIFF creates a
        // new, transient one, which must be refused and must not survive.
        let Some((result, exists_after)) = in_new_netns(|| {
            let tap = unattached("okvm-race0");
            let result = tap.attach();
            drop(tap);
            (result, nix::net::if_::if_nametoindex("okvm-race0").is_ok())
        }) else {
            return;
        };
        let e = result.unwrap_err();
        assert_eq!(e.to_string(), "tap interface okvm-race0 does not exist");
        assert!(!exists_after, "the stray interface outlived its fd");
    }

    #[test]
    fn a_missing_tap_is_an_error_and_is_not_created() {
        let Some((result, exists_after)) = in_new_netns(|| {
            let result = Tap::open("okvm-missing0").map(|_| ());
            let exists_after = nix::net::if_::if_nametoindex("okvm-missing0").is_ok();
            (result, exists_after)
        }) else {
            return;
        };
        let e = result.unwrap_err();
        assert!(matches!(e, TapError::Missing(_)), "{e:?}");
        assert_eq!(e.to_string(), "tap interface okvm-missing0 does not exist");
        assert!(!exists_after, "Tap::open created the interface");
    }

    #[test]
    fn an_existing_tap_is_attached_non_blocking_with_vnet_headers() {
        let Some(()) = in_new_netns(|| {
            create_persistent_tap("okvm-t0");
            let tap = Tap::open("okvm-t0").expect("attach");
            assert_eq!(tap.name(), "okvm-t0");
            let fl = nix::fcntl::fcntl(tap.as_fd().as_raw_fd(), nix::fcntl::F_GETFL).unwrap();
            assert_ne!(fl & libc::O_NONBLOCK, 0, "the fd must be non-blocking");
            let mut ifr = tap.ifreq();
            // SAFETY: TUNGETIFF fills the `ifreq` on our stack.
            let r = unsafe {
                libc::ioctl(
                    tap.file.as_raw_fd(),
                    libc::TUNGETIFF,
                    &mut ifr as *mut libc::ifreq,
                )
            };
            assert!(r >= 0);
            // SAFETY: TUNGETIFF stored the flags there.
            let flags = i32::from(unsafe { ifr.ifr_ifru.ifru_flags });
            assert_ne!(flags & libc::IFF_VNET_HDR, 0);
            assert_ne!(flags & libc::IFF_NO_PI, 0);
            // The link is down: nothing to read, and no blocking either.
            let mut buf = [0u8; 64];
            assert_eq!(
                nix::unistd::read(tap.as_fd().as_raw_fd(), &mut buf),
                Err(nix::errno::Errno::EAGAIN)
            );
            // Every offload combination a guest can negotiate is one the
            // kernel takes (TSO without checksum offload would be EINVAL).
            for guest in 0..16u64 {
                let features = (guest & 1) << 1 // GUEST_CSUM
                    | ((guest >> 1) & 7) << 7; // GUEST_TSO4, GUEST_TSO6, GUEST_ECN
                let flags = net::tun_offload(features);
                tap.set_offload(flags)
                    .unwrap_or_else(|e| panic!("features {features:#x}: {e}"));
            }
            // A single-queue tap serves one VMM at a time.
            let e = Tap::open("okvm-t0").unwrap_err().to_string();
            assert!(e.contains("in use by another process"), "{e}");
            drop(tap);
            Tap::open("okvm-t0").expect("free again once the first user is gone");
        }) else {
            return;
        };
    }

    #[test]
    fn an_interface_that_is_not_a_tap_is_refused() {
        let Some(e) = in_new_netns(|| Tap::open("lo").unwrap_err()) else {
            return;
        };
        assert!(matches!(e, TapError::Attach { .. }), "{e:?}");
        assert!(e.to_string().contains("not a tap interface"), "{e}");
    }
}
