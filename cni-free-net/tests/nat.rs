//! The optional masquerade against the real kernel, with real TCP: a "guest"
//! namespace on the subnet, a "host" namespace that routes (where okvm would
//! run), and an "outside" namespace with no route back to the subnet. The
//! outside can answer the guest only when the host masquerades, and then it
//! sees the host's address as the peer.
//!
//! Needs root (named namespaces, `ip`); without it the test says why and
//! passes without running.

use std::fs::File;
use std::io::{Read as _, Write as _};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::Command;
use std::time::Duration;

use cni_free_net::filter::policy::table_name;
use cni_free_net::filter::BridgePolicy;
use cni_free_net::{IfName, Ipv4Net};

const OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 2);
const HOST_OUTSIDE_ADDR: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 1);
const PORT: u16 = 7100;

fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// Three named namespaces wired guest — host — outside; removed on drop.
struct Topology {
    prefix: String,
}

impl Topology {
    fn make(prefix: &str) -> Topology {
        let t = Topology {
            prefix: prefix.into(),
        };
        t.remove();
        let (g, h, o) = (t.ns("g"), t.ns("h"), t.ns("o"));
        let (ok, out) = sh(&format!(
            "set -e; for n in {g} {h} {o}; do ip netns add $n; ip -n $n link set lo up; done
             ip -n {h} link add hg type veth peer name eth0 netns {g}
             ip -n {h} link add ho type veth peer name eth0 netns {o}
             ip -n {h} addr add 10.88.0.1/24 dev hg; ip -n {h} link set hg up
             ip -n {h} addr add {HOST_OUTSIDE_ADDR}/24 dev ho; ip -n {h} link set ho up
             ip -n {g} addr add 10.88.0.2/24 dev eth0; ip -n {g} link set eth0 up
             ip -n {g} route add default via 10.88.0.1
             ip -n {o} addr add {OUTSIDE_ADDR}/24 dev eth0; ip -n {o} link set eth0 up"
        ));
        assert!(ok, "{out}");
        t
    }

    fn ns(&self, which: &str) -> String {
        format!("{}-{which}", self.prefix)
    }

    fn remove(&self) {
        for n in ["g", "h", "o"] {
            let _ = sh(&format!("ip netns del {} 2>/dev/null", self.ns(n)));
        }
    }

    /// Runs `f` on a thread that has joined namespace `which`.
    fn on<T: Send + 'static>(&self, which: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
        let ns = File::open(format!("/run/netns/{}", self.ns(which))).unwrap();
        std::thread::spawn(move || {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// The guest connects to the outside: the peer address the outside saw and
    /// what came back, or None when the connection did not come up.
    fn guest_to_outside(&self) -> Option<(Ipv4Addr, String)> {
        let listener = self.on("o", || TcpListener::bind(("0.0.0.0", PORT)).unwrap());
        listener.set_nonblocking(true).unwrap();
        let connected = self.on("g", || {
            let s = TcpStream::connect_timeout(
                &SocketAddr::from((OUTSIDE_ADDR, PORT)),
                Duration::from_secs(2),
            )
            .ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            Some(s)
        });
        let mut stream = connected?;
        let (mut peer_side, peer) = listener.accept().expect("connected, so accepted");
        peer_side.set_nonblocking(false).unwrap();
        peer_side.write_all(b"hello from outside").unwrap();
        drop(peer_side);
        let mut got = String::new();
        stream.read_to_string(&mut got).unwrap();
        let SocketAddr::V4(peer) = peer else {
            panic!("IPv6 peer {peer}")
        };
        Some((*peer.ip(), got))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.remove();
    }
}

/// What `masquerade=yes` makes for `bridge`, with nothing else asked for.
fn ensure_masquerade(
    bridge: &IfName,
    subnet: Ipv4Net,
) -> Result<(), cni_free_net::filter::FilterError> {
    BridgePolicy {
        bridge: bridge.clone(),
        subnet,
        host_allow: vec![],
        dns: vec![],
        guest_to_guest: true,
        masquerade: true,
    }
    .apply()
}

fn missing_root() -> bool {
    if nix::unistd::Uid::effective().is_root() && sh("ip -V").0 {
        return false;
    }
    eprintln!("skipped: needs root and ip(8) for named network namespaces");
    true
}

#[test]
fn masquerade_lets_the_subnet_out_from_the_hosts_address_and_goes_away() {
    if missing_root() {
        return;
    }
    let t = Topology::make("okvm-nat");
    let bridge = IfName::new("okvmnat0").unwrap();
    let subnet: Ipv4Net = "10.88.0.0/24".parse().unwrap();
    t.on("h", || {
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").unwrap()
    });

    // Forwarded but not masqueraded: the outside has no route back.
    assert_eq!(t.guest_to_outside(), None);

    // Twice: the table is replaced, not stacked (one rule either way).
    for _ in 0..2 {
        let b = bridge.clone();
        t.on("h", move || ensure_masquerade(&b, subnet)).unwrap();
    }
    assert_eq!(
        t.guest_to_outside(),
        Some((HOST_OUTSIDE_ADDR, "hello from outside".into()))
    );
    let forwarding = t.on("h", || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
    });
    assert_eq!(forwarding.trim(), "1");

    let b = bridge.clone();
    t.on("h", move || BridgePolicy::remove(&b)).unwrap();
    assert_eq!(t.guest_to_outside(), None);
    // Removing what is not there is fine.
    let b = bridge.clone();
    t.on("h", move || BridgePolicy::remove(&b)).unwrap();
    assert_eq!(table_name(&bridge), "okvm-okvmnat0");
}

#[test]
fn ip_forwarding_is_turned_on_with_the_masquerade() {
    if missing_root() {
        return;
    }
    let t = Topology::make("okvm-fwd");
    let before = t.on("h", || {
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap()
    });
    assert_eq!(
        before.trim(),
        "0",
        "a new namespace starts without forwarding"
    );
    // Without forwarding, not even masquerade gets the guest out.
    assert_eq!(t.guest_to_outside(), None);
    let bridge = IfName::new("okvmnat1").unwrap();
    t.on("h", move || {
        ensure_masquerade(&bridge, "10.88.0.0/24".parse().unwrap())
    })
    .unwrap();
    assert_eq!(
        t.guest_to_outside().map(|(peer, _)| peer),
        Some(HOST_OUTSIDE_ADDR)
    );
}
