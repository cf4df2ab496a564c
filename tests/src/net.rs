//! Driving bridge-mode guests through the `okvm` CLI inside the test host,
//! shared by okvm-tests' network suite and the integration crate's
//! hostile_guest suite: a network namespace per test, a private network.conf,
//! busybox bundles that leave markers, and what teardown must restore.

use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::oci::{state_pid, Bundle, HostProcess, Sandbox};

pub const LIMIT: Duration = Duration::from_secs(180);

/// A network namespace made for one test, which the test's thread (and so
/// every process it starts) lives in until it is dropped.
pub struct TestNetns {
    name: String,
    original: std::fs::File,
}

impl TestNetns {
    pub fn enter(name: &str) -> TestNetns {
        let original = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let _ = sh(&format!("ip netns del {name} 2>/dev/null"));
        assert!(
            sh(&format!(
                "ip netns add {name} && ip -n {name} link set lo up"
            ))
            .0
        );
        let ns = std::fs::File::open(format!("/run/netns/{name}")).unwrap();
        nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        TestNetns {
            name: name.into(),
            original,
        }
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = nix::sched::setns(self.original.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET);
        let _ = sh(&format!("ip netns del {}", self.name));
    }
}

/// Runs a shell script (in the calling thread's namespace); success and output.
pub fn sh(script: &str) -> (bool, String) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

/// A bridge-mode configuration private to one test: its own bridge, subnet
/// and lease file, named by `OKVM_NETWORK_CONF` for the okvm processes the
/// test starts, until it is dropped.
pub struct BridgeConf {
    pub leases: PathBuf,
    pub bridge: String,
    pub gateway: Ipv4Addr,
    _named: EnvFile,
}

/// A file of the test's work directory named by an environment variable for
/// the okvm processes the test starts, until dropped: a later test of the
/// same process must fall back to the defaults, not fail to read a file that
/// went with the earlier test's work directory. The tests run one at a time
/// (--test-threads=1).
pub struct EnvFile(&'static str);

impl EnvFile {
    pub fn write(sb: &Sandbox, var: &'static str, name: &str, text: &str) -> EnvFile {
        let path = sb.work_file(name);
        std::fs::write(&path, text).unwrap();
        std::env::set_var(var, &path);
        EnvFile(var)
    }
}

impl Drop for EnvFile {
    fn drop(&mut self) {
        std::env::remove_var(self.0);
    }
}

/// The host's policy (/etc/okvm/config.toml's keys) for one test, in a file
/// named by `OKVM_CONFIG`, until dropped.
pub fn host_policy(sb: &Sandbox, text: &str) -> EnvFile {
    EnvFile::write(sb, "OKVM_CONFIG", "config.toml", text)
}

impl BridgeConf {
    /// `extra`: more network.conf lines.
    pub fn install(sb: &Sandbox, bridge: &str, subnet: &str, extra: &str) -> BridgeConf {
        let leases = sb.work_file("leases");
        let named = EnvFile::write(
            sb,
            "OKVM_NETWORK_CONF",
            "network.conf",
            &format!(
                "bridge={bridge}\nsubnet={subnet}\nleases={}\ndns=192.0.2.53\n{extra}",
                leases.display()
            ),
        );
        let net: Ipv4Addr = subnet.split('/').next().unwrap().parse().unwrap();
        BridgeConf {
            leases,
            bridge: bridge.into(),
            gateway: Ipv4Addr::from(u32::from(net) + 1),
            _named: named,
        }
    }

    /// `ADDRESS OWNER` of every lease in the file.
    pub fn leases(&self) -> Vec<(Ipv4Addr, String)> {
        std::fs::read_to_string(&self.leases)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| {
                let mut f = l.split_whitespace();
                (
                    f.next().unwrap().parse().unwrap(),
                    f.next().unwrap().to_string(),
                )
            })
            .collect()
    }
}

