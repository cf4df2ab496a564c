//! The netlink layer against the real kernel. Every test runs on a thread of
//! its own in a fresh network namespace, so the host's interfaces are never
//! touched, and checks the result with real frames or with the kernel's own
//! view, not just return values.
//!
//! Without CAP_NET_ADMIN and CAP_SYS_ADMIN (a developer's unprivileged
//! `cargo test`) each test prints why and passes without running.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt as _;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cni_free_net::netlink::{self, create_persistent_tap, Handle, IpCidr, Route, TAP_FLAGS};
use cni_free_net::IfName;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
/// What the VMM sets with TUNSETVNETHDRSZ: virtio_net_hdr_v1.
const VNET_HDR_LEN: usize = 12;
/// IEEE 802 local experimental ethertype: nothing in the kernel answers it.
const TEST_ETHERTYPE: u16 = 0x88b5;
const WAIT: Duration = Duration::from_secs(5);

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
fn in_netns<T: Send + 'static>(test: &str, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
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

fn cidr(s: &str) -> IpCidr {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn route(destination: Option<&str>, gateway: Option<&str>) -> Route {
    Route {
        destination: destination.map(cidr),
        gateway: gateway.map(ip),
    }
}

fn ifname(s: &str) -> IfName {
    IfName::new(s).unwrap()
}

/// A broadcast Ethernet frame of the test ethertype carrying `marker`.
fn frame(marker: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&[0x02, 0, 0, 0, 0x0e, 0x57]);
    f.extend_from_slice(&TEST_ETHERTYPE.to_be_bytes());
    f.extend_from_slice(marker);
    f.resize(60, 0);
    f
}

