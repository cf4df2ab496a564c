//! [`Handle`]: one synchronous NETLINK_ROUTE socket and the link, address and
//! route requests okvm makes over it.

use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{
    NetlinkBuffer, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE,
    NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_EXCL, NLM_F_REQUEST,
};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::link::{
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute,
    LinkFlags, LinkInfo, LinkMessage,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use super::config::{IpCidr, Route};
use super::error::{Failure, NetlinkError, Result};
use super::wire;
use crate::ifname::IfName;

/// RTPROT_KERNEL: routes the kernel made itself, such as the connected route
/// of an address.
pub const RTPROT_KERNEL: u8 = 2;
/// RTPROT_BOOT: what `ip route add` and [`Handle::add_route`] mark routes with.
pub const RTPROT_BOOT: u8 = 3;
/// RTPROT_RA: routes learnt from IPv6 router advertisements.
pub const RTPROT_RA: u8 = 9;

/// How often a dump is retried when the kernel says it changed underway
/// (NLM_F_DUMP_INTR) before giving up.
const DUMP_ATTEMPTS: usize = 5;

/// A network interface as rtnetlink reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// None for interfaces without an Ethernet address (loopback has an
    /// all-zero one, which is reported as is).
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (IFF_UP), whether or not it has a carrier.
    pub up: bool,
    /// The rtnetlink kind (`veth`, `bridge`, `tun`, ...); None for physical
    /// devices and loopback.
    pub kind: Option<String>,
    /// The index of the bridge (or bond) it is a port of.
    pub master: Option<u32>,
    /// A bridge port whose frames the bridge forwards to no other isolated
    /// port ([`Handle::set_port_isolated`]).
    pub port_isolated: bool,
}

/// A route of the main table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteEntry {
    /// The interface it leaves by; None for multipath routes.
    pub oif: Option<u32>,
    pub route: Route,
    /// Who made it (RTPROT_*): [`RTPROT_KERNEL`] for the connected routes the
    /// kernel adds with an address.
    pub protocol: u8,
    /// RT_SCOPE_*: 0 (universe) for gateway routes, 253 (link) for on-link ones.
    pub scope: u8,
    pub metric: u32,
}

impl RouteEntry {
    /// Made by the kernel (a connected route, an IPv6 link-local prefix), so
    /// it reappears by itself wherever the same address is added.
    pub fn is_kernel_made(&self) -> bool {
        self.protocol == RTPROT_KERNEL
    }
}

/// A NETLINK_ROUTE socket, bound in the network namespace of the thread that
/// opened it: it keeps acting on that namespace even if the thread later
/// moves elsewhere.
///
/// Requests are synchronous, one at a time (hence `&mut self`); open one
/// handle per thread.
#[derive(Debug)]
pub struct Handle {
    socket: Socket,
    seq: u32,
}

impl Handle {
    pub fn open() -> Result<Self> {
        let socket_error = |action| move |error| NetlinkError::Socket { action, error };
        let mut socket = Socket::new(NETLINK_ROUTE).map_err(socket_error("open"))?;
        socket.bind_auto().map_err(socket_error("bind"))?;
        socket
            .connect(&SocketAddr::new(0, 0))
            .map_err(socket_error("connect"))?;
        // Best effort, as both are only refinements: extended acks give the
        // kernel's explanation of a refusal (Linux 4.12+), capped acks keep
        // it from echoing a whole request back (Linux 4.2+).
        let _ = socket.set_ext_ack(true);
        let _ = socket.set_cap_ack(true);
        Ok(Self { socket, seq: 0 })
    }

    // ---- links ----

    pub fn links(&mut self) -> Result<Vec<Link>> {
        self.dump_map(
            RouteNetlinkMessage::GetLink(LinkMessage::default()),
            || "list interfaces".to_owned(),
            link_of,
        )
    }

    /// The interface called `name`, or None if there is none.
    pub fn link_by_name(&mut self, name: &str) -> Result<Option<Link>> {
        IfName::new(name)?;
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        self.get_link(request)
            .map_err(|f| f.during(format!("look up interface {name}")))
    }

    /// The interface with index `index`, or None if there is none.
    pub fn link(&mut self, index: u32) -> Result<Option<Link>> {
        let mut request = LinkMessage::default();
        request.header.index = index;
        self.get_link(request)
            .map_err(|f| f.during(format!("look up interface #{index}")))
    }

