//! The netlink layer against the real kernel. Every test runs on a thread of
//! its own in a fresh network namespace, so the host's interfaces are never
//! touched, and checks the result with real frames or with the kernel's own
//! view, not just return values.
//!
//! Without CAP_NET_ADMIN and CAP_SYS_ADMIN (a developer's unprivileged
//! `cargo test`) each test prints why and passes without running.

mod common;

use std::collections::HashSet;
use std::fs::File;
use std::net::IpAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use cni_free_net::netlink::{self, create_persistent_tap, Handle, IpCidr, Route};

use common::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn route(destination: Option<&str>, gateway: Option<&str>) -> Route {
    Route {
        destination: destination.map(cidr),
        gateway: gateway.map(ip),
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
            write_frame(&mut vm, &sent);
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
fn isolated_ports_reach_the_bridge_but_not_each_other() {
    in_netns("isolated_ports_reach_the_bridge_but_not_each_other", || {
        let mut h = Handle::open().unwrap();
        let br = netlink::ensure_bridge(&mut h, "br0", cidr("10.88.0.1/24")).unwrap();
        let mut taps = Vec::new();
        for name in ["tap0", "tap1"] {
            create_persistent_tap(&ifname(name)).unwrap();
            let index = h.link_by_name(name).unwrap().unwrap().index;
            h.set_up(index).unwrap();
            h.set_master(index, Some(br)).unwrap();
            assert!(!h.link(index).unwrap().unwrap().port_isolated);
            h.set_port_isolated(index, true).unwrap();
            assert!(h.link(index).unwrap().unwrap().port_isolated);
            taps.push((index, attach_tap(name)));
        }
        let bridge = PacketSocket::bind(br);

        write_frame(&mut taps[0].1, &frame(b"okvm isolated: first"));
        assert!(
            bridge.receive_until(b"okvm isolated: first").is_some(),
            "an isolated port's frame never reached the bridge"
        );
        // Once tap1 is a plain port again the next frame reaches it; the
        // first must not have come before it.
        let tap1 = taps[1].0;
        h.set_port_isolated(tap1, false).unwrap();
        assert!(!h.link(tap1).unwrap().unwrap().port_isolated);
        write_frame(&mut taps[0].1, &frame(b"okvm isolated: second"));
        let seen = tap_frames_until(&mut taps[1].1, b"okvm isolated: second")
            .expect("a frame from an isolated port never reached a plain port");
        assert!(
            !seen.iter().any(|f| has(f, b"okvm isolated: first")),
            "the bridge forwarded between two isolated ports"
        );
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