fn has(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Attaches to tap `name` the way the VMM does: same flags, non-blocking,
/// 12-byte vnet headers.
fn attach_tap(name: &str) -> File {
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
fn read_tap_until(tap: &mut File, marker: &[u8]) -> Option<Vec<u8>> {
    let deadline = Instant::now() + WAIT;
    let mut buf = vec![0u8; 65536];
    while Instant::now() < deadline {
        match tap.read(&mut buf) {
            Ok(n) if has(&buf[..n], marker) => return Some(buf[..n].to_vec()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("reading the tap: {e}"),
        }
    }
    None
}

/// An AF_PACKET socket that sees every frame of one interface.
struct PacketSocket(OwnedFd);

impl PacketSocket {
    fn bind(ifindex: u32) -> Self {
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

    fn send(&self, frame: &[u8]) {
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
    fn receive_until(&self, marker: &[u8]) -> Option<Vec<u8>> {
        let deadline = Instant::now() + WAIT;
        let mut buf = vec![0u8; 65536];
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
            if from.sll_pkttype != libc::PACKET_OUTGOING && has(got, marker) {
                return Some(got.to_vec());
            }
        }
        None
    }
}

fn link_names(h: &mut Handle) -> Vec<(u32, String)> {
    let mut names: Vec<_> = h
        .links()
        .unwrap()
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    names.sort();
    names
}

fn is_link_local(a: &IpCidr) -> bool {
    cidr("fe80::/10").contains(a.addr)
}

fn set<T: std::hash::Hash + Eq + Clone>(items: &[T]) -> HashSet<T> {
    items.iter().cloned().collect()
}

/// A veth pair `eth0`/`peer0`, both up, as an engine leaves it (minus the
/// move of the peer to the host).
fn engine_veth(h: &mut Handle) -> (u32, u32) {
    let (veth, peer) = h.add_veth_pair("eth0", "peer0").unwrap();
    h.set_up(veth).unwrap();
    h.set_up(peer).unwrap();
    (veth, peer)
}

#[test]
fn mirror_carries_frames_both_ways_between_tap_and_veth() {
    in_netns(
        "mirror_carries_frames_both_ways_between_tap_and_veth",
        || {
            let mut h = Handle::open().unwrap();
            let (veth, peer) = engine_veth(&mut h);
            create_persistent_tap(&ifname("tap0")).unwrap();
            let tap = h.link_by_name("tap0").unwrap().expect("the tap exists");
            assert_eq!(tap.kind.as_deref(), Some("tun"));
            assert!(!tap.up, "a new tap is down");
            h.set_up(tap.index).unwrap();

            netlink::mirror(&mut h, veth, tap.index).unwrap();
            for (from, to) in [(veth, tap.index), (tap.index, veth)] {
                let filters = h.filters(from).unwrap();
                assert!(
                    filters.iter().any(|f| f.kind == "u32"
                        && f.parent == netlink::INGRESS_HANDLE
                        && f.protocol == libc::ETH_P_ALL as u16
                        && f.redirect_to == Some(to)),
                    "no redirect {from} -> {to} in {filters:?}"
                );
            }

            let mut vm = attach_tap("tap0");
            let wire = PacketSocket::bind(peer);

            // Guest → network: into the tap's fd, out of the veth's peer.
            let sent = frame(b"okvm mirror: from the guest");
            let mut with_header = vec![0u8; VNET_HDR_LEN];
            with_header.extend_from_slice(&sent);
            vm.write_all(&with_header).unwrap();
            let got = wire
                .receive_until(b"okvm mirror: from the guest")
                .expect("the frame written into the tap never left the veth");
            assert_eq!(got, sent);

            // Network → guest: into the veth from its peer, out of the tap's fd.
            let sent = frame(b"okvm mirror: to the guest");
            wire.send(&sent);
            let got = read_tap_until(&mut vm, b"okvm mirror: to the guest")
                .expect("the frame the veth received never reached the tap");
            assert_eq!(&got[VNET_HDR_LEN..], &sent[..]);
        },
    );
}

#[test]
fn unmirror_and_delete_leave_nothing_behind() {
    in_netns("unmirror_and_delete_leave_nothing_behind", || {
        let mut h = Handle::open().unwrap();
        let (veth, _) = engine_veth(&mut h);
        let before = link_names(&mut h);
        create_persistent_tap(&ifname("tap0")).unwrap();
        let tap = h.link_by_name("tap0").unwrap().unwrap().index;
        h.set_up(tap).unwrap();
        netlink::mirror(&mut h, veth, tap).unwrap();
        for index in [veth, tap] {
            assert!(h
                .qdiscs(index)
                .unwrap()
                .iter()
                .any(|q| q.is_ingress() && q.kind == "ingress"));
            assert!(!h.filters(index).unwrap().is_empty());
        }

        netlink::unmirror(&mut h, veth, tap).unwrap();
        for index in [veth, tap] {
            let qdiscs = h.qdiscs(index).unwrap();
            assert!(!qdiscs.iter().any(|q| q.is_ingress()), "{qdiscs:?}");
            assert_eq!(h.filters(index).unwrap(), []);
        }
        // Twice is fine: a retried teardown.
        netlink::unmirror(&mut h, veth, tap).unwrap();

        h.delete_link(tap).unwrap();
        assert_eq!(link_names(&mut h), before);
        // And with the tap gone altogether.
        netlink::unmirror(&mut h, veth, tap).unwrap();
    });
}

#[test]
fn describe_reports_what_configure_reproduces() {
    let Some((config, engine_mac)) = in_netns("describe_reports_what_configure_reproduces", || {
        let mut h = Handle::open().unwrap();
        let (veth, _) = engine_veth(&mut h);
        h.set_mtu(veth, 1400).unwrap();
        h.add_address(veth, cidr("10.0.0.2/24")).unwrap();
        h.add_address(veth, cidr("2001:db8::2/64")).unwrap();
        h.add_route(veth, &route(None, Some("10.0.0.1"))).unwrap();
        h.add_route(veth, &route(Some("192.0.2.0/24"), None))
            .unwrap();
        h.add_route(veth, &route(Some("2001:db8:1::/48"), Some("2001:db8::1")))
            .unwrap();
        h.add_route(veth, &route(None, Some("fe80::1"))).unwrap();

        // What describe must leave out is really there.
        let deadline = Instant::now() + WAIT;
        while !h
            .addresses(Some(veth))
            .unwrap()
            .iter()
            .any(|(_, a)| is_link_local(a))
        {
            assert!(
                Instant::now() < deadline,
                "no IPv6 link-local address appeared"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let routes = h.routes(Some(veth)).unwrap();
        let connected = routes
            .iter()
            .find(|r| r.route == route(Some("10.0.0.0/24"), None))
            .expect("the connected route of 10.0.0.2/24");
        assert!(connected.is_kernel_made());
        assert!(routes
            .iter()
            .any(|r| r.route.destination == Some(cidr("fe80::/64"))));

        let config = netlink::describe(&mut h, "eth0").unwrap();
        let mac = h.link(veth).unwrap().unwrap().mac.unwrap();
        (config, mac)
    }) else {
        return;
    };
    assert_eq!(config.mac, engine_mac);
    assert_eq!(config.mtu, 1400);
    assert_eq!(
        set(&config.addresses),
        set(&[cidr("10.0.0.2/24"), cidr("2001:db8::2/64")])
    );
    let expected_routes = [
        route(None, Some("10.0.0.1")),
        route(Some("192.0.2.0/24"), None),
        route(Some("2001:db8:1::/48"), Some("2001:db8::1")),
        route(None, Some("fe80::1")),
    ];
    assert_eq!(set(&config.routes), set(&expected_routes));

    // The guest's side: a NIC with a MAC of its own, in another namespace.
    in_netns(
        "describe_reports_what_configure_reproduces (guest)",
        move || {
            let mut h = Handle::open().unwrap();
            netlink::loopback_up(&mut h).unwrap();
            let lo = h.link_by_name("lo").unwrap().unwrap();
            assert!(lo.up);
            assert!(h
                .addresses(Some(lo.index))
                .unwrap()
                .iter()
                .any(|(_, a)| *a == cidr("127.0.0.1/8")));

            let (nic, peer) = h.add_veth_pair("eth0", "peer0").unwrap();
            h.set_up(peer).unwrap();
            netlink::configure(&mut h, nic, &config).unwrap();
            // Again, as a retried request would: nothing to do, no EEXIST.
            netlink::configure(&mut h, nic, &config).unwrap();

            let link = h.link(nic).unwrap().unwrap();
            assert!(link.up);
            assert_eq!(link.mtu, 1400);
            let addresses: Vec<_> = h
                .addresses(Some(nic))
                .unwrap()
                .into_iter()
                .map(|(_, a)| a)
                .filter(|a| !is_link_local(a))
                .collect();
            assert_eq!(set(&addresses), set(&config.addresses));
            let routes: Vec<_> = h
                .routes(Some(nic))
                .unwrap()
                .into_iter()
                .filter(|r| r.route.gateway.is_some() || !r.is_kernel_made())
                .map(|r| r.route)
                .collect();
            assert_eq!(set(&routes), set(&config.routes));
            // And the guest's NIC describes as the engine's veth did.
            let again = netlink::describe(&mut h, "eth0").unwrap();
            assert_eq!(again.mtu, config.mtu);
            assert_eq!(set(&again.addresses), set(&config.addresses));
            assert_eq!(set(&again.routes), set(&config.routes));
        },
    );
}

#[test]
fn ensure_bridge_is_idempotent() {
    in_netns("ensure_bridge_is_idempotent", || {
        let mut h = Handle::open().unwrap();
        let gateway = cidr("10.87.0.1/24");
        let first = netlink::ensure_bridge(&mut h, "okvm0", gateway).unwrap();
        let second = netlink::ensure_bridge(&mut h, "okvm0", gateway).unwrap();
        assert_eq!(first, second);
        let link = h.link(first).unwrap().unwrap();
        assert_eq!(link.kind.as_deref(), Some("bridge"));
        assert!(link.up);
        let v4: Vec<_> = h
            .addresses(Some(first))
            .unwrap()
            .into_iter()
            .filter(|(_, a)| a.addr.is_ipv4())
            .collect();
        assert_eq!(v4, [(first, gateway)]);
        let connected = h.routes(Some(first)).unwrap();
        assert!(connected
            .iter()
            .any(|r| r.route == route(Some("10.87.0.0/24"), None)));

        // A port joins it and leaves it.
        let (port, _) = h.add_veth_pair("port0", "port0-peer").unwrap();
        h.set_master(port, Some(first)).unwrap();
        assert_eq!(h.link(port).unwrap().unwrap().master, Some(first));
        h.set_master(port, None).unwrap();
        assert_eq!(h.link(port).unwrap().unwrap().master, None);

        // A name taken by something else is refused, not reused.
        let e = netlink::ensure_bridge(&mut h, "port0", gateway).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot use port0 as the bridge: it is a veth interface, not a bridge"
        );
    });
}

#[test]
fn ensure_bridge_survives_concurrent_creators() {
    in_netns("ensure_bridge_survives_concurrent_creators", || {
        let gateway = cidr("10.87.0.1/24");
        for round in 0..20 {
            let barrier = Arc::new(Barrier::new(2));
            // Threads start in the namespace of the thread that spawns them.
            let racers: Vec<_> = (0..2)
                .map(|_| {
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        let mut h = Handle::open().unwrap();
                        barrier.wait();
                        netlink::ensure_bridge(&mut h, "okvm0", gateway)
                    })
                })
                .collect();
            let results: Vec<_> = racers
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap()
                        .unwrap_or_else(|e| panic!("round {round}: {e}"))
                })
                .collect();
            assert_eq!(results[0], results[1], "round {round}");
            let mut h = Handle::open().unwrap();
            let v4: Vec<_> = h
                .addresses(Some(results[0]))
                .unwrap()
                .into_iter()
                .filter(|(_, a)| a.addr.is_ipv4())
                .collect();
            assert_eq!(v4, [(results[0], gateway)], "round {round}");
            h.delete_link(results[0]).unwrap();
        }
    });
}

#[test]
fn link_changes_take_effect() {
    in_netns("link_changes_take_effect", || {
        let mut h = Handle::open().unwrap();
        let (a, b) = h.add_veth_pair("a0", "b0").unwrap();
        let mac = [0x02, 0x6f, 0x6b, 0x76, 0x6d, 0x01];
        h.set_mac(a, mac).unwrap();
        h.set_mtu(a, 9000).unwrap();
        h.set_up(a).unwrap();
        let link = h.link_by_name("a0").unwrap().unwrap();
        assert_eq!(
            (
                link.index,
                link.mac,
                link.mtu,
                link.up,
                link.kind.as_deref()
            ),
            (a, Some(mac), 9000, true, Some("veth"))
        );
        h.set_down(a).unwrap();
        assert!(!h.link(a).unwrap().unwrap().up);

        // Another namespace, kept alive by its fd after its thread is gone.
        let other = std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            File::open("/proc/thread-self/ns/net").unwrap()
        })
        .join()
        .unwrap();
        h.move_to_netns(b, std::os::fd::AsFd::as_fd(&other))
            .unwrap();
        assert_eq!(h.link_by_name("b0").unwrap(), None);
        let seen_there = std::thread::spawn(move || {
            nix::sched::setns(&other, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            Handle::open().unwrap().link_by_name("b0").unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen_there.and_then(|l| l.kind), Some("veth".to_owned()));

        h.delete_link(a).unwrap();
        assert_eq!(h.link(a).unwrap(), None);
    });
}

#[test]
fn errors_name_the_operation_and_the_interface_once() {
    in_netns("errors_name_the_operation_and_the_interface_once", || {
        let mut h = Handle::open().unwrap();
        assert_eq!(h.link_by_name("nope0").unwrap(), None);
        let e = netlink::describe(&mut h, "nope0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot describe nope0 for the guest: there is no interface named nope0"
        );
        assert_eq!(e.errno(), Some(libc::ENODEV));

        let (veth, _) = engine_veth(&mut h);
        h.add_address(veth, cidr("10.0.0.2/24")).unwrap();
        let e = h.add_address(veth, cidr("10.0.0.2/24")).unwrap_err();
        let message = e.to_string();
        assert!(
            message
                .starts_with("cannot add address 10.0.0.2/24 to eth0: File exists (os error 17)"),
            "{message}"
        );
        assert_eq!(message.matches("File exists").count(), 1, "{message}");
        assert_eq!(e.errno(), Some(libc::EEXIST));

        let e = h.set_up(999_999).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot bring interface #999999 up: No such device (os error 19)"),
            "{e}"
        );

        // The kernel's own explanation travels along when it gives one.
        let e = h
            .add_route(veth, &route(Some("10.1.2.3/16"), None))
            .unwrap_err();
        assert_eq!(e.errno(), Some(libc::EINVAL));
        assert!(
            e.to_string().starts_with(
                "cannot add route 10.1.2.3/16 on eth0: Invalid argument (os error 22)"
            ),
            "{e}"
        );

        let e = h.add_route(veth, &route(None, None)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot add route default on eth0: a default route needs a gateway (it says whether it is IPv4 or IPv6)"
        );
        let e = h
            .add_address(veth, IpCidr::new(ip("10.0.0.3"), 33))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot add address 10.0.0.3/33 to eth0: prefix length \"33\" is not a number between 0 and 32"
        );
        let e = h.link_by_name("a/b").unwrap_err();
        assert!(e.to_string().contains("\"a/b\""), "{e}");
    });
}

#[test]
fn persistent_taps_refuse_taken_names_and_delete_cleanly() {
    in_netns(
        "persistent_taps_refuse_taken_names_and_delete_cleanly",
        || {
            let mut h = Handle::open().unwrap();
            let before = link_names(&mut h);
            create_persistent_tap(&ifname("tap0")).unwrap();
            let e = create_persistent_tap(&ifname("tap0")).unwrap_err();
            assert_eq!(
                e.to_string(),
                "cannot create tap tap0: an interface with that name already exists"
            );
            // The refusal left the first one as it was: persistent, attachable.
            drop(attach_tap("tap0"));
            let e = create_persistent_tap(&ifname("lo")).unwrap_err();
            assert_eq!(
                e.to_string(),
                "cannot create tap lo: an interface with that name already exists"
            );
            let tap = h.link_by_name("tap0").unwrap().unwrap();
            h.delete_link(tap.index).unwrap();
            assert_eq!(link_names(&mut h), before);
        },
    );
}
