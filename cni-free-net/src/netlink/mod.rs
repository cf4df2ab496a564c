//! The host-side (and guest-side) netlink layer: links, addresses, routes and
//! tc, over a synchronous rtnetlink socket.
//!
//! # The model
//!
//! - **Taps belong to the networking layer.** [`create_persistent_tap`] makes
//!   a persistent tap with exactly the flags the VMM attaches with; the VMM
//!   only ever attaches to it, and teardown deletes it with
//!   [`Handle::delete_link`]. A tap therefore exists before its VM and is
//!   removed in one place, whatever happened to the VMM.
//! - **Engine networking: mirror the engine's veth.** Inside a namespace that
//!   podman, CNI or a CRI runtime prepared, the engine's veth keeps its MAC,
//!   addresses and routes, and every rule the engine made (port publishing,
//!   firewalling) keeps targeting it. [`mirror`] puts an ingress qdisc on the
//!   veth and on the tap and redirects whatever either receives to the other
//!   (Kata Containers' "tcfilter" model), and [`describe`] tells what the
//!   guest must configure on its NIC so that it takes the veth's place;
//!   guest-init applies that with [`configure`].
//! - **CNI-free networking: a bridge.** [`ensure_bridge`] makes the per-host
//!   bridge with its gateway address, idempotently and safely against
//!   concurrent okvm processes; the tap joins it with [`Handle::set_master`].
//!
//! # Why synchronous netlink
//!
//! The same code runs in okvm's short-lived CLI processes and inside the
//! guest's statically linked init, where an async runtime would be dead
//! weight; every operation here is one request and its answer. No `ip` or
//! `tc` binary is run: neither exists in the guest, and their output is not
//! an interface.
//!
//! A [`Handle`] acts on the network namespace of the thread that opened it;
//! to work in another namespace, open a handle on a thread that joined it.

mod config;
mod error;
mod handle;
mod tap;
mod tc;
mod wire;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv6Addr};

use netlink_packet_route::address::AddressHeaderFlags;

pub use config::{CidrParseError, InterfaceConfig, IpCidr, Route};
pub use error::{NetlinkError, Result};
pub(crate) use handle::format_mac;
pub use handle::{Handle, Link, RouteEntry, RTPROT_BOOT, RTPROT_KERNEL, RTPROT_RA};
pub use tap::{create_persistent_tap, TAP_FLAGS};
pub use tc::{Filter, Qdisc, INGRESS_HANDLE, INGRESS_PARENT};

/// fe80::/10: addresses every IPv6 interface makes for itself.
const IPV6_LINK_LOCAL: IpCidr =
    IpCidr::new(IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0)), 10);

