//! The sandboxes' networks (docs/networking.md), driven through the `okvm` CLI
//! inside the test host (`integration/run-suite okvm-tests:network`), each test
//! in network namespaces it makes itself: bridge mode (host ↔ guest and guest ↔
//! guest, ping and TCP; out through masquerade; 20 concurrent creates; a dead sandbox's lease
//! reclaimed), mirror mode on an engine-like namespace with a veth, loopback
//! only, and that teardown leaves links, qdiscs, leases and okvm's nftables
//! tables as they were. What a hostile bridge-mode guest cannot do is
//! okvm-integration's hostile_guest suite (its `bridge` module).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsFd;
use std::time::Duration;

use okvm_tests::net::*;
use okvm_tests::oci::{run_to_files, Bundle, Sandbox};
use serde_json::json;

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn bridge_guests_reach_the_host_and_each_other_over_ping_and_tcp() {
    let _ns = TestNetns::enter("okvmt-bridge");
    let sb = Sandbox::new();
    // By default guests reach the host only with replies (docs/networking.md);
    // b2 pings the bridge, so ping is allowed here.
    let conf = BridgeConf::install(
        &sb,
        "okvmt0",
        "10.123.0.0/24",
        "masquerade=yes\nhost-allow=ping\n",
    );
    // An outside network behind the host with no route back to the subnet:
    // only masquerade (masquerade=yes above) lets a guest's TCP through.
    let outside = "okvmt-outside";
    let (ok, out) = sh(&format!(
        "ip netns del {outside} 2>/dev/null; ip netns add {outside} && \
         ip link add okvmt-o type veth peer name eth0 netns {outside} && \
         ip addr add 198.51.100.1/24 dev okvmt-o && ip link set okvmt-o up && \
         ip -n {outside} addr add 198.51.100.2/24 dev eth0 && ip -n {outside} link set eth0 up && \
         (ip netns exec {outside} sh -c 'echo outside-tcp | busybox nc -l -p 7003' >/dev/null 2>&1 &)"
    ));
    assert!(ok, "{out}");
    let before = snapshot(None, &[&conf.bridge]);

    let id1 = sb.new_id("b1");
    let b1 = bundle_with(
        &sb,
        "b1",
        "ip -4 -o addr show eth0 | put addr; cat /etc/resolv.conf | put resolv; \
         (echo host-tcp | nc -l -p 7001 &); echo guest-tcp | nc -l -p 7000; sleep 600",
        |_| {},
    );
    sb.start_container(&id1, &b1);
    let addr1 = eth0_address(&marker(&b1, "addr"));
    assert_eq!(marker(&b1, "resolv"), "nameserver 192.0.2.53\n");

    let id2 = sb.new_id("b2");
    let b2 = bundle_with(
        &sb,
        "b2",
        &format!(
            "ip -4 -o addr show eth0 | put addr; {{ ping -c 1 -W 10 {} 2>&1 && echo ok; }} | put ping-gw; \
             nc -w 30 {addr1} 7000 | put from-b1; nc -w 30 198.51.100.2 7003 | put outside; sleep 600",
            conf.gateway
        ),
        |_| {},
    );
    sb.start_container(&id2, &b2);
    let addr2 = eth0_address(&marker(&b2, "addr"));
    assert_ne!(addr1, addr2);

    // guest → host (the bridge), guest → guest over TCP, host → guests.
    let ping_gw = marker(&b2, "ping-gw");
    assert!(ping_gw.ends_with("ok\n"), "{ping_gw}");
    assert_eq!(marker(&b2, "from-b1"), "guest-tcp\n");
    assert_eq!(marker(&b2, "outside"), "outside-tcp\n");
    ping(addr1);
    ping(addr2);
    assert_eq!(tcp_read(SocketAddr::from((addr1, 7001))), "host-tcp\n");

    // The lease file says who has which address.
    let mut leases = conf.leases();
    leases.sort();
    let mut want = vec![(addr1, id1.clone()), (addr2, id2.clone())];
    want.sort();
    assert_eq!(leases, want);

    // Teardown: one normal, one after SIGKILL of the sandbox.
    kill_sandbox(&sb, &id2);
    for id in [&id1, &id2] {
        sb.invoke(&["delete", "--force", id]).assert_success();
    }
    assert_eq!(snapshot(None, &[&conf.bridge]), before);
    assert_eq!(conf.leases(), vec![]);
    let _ = sh(&format!("ip netns del {outside}"));
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn mirror_mode_gives_the_guest_the_engines_veth() {
    let _ns = TestNetns::enter("okvmt-host");
    let engine = "okvmt-engine";
    // What an engine makes: a namespace whose eth0 is a veth to the host side.
    let (ok, out) = sh(&format!(
        "ip netns del {engine} 2>/dev/null; ip netns add {engine} && \
         ip link add okvmt-h type veth peer name eth0 netns {engine} && \
         ip addr add 10.124.0.1/24 dev okvmt-h && ip link set okvmt-h up && \
         ip -n {engine} link set lo up && ip -n {engine} link set eth0 mtu 1400 up && \
         ip -n {engine} addr add 10.124.0.2/24 dev eth0 && \
         ip -n {engine} route add default via 10.124.0.1"
    ));
    assert!(ok, "{out}");
    let engine_mac = sh(&format!(
        "ip netns exec {engine} cat /sys/class/net/eth0/address"
    ))
    .1;
    let before = snapshot(Some(engine), &[]);

    let sb = Sandbox::new();
    let id = sb.new_id("mirror");
    let b = bundle_with(
        &sb,
        "mirror",
        "ip -4 -o addr show eth0 | put addr; cat /sys/class/net/eth0/address | put mac; \
         cat /sys/class/net/eth0/mtu | put mtu; ip route | put route; \
         { ping -c 1 -W 10 10.124.0.1 2>&1 && echo ok; } | put ping; \
         echo mirrored | nc -l -p 7002; sleep 600",
        |c| {
            c["linux"]["namespaces"] = json!([
                { "type": "pid" }, { "type": "ipc" }, { "type": "uts" }, { "type": "mount" },
                { "type": "network", "path": format!("/run/netns/{engine}") }
            ])
        },
    );
    sb.start_container(&id, &b);
    assert_eq!(
        eth0_address(&marker(&b, "addr")),
        Ipv4Addr::new(10, 124, 0, 2)
    );
    assert_eq!(marker(&b, "mac"), engine_mac);
    assert_eq!(marker(&b, "mtu"), "1400\n");
    assert!(
        marker(&b, "route").contains("default via 10.124.0.1"),
        "{}",
        marker(&b, "route")
    );
    let ping_engine = marker(&b, "ping");
    assert!(ping_engine.ends_with("ok\n"), "{ping_engine}");
    ping(Ipv4Addr::new(10, 124, 0, 2));
    assert_eq!(
        tcp_read(SocketAddr::from(([10, 124, 0, 2], 7002))),
        "mirrored\n"
    );

    // The tap and the tc state are in the engine's namespace while it runs,
    // and gone after SIGKILL of the sandbox and delete.
    let during = snapshot(Some(engine), &[]);
    assert!(during.contains("okvm-tap0"), "{during}");
    assert!(during.contains("ingress"), "{during}");
    kill_sandbox(&sb, &id);
    sb.invoke(&["delete", &id]).assert_success();
    assert_eq!(snapshot(Some(engine), &[]), before);
    let _ = sh(&format!("ip netns del {engine}"));
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn loopback_only_namespaces_and_network_none_give_the_guest_only_lo() {
    let _ns = TestNetns::enter("okvmt-lo");
    let engine = "okvmt-empty";
    assert!(
        sh(&format!(
            "ip netns del {engine} 2>/dev/null; ip netns add {engine}"
        ))
        .0
    );
    let sb = Sandbox::new();
    let script = "ls /sys/class/net | put nets; { ping -c 1 -W 5 127.0.0.1 >/dev/null && echo up || echo down; } | put lo; sleep 600";
    let by_namespace = bundle_with(&sb, "lo-ns", script, |c| {
        c["linux"]["namespaces"] = json!([
            { "type": "pid" }, { "type": "mount" },
            { "type": "network", "path": format!("/run/netns/{engine}") }
        ])
    });
    let by_annotation = bundle_with(&sb, "lo-none", script, |c| {
        c["annotations"]["io.okvm.network"] = json!("none")
    });
    // Where a VM's network comes from is the host's to decide: by default
    // (an empty config.toml) the annotation is refused.
    let defaults = host_policy(&sb, "");
    let refused = sb.new_id("lo-refused");
    sb.create(&refused, by_annotation.path(), &[])
        .assert_failure_with_message()
        .assert_stderr_mentions_any(&["annotation io.okvm.network is not allowed"]);
    assert!(sb.state_entries_for(&refused).is_empty());
    drop(defaults);
    let _policy = host_policy(
        &sb,
        r#"enable_annotations = ["io.okvm.network", "io.okvm.memory_mib"]"#,
    );
    for (name, b) in [("lo-ns", &by_namespace), ("lo-none", &by_annotation)] {
        let id = sb.new_id(name);
        sb.start_container(&id, b);
        assert_eq!(marker(b, "nets"), "lo\n", "{name}");
        assert_eq!(marker(b, "lo"), "up\n", "{name}");
        sb.invoke(&["delete", "--force", &id]).assert_success();
    }
    let _ = sh(&format!("ip netns del {engine}"));
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn twenty_concurrent_creates_get_distinct_addresses_and_leave_nothing() {
    let _ns = TestNetns::enter("okvmt-many");
    let sb = Sandbox::new();
    let conf = BridgeConf::install(&sb, "okvmt1", "10.125.0.0/24", "");
    let before = snapshot(None, &[&conf.bridge]);
    let bundles: Vec<(String, Bundle)> = (0..20)
        .map(|i| {
            let name = format!("many{i}");
            let b = bundle_with(
                &sb,
                &name,
                "ip -4 -o addr show eth0 | put addr; sleep 600",
                |_| {},
            );
            (sb.new_id(&name), b)
        })
        .collect();
    // The namespace is per thread: every creating thread joins it too.
    let netns = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
    // Twenty guests booting at once on the test host's two emulated CPUs take
    // minutes; the point here is the addresses, not the boot time.
    let boot_limit = Duration::from_secs(1200);
    std::thread::scope(|s| {
        for (id, b) in &bundles {
            let mut create = sb.command();
            create.env("OKVM_BOOT_TIMEOUT", boot_limit.as_secs().to_string());
            create.arg("create").arg("--bundle").arg(b.path()).arg(id);
            let stem = sb.work_file(&format!("create-{id}"));
            let netns = &netns;
            s.spawn(move || {
                nix::sched::setns(netns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                run_to_files(&mut create, &stem, boot_limit).assert_success();
            });
        }
    });
    let mut seen = Vec::new();
    for (id, b) in &bundles {
        sb.invoke(&["start", id]).assert_success();
        let addr = eth0_address(&marker(b, "addr"));
        assert!(!seen.contains(&addr), "{addr} handed out twice");
        seen.push(addr);
    }
    let mut leased: Vec<Ipv4Addr> = conf.leases().into_iter().map(|(a, _)| a).collect();
    leased.sort();
    seen.sort();
    assert_eq!(leased, seen);
    for (i, (id, _)) in bundles.iter().enumerate() {
        if i % 2 == 0 {
            kill_sandbox(&sb, id);
        }
        sb.invoke(&["delete", "--force", id]).assert_success();
    }
    assert_eq!(snapshot(None, &[&conf.bridge]), before);
    assert_eq!(conf.leases(), vec![]);
}

#[test]
#[ignore = "boots VMs: inside the test host with OKVM_CONFORMANCE_RUNTIME=okvm"]
fn the_lease_of_a_sandbox_that_died_without_delete_is_reclaimed() {
    let _ns = TestNetns::enter("okvmt-reclaim");
    let sb = Sandbox::new();
    // A /30 has room for exactly one guest.
    let conf = BridgeConf::install(&sb, "okvmt2", "10.126.0.0/30", "");
    let first = sb.new_id("first");
    let b1 = bundle_with(&sb, "first", "sleep 600", |_| {});
    sb.create(&first, b1.path(), &[]).assert_success();
    assert_eq!(conf.leases().len(), 1);
    // The sandbox dies and its state is lost (as with a host crash and /run).
    kill_sandbox(&sb, &first);
    let tap = okvm_tap_name(&sb, &first);
    std::fs::remove_dir_all(sb.root().join(&first)).unwrap();

    let second = sb.new_id("second");
    let b2 = bundle_with(&sb, "second", "sleep 600", |_| {});
    sb.create(&second, b2.path(), &[]).assert_success();
    let leases = conf.leases();
    assert_eq!(leases.len(), 1);
    assert_eq!(leases[0].1, second);
    sb.invoke(&["delete", "--force", &second]).assert_success();
    // What the lost state directory would have removed.
    let _ = sh(&format!("ip link del {tap}"));
    cni_free_net::filter::TapGuard::remove(&cni_free_net::IfName::new(&tap).unwrap()).unwrap();
}
