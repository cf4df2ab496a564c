//! The sandbox's network (docs/networking.md): which mode a bundle asks for,
//! setting it up in the sandbox before the VM boots, and tearing it down at
//! `delete`, also after the sandbox process was killed.
//!
//! - **Mirror**: the engine made a network namespace with a veth in it
//!   (podman/netavark, CNI, CRI). The sandbox joins that namespace, makes a
//!   tap, and tc mirrors the two into each other; the guest's NIC takes the
//!   veth's MAC, addresses and routes, so the engine's port forwarding and
//!   peers see the container where they expect it.
//! - **Bridge**: no namespace path (plain `ctr run`) or `io.okvm.network=bridge`.
//!   The tap joins the host's okvm bridge ([`conf::Conf`]) through the attach
//!   rules, and the guest gets an address from the per-host lease file. The
//!   tap is guarded (the guest sends only from its own MAC and address) and
//!   the bridge's policy says what guests reach on the host and of each
//!   other ([`cni_free_net::filter`]).
//! - **Loopback**: the engine's namespace has only `lo` (`--network none`), or
//!   `io.okvm.network=none`: the guest gets no NIC.
//!
//! Everything made on the host is written to `net.json` in the state
//! directory *before* it is made, so `delete` can undo it whatever happened.

pub mod conf;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cni_free_net::filter::{BridgePolicy, TapGuard};
use cni_free_net::netlink::{self, Handle};
use cni_free_net::{Allocator, IfName, InterfaceConfig, IpCidr, Route};
use nix::sched::CloneFlags;
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use serde::{Deserialize, Serialize};

pub use conf::Conf;

/// Overrides the mode: `bridge` or `none`.
pub const ANNOTATION_NETWORK: &str = "io.okvm.network";
/// Set by podman (libpod) on every container it creates.
const ANNOTATION_MANAGER: &str = "io.container.manager";
/// What `net.json` in the state directory is called.
const RECORD: &str = "net.json";
/// The tap's name inside an engine's namespace (which holds only this sandbox).
const MIRROR_TAP: &str = "okvm-tap0";

/// Where the bundle says the container's network comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Inside the engine's namespace at this path: mirror its veth, or only
    /// loopback when there is none.
    Engine(PathBuf),
    Bridge,
    Loopback,
}

impl Mode {
    /// The mode for `spec`; a bad annotation value is an error.
    pub fn of(spec: &Spec) -> anyhow::Result<Mode> {
        match annotations_get(spec, ANNOTATION_NETWORK).as_deref() {
            Some("bridge") => return Ok(Mode::Bridge),
            Some("none") => return Ok(Mode::Loopback),
            Some(other) => bail!(
                "annotation {ANNOTATION_NETWORK}={other:?} is not one of \"bridge\", \"none\""
            ),
            None => {}
        }
        let netns = spec
            .linux()
            .as_ref()
            .and_then(|l| l.namespaces().as_ref())
            .and_then(|ns| ns.iter().find(|n| n.typ() == LinuxNamespaceType::Network));
        let by_podman = annotations_get(spec, ANNOTATION_MANAGER).as_deref() == Some("libpod");
        Ok(match netns.map(|n| n.path().clone()) {
            Some(Some(path)) => Mode::Engine(path),
            // podman networks a container by handing in a namespace; a new,
            // empty one is its `--network none`.
            Some(None) if by_podman => Mode::Loopback,
            // Otherwise (plain `ctr run`) a new namespace means "no network
            // was set up for me", and no entry at all means the host's stack,
            // which a VM cannot share: both get the okvm bridge.
            Some(None) | None => Mode::Bridge,
        })
    }
}

fn annotations_get(spec: &Spec, key: &str) -> Option<String> {
    spec.annotations()
        .as_ref()
        .and_then(|a| a.get(key).cloned())
}

/// What was made on the host for one sandbox, so that it can be undone.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The engine's namespace the tap and tc state live in (mirror mode);
    /// None for the namespace `okvm` runs in.
    pub netns: Option<PathBuf>,
    pub tap: Option<String>,
    /// The tap has an anti-spoofing guard (nftables table `netdev okvm-<tap>`).
    #[serde(default)]
    pub guard: bool,
    /// The engine's veth that mirrors the tap.
    pub veth: Option<String>,
    /// The lease file, its subnet, and the owner holding an address in it.
    pub leases: Option<PathBuf>,
    pub subnet: Option<String>,
    pub owner: Option<String>,
}

impl Record {
    fn save(&self, dir: &Path) -> anyhow::Result<()> {
        let path = dir.join(RECORD);
        std::fs::write(&path, serde_json::to_vec(self)?)
            .with_context(|| format!("cannot write {}", path.display()))
    }