    fn get_link(&mut self, request: LinkMessage) -> Result<Option<Link>, Failure> {
        match self.ack(RouteNetlinkMessage::GetLink(request), 0) {
            Ok(replies) => Ok(replies.into_iter().find_map(link_of)),
            Err(f) if f.errno() == Some(libc::ENODEV) => Ok(None),
            Err(f) => Err(f),
        }
    }

    /// How an interface is named in error messages: by name if it still has
    /// one, by index otherwise.
    pub(crate) fn name_of(&mut self, index: u32) -> String {
        match self.link(index) {
            Ok(Some(link)) => link.name,
            _ => format!("interface #{index}"),
        }
    }

    pub fn set_up(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, LinkFlags::Up, true, "up")
    }

    pub fn set_down(&mut self, index: u32) -> Result<()> {
        self.set_flag(index, LinkFlags::Up, false, "down")
    }

    fn set_flag(&mut self, index: u32, flag: LinkFlags, on: bool, what: &str) -> Result<()> {
        let mut request = LinkMessage::default();
        request.header.index = index;
        request.header.change_mask = flag;
        if on {
            request.header.flags = flag;
        }
        self.change_link(request, |name| format!("bring {name} {what}"))
    }

    pub fn set_mtu(&mut self, index: u32, mtu: u32) -> Result<()> {
        self.change_link(link_attr(index, LinkAttribute::Mtu(mtu)), |name| {
            format!("set the MTU of {name} to {mtu}")
        })
    }

    pub fn set_mac(&mut self, index: u32, mac: [u8; 6]) -> Result<()> {
        self.change_link(
            link_attr(index, LinkAttribute::Address(mac.to_vec())),
            |name| format!("set the MAC address of {name} to {}", format_mac(&mac)),
        )
    }

    /// Makes the interface a port of bridge `master`, or of nothing with None.
    pub fn set_master(&mut self, index: u32, master: Option<u32>) -> Result<()> {
        let request = link_attr(index, LinkAttribute::Controller(master.unwrap_or(0)));
        self.request(RouteNetlinkMessage::SetLink(request), 0, |h| {
            let name = h.name_of(index);
            match master {
                Some(m) => format!("attach {name} to {}", h.name_of(m)),
                None => format!("detach {name} from its bridge"),
            }
        })
    }

    /// Isolates bridge port `index` (IFLA_BRPORT_ISOLATED): the bridge
    /// forwards nothing between two isolated ports, while both still reach
    /// the bridge itself and the non-isolated ports.
    pub fn set_port_isolated(&mut self, index: u32, isolated: bool) -> Result<()> {
        // Port settings travel as the port's link info in a NEWLINK without
        // NLM_F_CREATE; SETLINK ignores them.
        let request = link_attr(
            index,
            LinkAttribute::LinkInfo(vec![
                LinkInfo::PortKind(InfoPortKind::Bridge),
                LinkInfo::PortData(InfoPortData::BridgePort(vec![InfoBridgePort::Isolated(
                    isolated,
                )])),
            ]),
        );
        self.request(RouteNetlinkMessage::NewLink(request), 0, |h| {
            let name = h.name_of(index);
            let what = if isolated { "isolate" } else { "un-isolate" };
            format!("{what} bridge port {name}")
        })
    }

    /// Moves the interface into the network namespace `netns` (an open
    /// /proc/PID/ns/net or /run/netns/NAME).
    pub fn move_to_netns(&mut self, index: u32, netns: BorrowedFd<'_>) -> Result<()> {
        let request = link_attr(index, LinkAttribute::NetNsFd(netns.as_raw_fd()));
        self.change_link(request, |name| {
            format!("move {name} to another network namespace")
        })
    }

    pub fn delete_link(&mut self, index: u32) -> Result<()> {
        let mut request = LinkMessage::default();
        request.header.index = index;
        self.request(RouteNetlinkMessage::DelLink(request), 0, |h| {
            format!("delete {}", h.name_of(index))
        })
    }

    fn change_link(&mut self, request: LinkMessage, op: impl FnOnce(&str) -> String) -> Result<()> {
        let index = request.header.index;
        self.request(RouteNetlinkMessage::SetLink(request), 0, |h| {
            op(&h.name_of(index))
        })
    }

    /// Creates bridge `name` (down, without addresses) and returns its index.
    /// Fails with EEXIST if the name is taken; see [`super::ensure_bridge`]
    /// for the idempotent version.
    pub fn add_bridge(&mut self, name: &str) -> Result<u32> {
        self.add_link(name, vec![LinkInfo::Kind(InfoKind::Bridge)], "bridge")
    }

    /// Creates a veth pair and returns the indexes of `a` and `b`.
    pub fn add_veth_pair(&mut self, a: &str, b: &str) -> Result<(u32, u32)> {
        IfName::new(b)?;
        let mut peer = LinkMessage::default();
        peer.attributes.push(LinkAttribute::IfName(b.to_owned()));
        let info = vec![
            LinkInfo::Kind(InfoKind::Veth),
            LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
        ];
        let index_a = self.add_link(a, info, &format!("veth (peer {b})"))?;
        let index_b = self.existing(b, "find the new veth peer")?;
        Ok((index_a, index_b))
    }

    fn add_link(&mut self, name: &str, info: Vec<LinkInfo>, what: &str) -> Result<u32> {
        IfName::new(name)?;
        let mut request = LinkMessage::default();
        request
            .attributes
            .push(LinkAttribute::IfName(name.to_owned()));
        request.attributes.push(LinkAttribute::LinkInfo(info));
        self.request(
            RouteNetlinkMessage::NewLink(request),
            NLM_F_CREATE | NLM_F_EXCL,
            |_| format!("create {what} {name}"),
        )?;
        self.existing(name, "find the interface just created")
    }

    /// The index of `name`, which must exist.
    pub(crate) fn existing(&mut self, name: &str, op: &str) -> Result<u32> {
        match self.link_by_name(name)? {
            Some(link) => Ok(link.index),
            None => Err(NetlinkError::NoSuchInterface {
                op: op.to_owned(),
                name: name.to_owned(),
            }),
        }
    }

    // ---- addresses ----

    /// Every address, or those of interface `index`, with their interface.
    pub fn addresses(&mut self, index: Option<u32>) -> Result<Vec<(u32, IpCidr)>> {
        self.dump_map(
            RouteNetlinkMessage::GetAddress(AddressMessage::default()),
            || "list addresses".to_owned(),
            |m| match m {
                RouteNetlinkMessage::NewAddress(a) => {
                    address_of(a).filter(|(i, _)| index.map_or(true, |want| *i == want))
                }
                _ => None,
            },
        )
    }

    /// Adds `addr` to interface `index`, with the broadcast address
    /// `ip address add ... brd +` would give an IPv4 address.
    pub fn add_address(&mut self, index: u32, addr: IpCidr) -> Result<()> {
        self.add_address_flags(index, addr, AddressHeaderFlags::empty())
    }

    pub(crate) fn add_address_flags(
        &mut self,
        index: u32,
        addr: IpCidr,
        flags: AddressHeaderFlags,
    ) -> Result<()> {
        let op = |name: &str| format!("add address {addr} to {name}");
        if let Err(e) = addr.check() {
            return Err(NetlinkError::Invalid {
                op: op(&self.name_of(index)),
                reason: e.to_string(),
            });
        }
        let mut request = AddressMessage::default();
        request.header.family = family(addr.addr);
        request.header.prefix_len = addr.prefix_len;
        request.header.flags = flags;
        request.header.scope = AddressScope::Universe;
        request.header.index = index;
        // IFA_LOCAL is the interface's address; IFA_ADDRESS would be the peer
        // on a point-to-point link and is the same address otherwise.
        request.attributes.push(AddressAttribute::Local(addr.addr));
        request
            .attributes
            .push(AddressAttribute::Address(addr.addr));
        if let Some(broadcast) = addr.broadcast() {
            request
                .attributes
                .push(AddressAttribute::Broadcast(broadcast));
        }
        self.request(
            RouteNetlinkMessage::NewAddress(request),
            NLM_F_CREATE | NLM_F_EXCL,
            |h| op(&h.name_of(index)),
        )
    }

    // ---- routes ----

    /// The unicast routes of the main table, IPv4 and IPv6, or those leaving
    /// by interface `oif`.
    pub fn routes(&mut self, oif: Option<u32>) -> Result<Vec<RouteEntry>> {
        self.dump_map(
            RouteNetlinkMessage::GetRoute(RouteMessage::default()),
            || "list routes".to_owned(),
            |m| match m {
                RouteNetlinkMessage::NewRoute(r) => {
                    route_of(r).filter(|r| oif.map_or(true, |want| r.oif == Some(want)))
                }
                _ => None,
            },
        )
    }

    /// Adds `route` to the main table, leaving by interface `oif`.
    pub fn add_route(&mut self, oif: u32, route: &Route) -> Result<()> {
        let op = |name: &str| format!("add route {route} on {name}");
        let invalid = |h: &mut Self, reason: String| NetlinkError::Invalid {
            op: op(&h.name_of(oif)),
            reason,
        };
        let Some(ipv6) = route.is_ipv6() else {
            let reason = if route.destination.is_none() && route.gateway.is_none() {
                "a default route needs a gateway (it says whether it is IPv4 or IPv6)"
            } else {
                "its destination and gateway are of different address families"
            };
            return Err(invalid(self, reason.to_owned()));
        };
        if let Some(Err(e)) = route.destination.map(|d| d.check()) {
            return Err(invalid(self, e.to_string()));
        }
        let mut request = RouteMessage::default();
        request.header.address_family = if ipv6 {
            AddressFamily::Inet6
        } else {
            AddressFamily::Inet
        };
        request.header.destination_prefix_length = route.destination.map_or(0, |d| d.prefix_len);
        request.header.table = RouteHeader::RT_TABLE_MAIN;
        request.header.protocol = RouteProtocol::Boot;
        request.header.kind = RouteType::Unicast;
        // What `ip route add` picks: a route through a gateway spans the
        // universe, one without is on the link.
        request.header.scope = if route.gateway.is_some() {
            RouteScope::Universe
        } else {
            RouteScope::Link
        };
        if let Some(d) = route.destination {
            request
                .attributes
                .push(RouteAttribute::Destination(RouteAddress::from(d.addr)));
        }
        if let Some(g) = route.gateway {
            request
                .attributes
                .push(RouteAttribute::Gateway(RouteAddress::from(g)));
        }
        request.attributes.push(RouteAttribute::Oif(oif));
        self.request(
            RouteNetlinkMessage::NewRoute(request),
            NLM_F_CREATE | NLM_F_EXCL,
            |h| op(&h.name_of(oif)),
        )
    }

    // ---- the request machinery ----

    /// Sends a request that is answered by an acknowledgement. Only on
    /// failure is `op` asked what the request was for, with the handle at
    /// hand to name the interfaces involved.
    pub(crate) fn request(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
        op: impl FnOnce(&mut Self) -> String,
    ) -> Result<()> {
        match self.ack(request, flags) {
            Ok(_) => Ok(()),
            Err(f) => {
                let op = op(self);
                Err(f.during(op))
            }
        }
    }

    /// Runs a dump and keeps what `pick` makes of each part of the answer.
    pub(crate) fn dump_map<T>(
        &mut self,
        request: RouteNetlinkMessage,
        op: impl FnOnce() -> String,
        pick: impl FnMut(RouteNetlinkMessage) -> Option<T>,
    ) -> Result<Vec<T>> {
        let replies = self.dump(request).map_err(|f| f.during(op()))?;
        Ok(replies.into_iter().filter_map(pick).collect())
    }

    /// Sends a request that is answered by replies (if it is a get) and then
    /// an acknowledgement or an error.
    pub(crate) fn ack(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        self.exchange(request, NLM_F_ACK | flags)
            .map_err(|f| f.unwrap_or_else(|| Failure::Decode("inconsistent reply".into())))
    }

    /// Sends a dump request and collects every part of the answer, starting
    /// over when the kernel flags the dump as inconsistent because the table
    /// changed while it was being read.
    pub(crate) fn dump(
        &mut self,
        request: RouteNetlinkMessage,
    ) -> Result<Vec<RouteNetlinkMessage>, Failure> {
        for _ in 0..DUMP_ATTEMPTS {
            match self.exchange(request.clone(), NLM_F_DUMP) {
                Ok(replies) => return Ok(replies),
                Err(Some(f)) => return Err(f),
                Err(None) => continue,
            }
        }
        Err(Failure::Decode(format!(
            "the table kept changing during {DUMP_ATTEMPTS} attempts to read it"
        )))
    }

    /// One request and its answer. `Err(None)` is an interrupted dump.
    fn exchange(
        &mut self,
        request: RouteNetlinkMessage,
        flags: u16,
    ) -> Result<Vec<RouteNetlinkMessage>, Option<Failure>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
        packet.finalize();
        let mut buf = vec![0; packet.buffer_len()];
        packet.serialize(&mut buf);
        retry_eintr(|| self.socket.send(&buf, 0)).map_err(|error| Failure::Io {
            action: "send",
            error,
        })?;

        let mut replies = Vec::new();
        let mut interrupted = false;
        loop {
            let (datagram, _) =
                retry_eintr(|| self.socket.recv_from_full()).map_err(|error| Failure::Io {
                    action: "receive",
                    error,
                })?;
            let mut rest = &datagram[..];
            while !rest.is_empty() {
                let (this, next) = wire::split_message(rest).map_err(Failure::Decode)?;
                rest = next;
                let raw = NetlinkBuffer::new(this);
                let (this_seq, this_flags) = (raw.sequence_number(), raw.flags());
                // Left over from a request abandoned halfway (a dump whose
                // reading failed): not ours.
                if this_seq != seq {
                    continue;
                }
                interrupted |= this_flags & NLM_F_DUMP_INTR != 0;
                let message = NetlinkMessage::<RouteNetlinkMessage>::deserialize(this)
                    .map_err(|e| Failure::Decode(e.to_string()))?;
                match message.payload {
                    NetlinkPayload::InnerMessage(m) => replies.push(m),
                    NetlinkPayload::Done(done) => {
                        if done.code != 0 {
                            return Err(Some(Failure::Kernel {
                                errno: done.code.abs(),
                                message: wire::tlv_message(&done.extended_ack),
                            }));
                        }
                        return if interrupted { Err(None) } else { Ok(replies) };
                    }
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(replies),
                            Some(code) => Err(Some(Failure::Kernel {
                                errno: code.get().abs(),
                                message: wire::error_message(this_flags, &e.header),
                            })),
                        }
                    }
                    NetlinkPayload::Overrun(_) => {
                        return Err(Some(Failure::Decode(
                            "the kernel reports an overrun".into(),
                        )))
                    }
                    _ => {}
                }
            }
        }
    }
}