/// What teardown must restore: links (name, kind, master), qdiscs, and, in
/// the calling thread's own namespace, okvm's nftables tables (a tap's
/// guard `netdev okvm-okt…`, a bridge's policy `ip okvm-<bridge>`).
pub fn snapshot(netns: Option<&str>, except: &[&str]) -> String {
    let n = netns.map(|n| format!("-n {n} ")).unwrap_or_default();
    let (ok, links) = sh(&format!("ip {n}-o link show | cut -d: -f2 | sort"));
    assert!(ok, "{links}");
    let (ok, qdiscs) = sh(&format!("tc {n}qdisc show | grep -v noqueue | sort"));
    assert!(ok, "{qdiscs}");
    let tables = match netns {
        None => okvm_tables(),
        Some(_) => Vec::new(),
    };
    links
        .lines()
        .chain(qdiscs.lines())
        .chain(tables.iter().map(String::as_str))
        .filter(|l| !except.iter().any(|e| l.contains(e)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// okvm's nftables tables in the calling thread's namespace, as `nft list
/// tables` names them.
pub fn okvm_tables() -> Vec<String> {
    let mut tables: Vec<String> = cni_free_net::filter::tables()
        .expect("cannot list the nftables tables")
        .into_iter()
        .filter(|t| t.contains(" okvm-"))
        .collect();
    tables.sort();
    tables
}

/// A busybox bundle running `script`, whose markers are written with
/// `... | put NAME` (complete when they appear: a slow guest may otherwise be
/// caught between creating a file and writing it), with ping's capability.
pub fn bundle_with(
    sb: &Sandbox,
    name: &str,
    script: &str,
    edit: impl FnOnce(&mut Value),
) -> Bundle {
    let script = format!("put() {{ cat > /$1.tmp && mv /$1.tmp /$1; }}; {script}");
    let b = sb.bundle(name, &["sh", "-c", &script]);
    let mut config: Value =
        serde_json::from_slice(&std::fs::read(b.path().join("config.json")).unwrap()).unwrap();
    config["annotations"] = json!({ "io.okvm.memory_mib": "128" });
    for set in ["bounding", "effective", "permitted"] {
        config["process"]["capabilities"][set]
            .as_array_mut()
            .unwrap()
            .push(json!("CAP_NET_RAW"));
    }
    edit(&mut config);
    b.write_config(&config);
    b
}

/// Waits for `/<name>` in the container's rootfs, longer than the harness's
/// default: several guests may be booting at once.
#[track_caller]
pub fn marker(b: &Bundle, name: &str) -> String {
    let deadline = Instant::now() + LIMIT;
    while !b.has_marker(name) {
        assert!(Instant::now() < deadline, "no /{name} within {LIMIT:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::fs::read_to_string(b.rootfs().join(name)).unwrap()
}

/// The IPv4 address in `ip -4 -o addr show eth0` output.
pub fn eth0_address(ip_output: &str) -> Ipv4Addr {
    let word = ip_output
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap_or_else(|| panic!("no inet address in {ip_output:?}"));
    word.split('/').next().unwrap().parse().unwrap()
}

/// Connects to `addr` (retrying while the guest's server starts) and reads
/// what it sends until it closes.
pub fn tcp_read(addr: SocketAddr) -> String {
    let deadline = Instant::now() + LIMIT;
    loop {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(mut s) => {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut got = String::new();
                let _ = s.read_to_string(&mut got);
                return got;
            }
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot connect to {addr}: {e}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}

pub fn ping(addr: Ipv4Addr) {
    let (ok, out) = sh(&format!("busybox ping -c 1 -W 10 {addr}"));
    assert!(ok, "ping {addr}: {out}");
}

/// SIGKILLs the sandbox process of `id`, as a crash would, and waits until
/// it is gone: the signal is delivered at once, but a VMM takes a moment to
/// exit, and until it has, `delete` (without --force) rightly says the
/// container is running.
pub fn kill_sandbox(sb: &Sandbox, id: &str) {
    let pid = state_pid(&sb.state(id));
    let sandbox = HostProcess::find(pid).expect("the sandbox process is running");
    assert!(sh(&format!("kill -9 {pid}")).0);
    sandbox.wait_gone();
}

/// The bridge-mode tap okvm made for `id`, from its record.
pub fn okvm_tap_name(sb: &Sandbox, id: &str) -> String {
    let record: Value =
        serde_json::from_slice(&std::fs::read(sb.root().join(id).join("net.json")).unwrap())
            .unwrap();
    record["tap"].as_str().unwrap().to_string()
}
