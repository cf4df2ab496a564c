//! The per-host bridge (docs/networking.md, "What a guest may send and
//! reach"; docs/security.md, "The bridge"). Guests run by the `okvm` CLI in
//! bridge mode, each test on a bridge, subnet and network namespace of its
//! own; attackers are containers with CAP_NET_ADMIN that change their own
//! guest's interface, so every spoofed frame comes out of a real guest
//! kernel through the VMM's virtio-net. What is checked is what an admin
//! would check: which connections and pings got through, the host's
//! neighbour table and the bridge's forwarding database, and that teardown
//! leaves no tap, nftables table or lease behind.
//!
//! Every attacker first shows that it reaches everything (so its later
//! failures are the filter's doing, not a broken setup), and an honest
//! guest on the same bridge keeps reaching what it reached before.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use okvm_tests::net::{
    bundle_with, eth0_address, kill_sandbox, marker, okvm_tap_name, ping, sh, snapshot, tcp_read,
    BridgeConf, TestNetns, LIMIT,
};
use okvm_tests::oci::{Bundle, Sandbox};
use serde_json::{json, Value};

const OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const HOST_OUTSIDE: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
/// The host's test service, answering "host".
const HOST_PORT: u16 = 7010;
/// Guests' own services: a peer's, and one the host connects to.
const PEER_PORT: u16 = 7000;
const GUEST_PORT: u16 = 7001;
const OUTSIDE_PORT: u16 = 7003;

/// What a guest reaches (`probe` below), when it reaches everything and
/// when it reaches nothing.
const REACH_ALL: &str = "ping-host ok\ntcp-host host\nping-peer ok\ntcp-peer peer\n\
                         ping-outside ok\ntcp-outside outside\n";
const REACH_NOTHING: &str = "ping-host fail\ntcp-host fail\nping-peer fail\ntcp-peer fail\n\
                             ping-outside fail\ntcp-outside fail\n";

/// Shell functions for the guests: `ok CMD` and `tcp ADDR PORT` print what
/// happened, `probe NAME` writes to marker NAME what the guest reaches of
/// the host (ping and TCP), of the peer and of the outside network.
fn probe_functions(gateway: Ipv4Addr, peer: Ipv4Addr) -> String {
    format!(
        "ok() {{ if \"$@\" >/dev/null 2>&1; then echo ok; else echo fail; fi; }}; \
         tcp() {{ out=$(nc -w 3 \"$1\" \"$2\" 2>/dev/null); echo \"${{out:-fail}}\"; }}; \
         probe() {{ {{ echo \"ping-host $(ok ping -c 1 -W 3 {gateway})\"; \
                      echo \"tcp-host $(tcp {gateway} {HOST_PORT})\"; \
                      echo \"ping-peer $(ok ping -c 1 -W 3 {peer})\"; \
                      echo \"tcp-peer $(tcp {peer} {PEER_PORT})\"; \
                      echo \"ping-outside $(ok ping -c 1 -W 3 {OUTSIDE})\"; \
                      echo \"tcp-outside $(tcp {OUTSIDE} {OUTSIDE_PORT})\"; }} | put $1; }}; \
         wait_for() {{ until [ -e /$1 ]; do sleep 0.2; done; }}; "
    )
}

/// Lets the container change its guest's interface, as root in a VM may.
fn with_net_admin(config: &mut Value) {
    for set in ["bounding", "effective", "permitted"] {
        config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_NET_ADMIN"));
    }
}

/// An outside network behind the host, with no route back to the guests'
/// subnet (only the masquerade lets them out), serving "outside" on TCP.
struct Outside {
    netns: String,
    server: String,
}