    fn load(dir: &Path) -> Option<Record> {
        let bytes = std::fs::read(dir.join(RECORD)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }
}

/// What the sandbox hands on: the VM's NIC and the guest's settings.
#[derive(Debug, Default)]
pub struct Setup {
    pub nic: Option<okvm_vmm::vm::NetConfig>,
    pub guest: Vec<InterfaceConfig>,
    /// A resolv.conf for a container whose engine gave none (bridge mode).
    pub resolv_conf: Option<PathBuf>,
}

/// Sets up the network of sandbox `id` (state directory `dir`). Must run before
/// the sandbox starts threads: in mirror mode the whole process joins the
/// engine's namespace, so that the VMM opens its tap there.
pub fn setup(mode: &Mode, id: &str, dir: &Path) -> anyhow::Result<Setup> {
    match mode {
        Mode::Loopback => Ok(Setup::default()),
        Mode::Engine(netns) => {
            let ns = File::open(netns)
                .with_context(|| format!("cannot open network namespace {}", netns.display()))?;
            nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("cannot join network namespace {}", netns.display()))?;
            mirror(netns, dir)
        }
        Mode::Bridge => bridge(id, dir),
    }
}

/// Mirror mode, already inside the engine's namespace.
fn mirror(netns: &Path, dir: &Path) -> anyhow::Result<Setup> {
    let mut h = Handle::open()?;
    let links: Vec<_> = h
        .links()?
        .into_iter()
        .filter(|l| l.name != "lo" && l.name != MIRROR_TAP)
        .collect();
    let Some(veth) = links.first() else {
        // --network none: the namespace has only loopback.
        return Ok(Setup::default());
    };
    if links.len() > 1 {
        log::warn!(
            "network namespace {} has {} interfaces; only {} reaches the guest",
            netns.display(),
            links.len(),
            veth.name
        );
    }
    let config = netlink::describe(&mut h, &veth.name)?;
    Record {
        netns: Some(netns.to_path_buf()),
        tap: Some(MIRROR_TAP.into()),
        veth: Some(veth.name.clone()),
        ..Record::default()
    }
    .save(dir)?;
    let tap = make_tap(&mut h, MIRROR_TAP, config.mtu)?;
    netlink::mirror(&mut h, veth.index, tap)?;
    Ok(Setup {
        nic: Some(okvm_vmm::vm::NetConfig {
            tap: MIRROR_TAP.into(),
            mac: config.mac,
        }),
        guest: vec![config],
        resolv_conf: None,
    })
}

/// Bridge mode, in the namespace okvm runs in.
fn bridge(id: &str, dir: &Path) -> anyhow::Result<Setup> {
    let conf = Conf::load()?;
    let tap = tap_name(id);
    let rules = conf.rules()?;
    let Some(bridge) = rules.bridge_for(&tap).map(str::to_owned) else {
        bail!(
            "no rule in {} attaches {tap} to a bridge",
            conf.rules_path().display()
        );
    };
    let allocator = Allocator::open(&conf.leases, conf.subnet)?;
    Record {
        tap: Some(tap.clone()),
        guard: true,
        leases: Some(conf.leases.clone()),
        subnet: Some(conf.subnet.to_string()),
        owner: Some(id.to_owned()),
        ..Record::default()
    }
    .save(dir)?;
    // Leases of sandboxes that died without a delete are free again.
    for (addr, lease) in allocator.reclaim_dead()? {
        log::info!(
            "reclaimed {addr} from {} (process {} is gone)",
            lease.owner,
            lease.pid
        );
    }
    let addr = allocator.allocate(id)?;
    let gateway = conf.subnet.gateway();
    let mut h = Handle::open()?;
    if bridge == conf.bridge {
        netlink::ensure_bridge(
            &mut h,
            &conf.bridge,
            IpCidr::new(gateway.into(), conf.subnet.prefix_len()),
        )?;
    }
    // A bridge of the user's own (another rule's) must exist already.
    let Some(bridge_link) = h.link_by_name(&bridge)? else {
        bail!(
            "bridge {bridge} (from {}) does not exist",
            conf.rules_path().display()
        );
    };
    let dns = conf.guest_dns();
    BridgePolicy {
        bridge: IfName::new(&bridge)?,
        subnet: conf.subnet,
        host_allow: conf.host_allow.clone(),
        dns: dns
            .servers
            .iter()
            .filter_map(|a| match a {
                IpAddr::V4(v4) => Some(*v4),
                IpAddr::V6(_) => None,
            })
            .collect(),
        guest_to_guest: conf.guest_to_guest,
        masquerade: conf.masquerade,
    }
    .apply()?;
    let (bridge_index, mtu) = (bridge_link.index, bridge_link.mtu);
    let tap_index = make_tap(&mut h, &tap, mtu)?;
    let mac = guest_mac(id);
    // Guarded before it joins the bridge: no frame of the guest's is ever
    // bridged unchecked.
    guard(&tap, mac, addr)?;
    h.set_master(tap_index, Some(bridge_index))?;
    if !conf.guest_to_guest {
        h.set_port_isolated(tap_index, true)?;
    }
    let guest = InterfaceConfig {
        mac,
        mtu,
        addresses: vec![IpCidr::new(addr.into(), conf.subnet.prefix_len())],
        routes: vec![Route {
            destination: None,
            gateway: Some(IpAddr::V4(gateway)),
        }],
    };
    let resolv = dir.join("resolv.conf");
    std::fs::write(&resolv, dns.resolv_conf)
        .with_context(|| format!("cannot write {}", resolv.display()))?;
    Ok(Setup {
        nic: Some(okvm_vmm::vm::NetConfig { tap, mac }),
        guest: vec![guest],
        resolv_conf: Some(resolv),
    })
}