fn retry_eintr<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

fn link_attr(index: u32, attr: LinkAttribute) -> LinkMessage {
    let mut request = LinkMessage::default();
    request.header.index = index;
    request.attributes.push(attr);
    request
}

fn family(addr: IpAddr) -> AddressFamily {
    match addr {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

pub(crate) fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_of(message: RouteNetlinkMessage) -> Option<Link> {
    let RouteNetlinkMessage::NewLink(message) = message else {
        return None;
    };
    let mut link = Link {
        index: message.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: message.header.flags.contains(LinkFlags::Up),
        kind: None,
        master: None,
        port_isolated: false,
    };
    for attr in message.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name = n,
            LinkAttribute::Address(a) => link.mac = a.try_into().ok(),
            LinkAttribute::Mtu(m) => link.mtu = m,
            LinkAttribute::Controller(m) if m != 0 => link.master = Some(m),
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(k) => link.kind = Some(k.to_string()),
                        LinkInfo::PortData(InfoPortData::BridgePort(port)) => {
                            link.port_isolated = port.contains(&InfoBridgePort::Isolated(true));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

fn address_of(message: AddressMessage) -> Option<(u32, IpCidr)> {
    let mut local = None;
    let mut address = None;
    for attr in message.attributes {
        match attr {
            AddressAttribute::Local(a) => local = Some(a),
            AddressAttribute::Address(a) => address = Some(a),
            _ => {}
        }
    }
    // IFA_ADDRESS is the peer's on a point-to-point link; IFA_LOCAL, when
    // there is one, is always the interface's own.
    let addr = local.or(address)?;
    Some((
        message.header.index,
        IpCidr::new(addr, message.header.prefix_len),
    ))
}

fn route_of(message: RouteMessage) -> Option<RouteEntry> {
    let header = &message.header;
    if header.kind != RouteType::Unicast {
        return None;
    }
    let mut table = u32::from(header.table);
    let mut destination = None;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    for attr in &message.attributes {
        match attr {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Destination(a) => destination = ip_of(a),
            RouteAttribute::Gateway(a) => gateway = ip_of(a),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let destination = match (destination, header.destination_prefix_length) {
        (None, 0) => None,
        (Some(d), len) => Some(IpCidr::new(d, len)),
        // A prefix without an address: nothing we could hand on.
        (None, _) => return None,
    };
    Some(RouteEntry {
        oif,
        route: Route {
            destination,
            gateway,
        },
        protocol: header.protocol.into(),
        scope: header.scope.into(),
        metric,
    })
}

fn ip_of(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}