impl Outside {
    fn make(netns: &str, link: &str) -> Outside {
        let (ok, out) = sh(&format!(
            "ip netns del {netns} 2>/dev/null; ip netns add {netns} && \
             ip link add {link} type veth peer name eth0 netns {netns} && \
             ip addr add {HOST_OUTSIDE}/24 dev {link} && ip link set {link} up && \
             ip -n {netns} link set lo up && \
             ip -n {netns} addr add {OUTSIDE}/24 dev eth0 && ip -n {netns} link set eth0 up"
        ));
        assert!(ok, "{out}");
        // `ip netns exec` execs the server, so $! is the server's pid.
        let (ok, pid) = sh(&format!(
            "ip netns exec {netns} busybox nc -ll -p {OUTSIDE_PORT} -e echo outside \
             >/dev/null 2>&1 & echo $!"
        ));
        assert!(ok, "{pid}");
        Outside {
            netns: netns.into(),
            server: pid.trim().into(),
        }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = sh(&format!(
            "kill {}; ip netns del {}",
            self.server, self.netns
        ));
    }
}

/// A TCP service on every address of the host (of the test's namespace),
/// answering "host" and remembering who connected, until dropped.
struct HostServer {
    stop: Arc<AtomicBool>,
    peers: Arc<Mutex<Vec<Ipv4Addr>>>,
    thread: Option<JoinHandle<()>>,
}

impl HostServer {
    /// Binds in the calling thread's namespace.
    fn start(port: u16) -> HostServer {
        let listener = TcpListener::bind((Ipv4Addr::UNSPECIFIED, port)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let peers = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, peers) = (stop.clone(), peers.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((mut stream, SocketAddr::V4(peer))) => {
                            peers.lock().unwrap().push(*peer.ip());
                            let _ = stream.set_nonblocking(false);
                            let _ = stream.write_all(b"host\n");
                        }
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(50)),
                    }
                }
            })
        };
        HostServer {
            stop,
            peers,
            thread: Some(thread),
        }
    }

    fn peers(&self) -> Vec<Ipv4Addr> {
        self.peers.lock().unwrap().clone()
    }
}

impl Drop for HostServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One test's world: a network namespace, a sandbox of okvm containers, a
/// bridge, subnet and network.conf of its own (`okvmhN`, `10.13N.0.0/24`),
/// an outside network behind the host, and what teardown must restore.
/// Fields drop in order: containers first, the namespace last.
struct Lab {
    sb: Sandbox,
    conf: BridgeConf,
    before: String,
    _outside: Outside,
    _ns: TestNetns,
}

impl Lab {
    /// `extra`: network.conf lines (masquerade is always on, for the
    /// outside network).
    fn new(n: u8, extra: &str) -> Lab {
        let ns = TestNetns::enter(&format!("okvmh-lab{n}"));
        let sb = Sandbox::new();
        let conf = BridgeConf::install(
            &sb,
            &format!("okvmh{n}"),
            &format!("10.{}.0.0/24", 131 + u32::from(n)),
            &format!("masquerade=yes\n{extra}"),
        );
        let outside = Outside::make(&format!("okvmh-out{n}"), &format!("okvmh-o{n}"));
        let before = snapshot(None, &[&conf.bridge]);
        Lab {
            sb,
            conf,
            before,
            _outside: outside,
            _ns: ns,
        }
    }

    /// Deletes the containers and checks that no tap, guard or lease is
    /// left (the bridge and its policy table stay, as they do on a host).
    fn finish(&self, ids: &[&String]) {
        for id in ids {
            self.sb.invoke(&["delete", "--force", id]).assert_success();
        }
        assert_eq!(snapshot(None, &[&self.conf.bridge]), self.before);
        assert_eq!(self.conf.leases(), vec![]);
    }
}

/// Starts a guest and returns its id, bundle and address.
fn guest(
    sb: &Sandbox,
    name: &str,
    script: &str,
    edit: impl FnOnce(&mut Value),
) -> (String, Bundle, Ipv4Addr) {
    let id = sb.new_id(name);
    let b = bundle_with(
        sb,
        name,
        &format!("ip -4 -o addr show eth0 | put addr; cat /sys/class/net/eth0/address | put mac; {script}"),
        edit,
    );
    sb.start_container(&id, &b);
    let addr = eth0_address(&marker(&b, "addr"));
    (id, b, addr)
}

/// A counter of the `Icmp:` lines of /proc/net/snmp (names, then values).
fn icmp_counter(snmp: &str, name: &str) -> u64 {
    let mut lines = snmp.lines().map(|l| l.split_whitespace().skip(1));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        panic!("not two Icmp: lines: {snmp:?}");
    };
    names
        .zip(values)
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {snmp:?}"))
}