fn guard(tap: &str, mac: [u8; 6], addr: Ipv4Addr) -> anyhow::Result<()> {
    TapGuard {
        tap: IfName::new(tap)?,
        mac,
        addr,
    }
    .install()?;
    Ok(())
}

/// A persistent tap, owned by the networking layer (the VMM only attaches
/// to it), with the MTU of the link it joins, up.
fn make_tap(h: &mut Handle, name: &str, mtu: u32) -> anyhow::Result<u32> {
    let ifname = IfName::new(name)?;
    netlink::create_persistent_tap(&ifname)?;
    let Some(link) = h.link_by_name(name)? else {
        bail!("tap {name} vanished right after it was made");
    };
    h.set_mtu(link.index, mtu)?;
    h.set_up(link.index)?;
    Ok(link.index)
}

/// Undoes what [`setup`] recorded in `dir`. Best effort and idempotent: what
/// is already gone (the engine removed its namespace, a retried delete) is fine.
pub fn teardown(dir: &Path) {
    let Some(record) = Record::load(dir) else {
        return;
    };
    if let (Some(leases), Some(subnet), Some(owner)) =
        (&record.leases, &record.subnet, &record.owner)
    {
        let released = subnet
            .parse()
            .map_err(anyhow::Error::from)
            .and_then(|subnet| Ok(Allocator::open(leases, subnet)?.release(owner)?));
        if let Err(e) = released {
            log::warn!("cannot release the address of {owner}: {e:#}");
        }
    }
    let guarded_tap = record.tap.clone().filter(|_| record.guard);
    let links = move || -> anyhow::Result<()> {
        if let Some(netns) = &record.netns {
            let Ok(ns) = File::open(netns) else {
                return Ok(()); // the engine removed it, and everything in it
            };
            nix::sched::setns(ns.as_fd(), CloneFlags::CLONE_NEWNET)?;
        }
        let mut h = Handle::open()?;
        let veth = match &record.veth {
            Some(v) => h.link_by_name(v)?,
            None => None,
        };
        let tap = match &record.tap {
            Some(t) => h.link_by_name(t)?,
            None => None,
        };
        if let (Some(veth), Some(tap)) = (&veth, &tap) {
            netlink::unmirror(&mut h, veth.index, tap.index)?;
        } else if let Some(veth) = &veth {
            h.delete_ingress_qdisc(veth.index).ok();
        }
        if let Some(tap) = tap {
            h.delete_link(tap.index)?;
        }
        Ok(())
    };
    // A thread of its own: joining the engine's namespace must not move the
    // rest of `delete`.
    match std::thread::spawn(links).join() {
        Ok(Ok(())) => {}
        Ok(Err(e)) => log::warn!("cannot remove the sandbox's network: {e:#}"),
        Err(_) => log::warn!("cannot remove the sandbox's network: the thread panicked"),
    }
    // After the tap: a guest's frames are never bridged unguarded. Bridge
    // mode only, so in this namespace.
    if let Some(tap) = guarded_tap {
        let removed = IfName::new(&tap)
            .map_err(anyhow::Error::from)
            .and_then(|tap| Ok(TapGuard::remove(&tap)?));
        if let Err(e) = removed {
            log::warn!("cannot remove the anti-spoofing guard of {tap}: {e:#}");
        }
    }
}

/// The host-unique tap name of sandbox `id` in bridge mode: `okt` and 12 hex
/// digits of a hash of the id (interface names are at most 15 bytes).
pub fn tap_name(id: &str) -> String {
    format!("okt{:012x}", fnv1a(id) & 0xffff_ffff_ffff)
}

/// A locally administered, unicast MAC derived from the id, stable across
/// restarts of the same container.
fn guest_mac(id: &str) -> [u8; 6] {
    let h = fnv1a(id).to_be_bytes();
    [0x02, h[3], h[4], h[5], h[6], h[7]]
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests;
