//! What the kernel tests of this crate share: running a test in a network
//! namespace of its own (or saying why it cannot run), attaching to a tap as
//! the VMM does, and watching an interface with a packet socket.

// Each test binary uses its own part of this module.
#![allow(dead_code)]

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::time::{Duration, Instant};

use cni_free_net::netlink::{IpCidr, TAP_FLAGS};
use cni_free_net::IfName;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
/// What the VMM sets with TUNSETVNETHDRSZ: virtio_net_hdr_v1.
pub const VNET_HDR_LEN: usize = 12;
/// IEEE 802 local experimental ethertype: nothing in the kernel answers it.
pub const TEST_ETHERTYPE: u16 = 0x88b5;
pub const WAIT: Duration = Duration::from_secs(5);

/// Why these tests cannot run here, if they cannot.
fn missing_privilege() -> Option<String> {
    let status = match std::fs::read_to_string("/proc/self/status") {
        Ok(s) => s,
        Err(e) => return Some(format!("cannot read /proc/self/status: {e}")),
    };
    let Some(caps) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return Some("no CapEff line in /proc/self/status".into());
    };
    if caps & (1 << CAP_NET_ADMIN) == 0 {
        return Some("no CAP_NET_ADMIN in the effective capabilities".into());
    }
    if caps & (1 << CAP_SYS_ADMIN) == 0 {
        return Some("no CAP_SYS_ADMIN, needed for a network namespace".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        return Some("no /dev/net/tun".into());
    }
    None
}

/// Runs `f` on a new thread in a new network namespace; None (after saying
/// why) when this process may not do that.
pub fn in_netns<T: Send + 'static>(
    test: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    if let Some(reason) = missing_privilege() {
        eprintln!("skipped {test}: {reason}");
        return None;
    }
    let thread = std::thread::spawn(move || {
        // A network namespace is per thread: this one dies with the thread.
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
            .expect("unshare(CLONE_NEWNET) although the capabilities allow it");
        f()
    });
    Some(
        thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e)),
    )
}

pub fn cidr(s: &str) -> IpCidr {
    s.parse().unwrap()
}

pub fn ifname(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

/// A broadcast Ethernet frame of the test ethertype carrying `marker`.
pub fn frame(marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0x0e, 0x57]);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(marker);
    f.resize(60, 0);
    f
}

pub fn has(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Attaches to tap `name` the way the VMM does: same flags, non-blocking,
/// 12-byte vnet headers.
pub fn attach_tap(name: &str) -> File {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/net/tun")
        .unwrap();
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    ifr.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes back the ifreq on our stack.
    unsafe { tun_ioctl(&file, libc::TUNSETIFF, &mut ifr, "TUNSETIFF") };
    // SAFETY: TUNGETIFF fills the ifreq on our stack.
    unsafe { tun_ioctl(&file, libc::TUNGETIFF, &mut ifr, "TUNGETIFF") };
    // SAFETY: TUNGETIFF stored the flags in this member; any bits are valid.
    let flags = libc::c_int::from(unsafe { ifr.ifr_ifru.ifru_flags });
    assert_ne!(flags & libc::IFF_PERSIST, 0, "{name} is not persistent");
    assert_eq!(flags & TAP_FLAGS, TAP_FLAGS, "{name} lacks the VMM's flags");
    let mut len = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads one c_int, on our stack.
    unsafe { tun_ioctl(&file, libc::TUNSETVNETHDRSZ, &mut len, "TUNSETVNETHDRSZ") };
    file
}

/// One ioctl on a tun fd, which must succeed.
///
/// # Safety
///
/// `arg` must point to what `request` reads or writes, valid for the call.
unsafe fn tun_ioctl<T>(file: &File, request: libc::Ioctl, arg: *mut T, what: &str) {
    // SAFETY: the fd is open; the caller vouches for `arg`.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request, arg) };
    assert!(r >= 0, "{what}: {}", io::Error::last_os_error());
}

/// The next frame read from the tap that contains `marker`, vnet header
/// included.
pub fn read_tap_until(tap: &mut File, marker: &[u8]) -> Option<Vec<u8>> {
    tap_frames_until(tap, marker).and_then(|mut frames| frames.pop())
}

/// Every frame read from the tap (vnet header included) up to and
/// including the first that contains `marker`; None if that one never came.
pub fn tap_frames_until(tap: &mut File, marker: &[u8]) -> Option<Vec<Vec<u8>>> {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 65536];
    let mut frames = Vec::new();
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) => {
                frames.push(buf[..n].to_vec());
                if has(&buf[..n], marker) {
                    return Some(frames);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("reading the tap: {e}"),
        }
    }
    None
}

/// Writes `frame` into the tap as the guest's NIC would, behind a zeroed
/// vnet header.
pub fn write_frame(vm: &mut File, frame: &[u8]) {
    let mut with_header = vec![0u8; VNET_HDR_LEN];
    with_header.extend_from_slice(frame);
    vm.write_all(&with_header).unwrap();
}

/// An AF_PACKET socket that sees every frame of one interface.
pub struct PacketSocket(OwnedFd);

impl PacketSocket {
    pub fn bind(ifindex: u32) -> Self {
        let protocol = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(protocol),
            )
        };
        assert!(fd >= 0, "AF_PACKET socket: {}", io::Error::last_os_error());
        // SAFETY: fd is a fresh socket nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_ll is plain old data; all zeroes is valid.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = protocol;
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: bind reads the sockaddr_ll on our stack, of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        assert!(r == 0, "binding AF_PACKET: {}", io::Error::last_os_error());
        Self(fd)
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: send reads `frame`, which outlives the call.
        let r = unsafe { libc::send(self.0.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            r,
            frame.len() as isize,
            "send: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame the interface received (not sent) that contains `marker`.
    pub fn receive_until(&self, marker: &[u8]) -> Option<Vec<u8>> {
        self.frames_until(marker)
            .and_then(|mut frames| frames.pop())
    }

    /// Every frame the interface received (not sent) up to and including
    /// the first that contains `marker`; None if that one never came.
    pub fn frames_until(&self, marker: &[u8]) -> Option<Vec<Vec<u8>>> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
        let mut frames = Vec::new();
        while Instant::now() < deadline {
            // SAFETY: as above, all zeroes is a valid sockaddr_ll.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: recvfrom writes at most buf.len() bytes into buf and at
            // most from_len bytes into `from`, both ours for the call.
            let n = unsafe {
                libc::recvfrom(
                    self.0.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock, "recvfrom: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            let got = &buf[..n as usize];
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            frames.push(got.to_vec());
            if has(got, marker) {
                return Some(frames);
            }
        }
        None
    }
}
