//! Bridge mode's filters against the real kernel, with real frames written
//! into a tap the way a guest's NIC would send them: the anti-spoofing
//! guard lets only the guest's own MAC and address into the bridge, and the
//! bridge policy lets guests reach only the host services it allows. Each
//! test also removes what it installed and shows the same frames passing,
//! so a guard that silently did nothing would fail it.
//!
//! Needs CAP_NET_ADMIN and CAP_SYS_ADMIN (each test in a network namespace
//! of its own); without them each test says why and passes without running.

mod common;

use std::net::{Ipv4Addr, UdpSocket};

use cni_free_net::filter::{self, BridgePolicy, HostService, TapGuard};
use cni_free_net::netlink::{self, create_persistent_tap, Handle};
use etherparse::{ArpHardwareId, ArpOperation, ArpPacket, EtherType, PacketBuilder};

use common::*;

const GUEST_MAC: [u8; 6] = [0x02, 0x6f, 0x6b, 0x76, 0x6d, 0x02];
const OTHER_MAC: [u8; 6] = [0x02, 0x6f, 0x6b, 0x76, 0x6d, 0x66];
const GUEST: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 2);
const OTHER: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 66);
const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);
const BROADCAST: [u8; 6] = [0xff; 6];

/// A UDP datagram from `mac`/`src` to `dst_mac`/`dst`:`port` carrying `marker`.
fn udp(
    mac: [u8; 6],
    src: Ipv4Addr,
    dst_mac: [u8; 6],
    dst: Ipv4Addr,
    port: u16,
    marker: &str,
) -> Vec<u8> {
    let builder = PacketBuilder::ethernet2(mac, dst_mac)
        .ipv4(src.octets(), dst.octets(), 64)
        .udp(40000, port);
    let mut f = Vec::with_capacity(builder.size(marker.len()));
    builder.write(&mut f, marker.as_bytes()).unwrap();
    f
}

/// An ARP request for the gateway from Ethernet source `mac`, with sender
/// `sha`/`spa`; `marker` rides in the trailing padding.
fn arp(mac: [u8; 6], sha: [u8; 6], spa: Ipv4Addr, marker: &str) -> Vec<u8> {
    let packet = ArpPacket::new(
        ArpHardwareId::ETHERNET,
        EtherType::IPV4,
        ArpOperation::REQUEST,
        &sha,
        &spa.octets(),
        &[0; 6],
        &GATEWAY.octets(),
    )
    .unwrap();
    let builder = PacketBuilder::ethernet2(mac, BROADCAST).arp(packet);
    let mut f = Vec::with_capacity(builder.size() + marker.len());
    builder.write(&mut f).unwrap();
    f.extend_from_slice(marker.as_bytes());
    f
}

/// A bridge `br0` (10.88.0.1/24) with tap `tap0` attached and up, and the
/// tap's fd as the VMM holds it.
fn bridge_with_tap(h: &mut Handle) -> (u32, std::fs::File) {
    let br = netlink::ensure_bridge(h, "br0", cidr("10.88.0.1/24")).unwrap();
    create_persistent_tap(&ifname("tap0")).unwrap();
    let tap = h.link_by_name("tap0").unwrap().unwrap().index;
    h.set_up(tap).unwrap();
    h.set_master(tap, Some(br)).unwrap();
    (br, attach_tap("tap0"))
}