/// Connects the engine's `veth` and the VM's `tap` both ways: what either
/// receives leaves by the other. An ingress qdisc already on one of them
/// (ingress or clsact) is used as it is.
///
/// A failure halfway leaves what was done; [`unmirror`] removes it.
pub fn mirror(h: &mut Handle, veth: u32, tap: u32) -> Result<()> {
    for index in [veth, tap] {
        match h.add_ingress_qdisc(index) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    h.redirect_ingress(veth, tap)?;
    h.redirect_ingress(tap, veth)
}

/// Undoes [`mirror`] by deleting both ingress qdiscs, filters included.
/// What is already gone (the link, or just its qdisc) is fine; both are
/// attempted even if the first fails.
pub fn unmirror(h: &mut Handle, veth: u32, tap: u32) -> Result<()> {
    let mut first_error = None;
    for index in [veth, tap] {
        match h.delete_ingress_qdisc(index) {
            Ok(()) => {}
            Err(e) if matches!(e.errno(), Some(libc::ENODEV | libc::ENOENT | libc::EINVAL)) => {}
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// What the guest must configure to take the place of interface `ifname`:
/// its MAC and MTU, its global addresses, and the routes leaving by it that
/// the guest's kernel will not make by itself.
pub fn describe(h: &mut Handle, ifname: &str) -> Result<InterfaceConfig> {
    let op = || format!("describe {ifname} for the guest");
    let link = h
        .link_by_name(ifname)?
        .ok_or_else(|| NetlinkError::NoSuchInterface {
            op: op(),
            name: ifname.to_owned(),
        })?;
    let mac = link
        .mac
        .filter(|m| *m != [0; 6])
        .ok_or_else(|| NetlinkError::Invalid {
            op: op(),
            reason: "it has no Ethernet address".to_owned(),
        })?;
    // Link-local IPv6 addresses derive from the MAC: the guest makes the
    // same one itself.
    let addresses = h
        .addresses(Some(link.index))?
        .into_iter()
        .map(|(_, a)| a)
        .filter(|a| !IPV6_LINK_LOCAL.contains(a.addr))
        .collect();
    let mut routes: Vec<_> = h
        .routes(Some(link.index))?
        .into_iter()
        // Connected routes come back with the addresses; routes learnt from
        // router advertisements the guest learns itself, as the
        // advertisements reach it through the mirror too.
        .filter(|r| (r.route.gateway.is_some() || !r.is_kernel_made()) && r.protocol != RTPROT_RA)
        .collect();
    // A Route carries no metric, so the guest can hold one route per
    // destination: keep the one the host prefers. The sort is stable, so
    // equal metrics keep the kernel's order.
    routes.sort_by_key(|r| r.metric);
    let mut seen = HashSet::new();
    routes.retain(|r| seen.insert((r.route.destination, r.route.is_ipv6())));
    Ok(InterfaceConfig {
        mac,
        mtu: link.mtu,
        addresses,
        routes: routes.into_iter().map(|r| r.route).collect(),
    })
}

/// The index of bridge `name`, creating it if needed, with address `gateway`
/// and up. Idempotent, and safe when other processes do the same at once.
pub fn ensure_bridge(h: &mut Handle, name: &str, gateway: IpCidr) -> Result<u32> {
    let index = match bridge_index(h, name)? {
        Some(index) => index,
        None => match h.add_bridge(name) {
            Ok(index) => index,
            // Another okvm made it between our look-up and our create.
            Err(e) if e.errno() == Some(libc::EEXIST) => {
                bridge_index(h, name)?.ok_or_else(|| NetlinkError::NoSuchInterface {
                    op: format!("create bridge {name}"),
                    name: name.to_owned(),
                })?
            }
            Err(e) => return Err(e),
        },
    };
    let has_gateway = h.addresses(Some(index))?.iter().any(|(_, a)| *a == gateway);
    if !has_gateway {
        match h.add_address(index, gateway) {
            Ok(()) => {}
            Err(e) if e.errno() == Some(libc::EEXIST) => {}
            Err(e) => return Err(e),
        }
    }
    h.set_up(index)?;
    Ok(index)
}

fn bridge_index(h: &mut Handle, name: &str) -> Result<Option<u32>> {
    match h.link_by_name(name)? {
        None => Ok(None),
        Some(link) if link.kind.as_deref() == Some("bridge") => Ok(Some(link.index)),
        Some(link) => Err(NetlinkError::Invalid {
            op: format!("use {name} as the bridge"),
            reason: match link.kind {
                Some(kind) => format!("it is a {kind} interface, not a bridge"),
                None => "it is not a bridge".to_owned(),
            },
        }),
    }
}

/// Brings loopback up, which also gives it 127.0.0.1 and ::1.
pub fn loopback_up(h: &mut Handle) -> Result<()> {
    let index = h.existing("lo", "bring lo up")?;
    h.set_up(index)
}

/// Makes interface `index` what `config` describes (its MAC is not changed:
/// it is how the guest found the interface): MTU, addresses, up, then the
/// routes. Idempotent: what is already there is left alone.
pub fn configure(h: &mut Handle, index: u32, config: &InterfaceConfig) -> Result<()> {
    h.set_mtu(index, config.mtu)?;
    let present = h.addresses(Some(index))?;
    for addr in &config.addresses {
        if present.iter().any(|(_, a)| a == addr) {
            continue;
        }
        // The address comes from the engine or from our allocator, which
        // keep it unique; DAD would only hold it tentative, unusable, for
        // the first second or so of the container's life.
        let flags = if addr.addr.is_ipv6() {
            AddressHeaderFlags::Nodad
        } else {
            AddressHeaderFlags::empty()
        };
        h.add_address_flags(index, *addr, flags)?;
    }
    // Routes need the link up (IPv6 refuses a gateway on a down link).
    h.set_up(index)?;
    let existing: Vec<Route> = h
        .routes(Some(index))?
        .into_iter()
        .map(|r| r.route)
        .collect();
    // On-link routes first: a gateway may be reachable only through one.
    let (onlink, via): (Vec<&Route>, Vec<&Route>) =
        config.routes.iter().partition(|r| r.gateway.is_none());
    for route in onlink.into_iter().chain(via) {
        if !existing.contains(route) {
            h.add_route(index, route)?;
        }
    }
    Ok(())
}