fn mac_of(b: &Bundle) -> String {
    marker(b, "mac").trim().to_owned()
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn spoofing_guests_reach_nothing_and_the_honest_ones_are_unaffected() {
    let lab = Lab::new(0, &format!("host-allow=ping,tcp/{HOST_PORT}\n"));
    let (sb, conf) = (&lab.sb, &lab.conf);
    let host = HostServer::start(HOST_PORT);
    // Serving, but not in host-allow.
    let _not_allowed = HostServer::start(HOST_PORT + 1);
    let gw = conf.gateway;

    // The victim: an honest guest with a service.
    let (peer_id, peer_b, peer) = guest(
        sb,
        "peer",
        &format!("nc -ll -p {PEER_PORT} -e echo peer & sleep 600"),
        |_| {},
    );
    let peer_mac = mac_of(&peer_b);
    let probes = probe_functions(gw, peer);
    let spoofed_ip = Ipv4Addr::new(10, 131, 0, 200);

    let (honest_id, honest_b, honest) = guest(
        sb,
        "honest",
        &format!(
            "{probes} nc -ll -p {GUEST_PORT} -e echo honest & wait_for go; probe probe; \
             echo \"tcp-host-not-allowed $(tcp {gw} {})\" | put closed; sleep 600",
            HOST_PORT + 1
        ),
        |_| {},
    );
    // Takes the victim's MAC: what it sends would teach the bridge that the
    // victim lives on the attacker's port.
    let (mac_id, mac_b, _) = guest(
        sb,
        "mac",
        &format!(
            "{probes} probe before; ip link set dev eth0 address {peer_mac}; \
             cat /sys/class/net/eth0/address | put newmac; probe after; \
             while :; do ping -c 1 -W 1 {gw}; arping -c 1 -w 1 -I eth0 {gw}; done >/dev/null 2>&1"
        ),
        with_net_admin,
    );
    // Takes an address nobody leased.
    let (ip_id, ip_b, _) = guest(
        sb,
        "ip",
        &format!(
            "{probes} probe before; ip addr flush dev eth0; ip addr add {spoofed_ip}/24 dev eth0; \
             ip route add default via {gw}; ip -4 -o addr show eth0 | put newaddr; probe after; \
             while :; do ping -c 1 -W 1 {gw}; done >/dev/null 2>&1"
        ),
        with_net_admin,
    );
    // Claims the victim's address over ARP (gratuitous requests and
    // replies, and answering for it), and serves the victim's port itself.
    let (arp_id, arp_b, _) = guest(
        sb,
        "arp",
        &format!(
            "{probes} probe before; nc -ll -p {PEER_PORT} -e echo attacker & wait_for go; \
             ip addr add {peer}/32 dev eth0; \
             (while :; do arping -U -c 1 -I eth0 -s {peer} {peer}; \
                          arping -A -c 1 -I eth0 -s {peer} {peer}; sleep 0.3; done >/dev/null 2>&1 &); \
             sleep 5; \
             {{ echo \"ping-host-as-peer $(ok ping -c 1 -W 3 -I {peer} {gw})\"; \
                echo \"ping-outside-as-peer $(ok ping -c 1 -W 3 -I {peer} {OUTSIDE})\"; \
                echo \"ping-host-as-itself $(ok ping -c 1 -W 3 {gw})\"; }} | put after; sleep 600"
        ),
        with_net_admin,
    );

    // Each attacker reached everything while it played by the rules.
    for (name, b) in [("mac", &mac_b), ("ip", &ip_b), ("arp", &arp_b)] {
        assert_eq!(marker(b, "before"), REACH_ALL, "{name} before its attack");
    }
    // The host knows the victim before the ARP spoofing starts.
    assert_eq!(tcp_read(SocketAddr::from((peer, PEER_PORT))), "peer\n");
    ping(peer);
    arp_b.put_marker("go");

    assert_eq!(marker(&mac_b, "newmac").trim(), peer_mac);
    assert_eq!(
        marker(&mac_b, "after"),
        REACH_NOTHING,
        "with the victim's MAC"
    );
    assert_eq!(eth0_address(&marker(&ip_b, "newaddr")), spoofed_ip);
    assert_eq!(
        marker(&ip_b, "after"),
        REACH_NOTHING,
        "with an address of its own choosing"
    );
    assert_eq!(
        marker(&arp_b, "after"),
        "ping-host-as-peer fail\nping-outside-as-peer fail\nping-host-as-itself ok\n",
        "the ARP spoofer, as the victim and as itself"
    );

    // With all three still attacking: the victim is still the victim, for
    // the host, for the bridge and for an honest guest.
    for _ in 0..3 {
        assert_eq!(tcp_read(SocketAddr::from((peer, PEER_PORT))), "peer\n");
    }
    let (_, neigh) = sh(&format!("ip neigh show {peer} dev {}", conf.bridge));
    assert!(neigh.contains(&format!("lladdr {peer_mac}")), "{neigh}");
    let (_, neigh) = sh(&format!("ip neigh show {spoofed_ip}"));
    assert!(
        !neigh.contains("lladdr"),
        "the host learnt the spoofed address: {neigh}"
    );
    let peer_tap = okvm_tap_name(sb, &peer_id);
    let (_, fdb) = sh(&format!("bridge fdb show br {}", conf.bridge));
    for line in fdb.lines().filter(|l| l.contains(&peer_mac)) {
        assert!(
            line.contains(&format!("dev {peer_tap} ")),
            "the victim's MAC moved: {fdb}"
        );
    }
    assert!(
        !host.peers().contains(&spoofed_ip),
        "the host accepted a connection from the spoofed address"
    );
    honest_b.put_marker("go");
    assert_eq!(marker(&honest_b, "probe"), REACH_ALL, "the honest guest");
    assert_eq!(marker(&honest_b, "closed"), "tcp-host-not-allowed fail\n");
    assert_eq!(tcp_read(SocketAddr::from((honest, GUEST_PORT))), "honest\n");

    // One sandbox is SIGKILLed first: its guard goes all the same.
    kill_sandbox(sb, &mac_id);
    lab.finish(&[&peer_id, &honest_id, &mac_id, &ip_id, &arp_id]);
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn guests_reach_the_host_only_with_replies_and_dns_unless_allowed() {
    // The host is the guests' DNS server here; nothing else of it is allowed.
    let lab = Lab::new(1, "dns=10.132.0.1\n");
    let (sb, conf) = (&lab.sb, &lab.conf);
    let host = HostServer::start(HOST_PORT);
    let dns = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 53)).unwrap();
    dns.set_read_timeout(Some(LIMIT)).unwrap();
    let gw = conf.gateway;

    let (peer_id, _, peer) = guest(
        sb,
        "peer",
        &format!("nc -ll -p {PEER_PORT} -e echo peer & sleep 600"),
        |_| {},
    );
    // The bridge's IPv6 link-local address: IPv6 is not bridge mode's, so
    // a guest must not reach the host by it either.
    let (_, link_local) = sh(&format!(
        "for i in $(seq 100); do a=$(ip -6 -o addr show dev {} scope link | awk '{{print $4}}' | cut -d/ -f1); \
         [ -n \"$a\" ] && echo $a && break; sleep 0.1; done",
        conf.bridge
    ));
    let link_local = link_local.trim();
    assert!(
        link_local.starts_with("fe80:"),
        "the bridge has no IPv6 link-local address: {link_local:?}"
    );
    let probes = probe_functions(gw, peer);
    let (id, b, addr) = guest(
        sb,
        "guest",
        &format!(
            "{probes} nc -ll -p {GUEST_PORT} -e echo guest & \
             {{ echo \"ping-host $(ok ping -c 1 -W 3 {gw})\"; \
                echo \"tcp-host $(tcp {gw} {HOST_PORT})\"; \
                echo \"tcp-host-elsewhere $(tcp {HOST_OUTSIDE} {HOST_PORT})\"; \
                echo \"tcp-peer $(tcp {peer} {PEER_PORT})\"; \
                echo \"tcp-outside $(tcp {OUTSIDE} {OUTSIDE_PORT})\"; \
                ip route add {peer}/32 via {gw}; \
                echo \"tcp-peer-through-host $(tcp {peer} {PEER_PORT})\"; }} | put probe; \
             ping6 -c 1 -W 3 -I eth0 {link_local}%eth0 2>&1 | put ping6; \
             timeout 5 nslookup okvm.test >/dev/null 2>&1; sleep 600"
        ),
        with_net_admin,
    );
    assert_eq!(
        marker(&b, "probe"),
        "ping-host fail\ntcp-host fail\ntcp-host-elsewhere fail\ntcp-peer peer\n\
         tcp-outside outside\ntcp-peer-through-host peer\n",
        "by default a guest reaches its peers and the outside, not the host"
    );
    // ping6 sent its request and heard nothing back.
    let ping6 = marker(&b, "ping6");
    assert!(
        ping6.contains("1 packets transmitted, 0 packets received"),
        "{ping6}"
    );
    assert_eq!(
        host.peers(),
        Vec::<Ipv4Addr>::new(),
        "the host accepted a guest's connection"
    );
    // DNS to the host is let through, and replies to the host's own
    // connections are.
    let mut query = [0u8; 512];
    let (_, from) = dns
        .recv_from(&mut query)
        .expect("the guest's DNS query never reached the host");
    assert_eq!(from.ip(), addr);
    assert_eq!(tcp_read(SocketAddr::from((addr, GUEST_PORT))), "guest\n");
    lab.finish(&[&peer_id, &id]);
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn guest_to_guest_off_keeps_guests_apart_even_through_the_host() {
    let lab = Lab::new(2, "guest-to-guest=no\nhost-allow=ping\n");
    let (sb, conf) = (&lab.sb, &lab.conf);
    let gw = conf.gateway;

    // Counts the pings that reach it: through the host, a guest's echo
    // request would arrive even though the reply cannot go back.
    let (peer_id, peer_b, peer) = guest(
        sb,
        "peer",
        &format!(
            "nc -ll -p {PEER_PORT} -e echo peer & nc -ll -p {GUEST_PORT} -e echo peer-for-host & \
             until [ -e /done ]; do sleep 0.2; done; grep '^Icmp:' /proc/net/snmp | put icmp; sleep 600"
        ),
        |_| {},
    );
    let probes = probe_functions(gw, peer);
    // Straight over the bridge, then through the host's routing.
    let (id, b, addr) = guest(
        sb,
        "guest",
        &format!(
            "{probes} nc -ll -p {GUEST_PORT} -e echo guest & \
             {{ echo \"ping-peer $(ok ping -c 1 -W 3 {peer})\"; \
                echo \"tcp-peer $(tcp {peer} {PEER_PORT})\"; \
                ip route add {peer}/32 via {gw}; \
                echo \"ping-peer-through-host $(ok ping -c 3 -W 3 {peer})\"; \
                echo \"tcp-peer-through-host $(tcp {peer} {PEER_PORT})\"; \
                echo \"ping-host $(ok ping -c 1 -W 3 {gw})\"; \
                echo \"tcp-outside $(tcp {OUTSIDE} {OUTSIDE_PORT})\"; }} | put probe; sleep 600"
        ),
        with_net_admin,
    );
    assert_eq!(
        marker(&b, "probe"),
        "ping-peer fail\ntcp-peer fail\nping-peer-through-host fail\ntcp-peer-through-host fail\n\
         ping-host ok\ntcp-outside outside\n"
    );
    peer_b.put_marker("done");
    assert_eq!(
        icmp_counter(&marker(&peer_b, "icmp"), "InEchos"),
        0,
        "a guest's ping reached the other guest"
    );
    // The host still reaches both, and the bridge says why they do not
    // reach each other.
    assert_eq!(tcp_read(SocketAddr::from((addr, GUEST_PORT))), "guest\n");
    assert_eq!(
        tcp_read(SocketAddr::from((peer, GUEST_PORT))),
        "peer-for-host\n"
    );
    for guest_id in [&peer_id, &id] {
        let tap = okvm_tap_name(sb, guest_id);
        let (ok, link) = sh(&format!("bridge -d link show dev {tap}"));
        assert!(ok && link.contains("isolated on"), "{link}");
    }
    lab.finish(&[&peer_id, &id]);
}