#[test]
fn the_guard_lets_only_the_guests_own_mac_and_address_into_the_bridge() {
    in_netns(
        "the_guard_lets_only_the_guests_own_mac_and_address_into_the_bridge",
        || {
            let mut h = Handle::open().unwrap();
            let (br, mut vm) = bridge_with_tap(&mut h);
            let guard = TapGuard {
                tap: ifname("tap0"),
                mac: GUEST_MAC,
                addr: GUEST,
            };
            guard.install().unwrap();
            // Twice: the table is replaced, not refused.
            guard.install().unwrap();
            assert!(filter::tables()
                .unwrap()
                .contains(&"netdev okvm-tap0".to_owned()));
            let bridge = PacketSocket::bind(br);

            let honest = [
                (
                    "udp",
                    udp(
                        GUEST_MAC,
                        GUEST,
                        BROADCAST,
                        Ipv4Addr::BROADCAST,
                        7000,
                        "honest-udp",
                    ),
                ),
                ("arp", arp(GUEST_MAC, GUEST_MAC, GUEST, "honest-arp")),
            ];
            let mut vlan = Vec::new();
            PacketBuilder::ethernet2(GUEST_MAC, BROADCAST)
                .single_vlan(7.try_into().unwrap())
                .ipv4(GUEST.octets(), Ipv4Addr::BROADCAST.octets(), 64)
                .udp(40000, 7000)
                .write(&mut vlan, b"spoof-vlan")
                .unwrap();
            let mut ipv6 = Vec::new();
            PacketBuilder::ethernet2(GUEST_MAC, BROADCAST)
                .ipv6(
                    [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
                    [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
                    64,
                )
                .udp(40000, 7000)
                .write(&mut ipv6, b"spoof-ipv6")
                .unwrap();
            let spoofed = [
                (
                    "another source MAC",
                    udp(
                        OTHER_MAC,
                        GUEST,
                        BROADCAST,
                        Ipv4Addr::BROADCAST,
                        7000,
                        "spoof-mac",
                    ),
                ),
                (
                    "another source address",
                    udp(
                        GUEST_MAC,
                        OTHER,
                        BROADCAST,
                        Ipv4Addr::BROADCAST,
                        7000,
                        "spoof-ip",
                    ),
                ),
                (
                    "ARP claiming another address",
                    arp(GUEST_MAC, GUEST_MAC, OTHER, "spoof-arp-ip"),
                ),
                (
                    "ARP claiming another MAC",
                    arp(GUEST_MAC, OTHER_MAC, GUEST, "spoof-arp-mac"),
                ),
                (
                    "ARP from another MAC",
                    arp(OTHER_MAC, OTHER_MAC, GUEST, "spoof-arp-src"),
                ),
                ("a VLAN tag", vlan),
                ("IPv6", ipv6),
                ("another ethertype", frame(b"spoof-ethertype")),
            ];
            for (_, f) in &spoofed {
                write_frame(&mut vm, f);
            }
            for (_, f) in &honest {
                write_frame(&mut vm, f);
            }
            // The tap's frames reach the bridge in order: once the last honest
            // one is there, every spoofed one would have been too.
            let seen = bridge
                .frames_until(b"honest-arp")
                .expect("the guest's own ARP never reached the bridge");
            assert!(
                seen.iter().any(|f| has(f, b"honest-udp")),
                "the guest's own UDP never reached the bridge"
            );
            for (what, f) in &spoofed {
                assert!(!seen.contains(f), "a frame with {what} reached the bridge");
            }

            TapGuard::remove(&ifname("tap0")).unwrap();
            TapGuard::remove(&ifname("tap0")).unwrap();
            assert!(!filter::tables()
                .unwrap()
                .iter()
                .any(|t| t.contains("okvm-tap0")));
            // Without the guard the same spoof goes through: the test can fail.
            write_frame(&mut vm, &spoofed[0].1);
            assert!(bridge.receive_until(b"spoof-mac").is_some());
        },
    );
}

#[test]
fn the_policy_lets_guests_reach_only_allowed_host_services() {
    in_netns(
        "the_policy_lets_guests_reach_only_allowed_host_services",
        || {
            let mut h = Handle::open().unwrap();
            let (br, mut vm) = bridge_with_tap(&mut h);
            let bridge_mac = h.link(br).unwrap().unwrap().mac.unwrap();
            let allowed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7101)).unwrap();
            let closed = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 7102)).unwrap();
            for s in [&allowed, &closed] {
                s.set_read_timeout(Some(WAIT)).unwrap();
            }
            let policy = BridgePolicy {
                bridge: ifname("br0"),
                subnet: "10.88.0.0/24".parse().unwrap(),
                host_allow: vec![HostService::Udp(7101)],
                dns: vec![],
                guest_to_guest: true,
                masquerade: false,
            };
            policy.apply().unwrap();
            assert!(filter::tables()
                .unwrap()
                .contains(&"ip okvm-br0".to_owned()));

            let to_host = |port, marker| udp(GUEST_MAC, GUEST, bridge_mac, GATEWAY, port, marker);
            write_frame(&mut vm, &to_host(7102, "not-allowed"));
            write_frame(&mut vm, &to_host(7101, "allowed"));
            let mut buf = [0u8; 64];
            let (n, from) = allowed
                .recv_from(&mut buf)
                .expect("the allowed port got nothing");
            assert_eq!((&buf[..n], from.ip()), (&b"allowed"[..], GUEST.into()));
            closed.set_nonblocking(true).unwrap();
            assert!(
                closed.recv_from(&mut buf).is_err(),
                "a port not allowed was reached"
            );

            BridgePolicy::remove(&ifname("br0")).unwrap();
            assert!(!filter::tables()
                .unwrap()
                .iter()
                .any(|t| t.contains("okvm-br0")));
            closed.set_nonblocking(false).unwrap();
            write_frame(&mut vm, &to_host(7102, "no-policy"));
            let (n, _) = closed
                .recv_from(&mut buf)
                .expect("without the policy the port is open");
            assert_eq!(&buf[..n], b"no-policy");
        },
    );
}
