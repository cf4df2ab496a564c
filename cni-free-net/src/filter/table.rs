//! A small model of the nftables tables okvm writes. Each [`Match`] knows
//! how `nft` spells it and which loads and comparisons the kernel runs for
//! it, so building a table is pure and testable anywhere; `nftables.rs`
//! turns a [`Table`] into netlink messages.
//!
//! Only what okvm's filters need is here: interface names, Ethernet, ARP
//! and IPv4 addresses, L4 ports, ICMP echo and conntrack state.

use std::fmt;
use std::net::Ipv4Addr;

use crate::net::mask;
use crate::netlink::format_mac;
use crate::Ipv4Net;

/// The nftables families okvm writes tables in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// IPv4 packets the host receives, forwards or sends.
    Ip,
    /// Frames as one interface receives them, before the bridge or the
    /// host's IP stack see them.
    NetDev,
}

impl Family {
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ip => "ip",
            Family::NetDev => "netdev",
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: Family,
    pub name: String,
    pub chains: Vec<Chain>,
}

/// A base chain: every chain okvm makes hangs on a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub name: &'static str,
    pub kind: ChainKind,
    pub hook: Hook,
    pub priority: i32,
    pub policy: Policy,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainKind {
    Filter,
    Nat,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hook {
    /// A netdev chain: what this interface receives.
    Ingress {
        device: String,
    },
    Input,
    Forward,
    PostRouting,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Accept,
    Drop,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// All must hold for the action to apply.
    pub matches: Vec<Match>,
    /// Counts what the rule matched, for `nft list table` to show.
    pub counter: bool,
    pub action: Action,
}

impl Rule {
    pub fn new(matches: Vec<Match>, action: Action) -> Rule {
        Rule {
            matches,
            counter: false,
            action,
        }
    }

    pub fn counted(mut self) -> Rule {
        self.counter = true;
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Accept,
    Drop,
    Masquerade,
}

/// One condition of a rule, as `nft` writes it and as the kernel tests it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    text: String,
    tests: Vec<Test>,
}

/// Load a value into a register, optionally mask it, compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Test {
    pub load: Load,
    /// ANDed with the loaded bytes before the comparison (a prefix, a set
    /// of flags); the XOR nftables also applies is always zero here.
    pub mask: Option<Vec<u8>>,
    pub op: Op,
    pub value: Vec<u8>,
}

impl Test {
    /// The header field at `offset` equals `value` (as long as it).
    fn field(base: Base, offset: u32, value: Vec<u8>) -> Test {
        Test {
            load: Load::Payload {
                base,
                offset,
                len: value.len() as u32,
            },
            mask: None,
            op: Op::Eq,
            value,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Load {
    Meta(MetaKey),
    /// `len` bytes at byte `offset` from the start of a header.
    Payload {
        base: Base,
        offset: u32,
        len: u32,
    },
    CtState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetaKey {
    IifName,
    OifName,
    L4Proto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Base {
    Link,
    Network,
    Transport,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
}

/// The Ethernet payloads okvm's filters name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EtherType {
    Ipv4,
    Arp,
}

impl EtherType {
    fn value(self) -> u16 {
        match self {
            EtherType::Ipv4 => 0x0800,
            EtherType::Arp => 0x0806,
        }
    }

    fn name(self) -> &'static str {
        match self {
            EtherType::Ipv4 => "ip",
            EtherType::Arp => "arp",
        }
    }
}

/// The transport protocols a guest may be allowed to reach the host with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Tcp,
    Udp,
}

impl L4 {
    fn number(self) -> u8 {
        match self {
            L4::Tcp => libc::IPPROTO_TCP as u8,
            L4::Udp => libc::IPPROTO_UDP as u8,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            L4::Tcp => "tcp",
            L4::Udp => "udp",
        }
    }
}

const ICMP_ECHO_REQUEST: u8 = 8;
const ARPHRD_ETHER: u16 = 1;
/// nf_conntrack's state bits as `ct state` loads them: 1 << (state + 1).
const CT_ESTABLISHED: u32 = 1 << 1;
const CT_RELATED: u32 = 1 << 2;

impl Match {
    fn one(text: String, load: Load, op: Op, value: Vec<u8>) -> Match {
        Match {
            text,
            tests: vec![Test {
                load,
                mask: None,
                op,
                value,
            }],
        }
    }

    fn field(text: String, base: Base, offset: u32, value: Vec<u8>) -> Match {
        Match {
            text,
            tests: vec![Test::field(base, offset, value)],
        }
    }

    /// `meta iifname NAME`: the interface a packet came in by.
    pub fn iifname(name: &str) -> Match {
        Match::one(
            format!("iifname \"{name}\""),
            Load::Meta(MetaKey::IifName),
            Op::Eq,
            nul_terminated(name),
        )
    }

    /// `meta oifname NAME`: the interface a packet leaves by.
    pub fn oifname(name: &str) -> Match {
        Match::one(
            format!("oifname \"{name}\""),
            Load::Meta(MetaKey::OifName),
            Op::Eq,
            nul_terminated(name),
        )
    }

    pub fn ether_saddr(mac: [u8; 6]) -> Match {
        Match::field(
            format!("ether saddr {}", format_mac(&mac)),
            Base::Link,
            6,
            mac.to_vec(),
        )
    }

    /// The frame's own Ethernet type: a VLAN tag (0x8100) is not looked
    /// through, so a tagged frame never matches `ip` or `arp`.
    pub fn ether_type(ty: EtherType) -> Match {
        Match::field(
            format!("ether type {}", ty.name()),
            Base::Link,
            12,
            ty.value().to_be_bytes().to_vec(),
        )
    }

    /// Only after `ether type ip` (netdev) or in the ip family.
    pub fn ip_saddr(addr: Ipv4Addr) -> Match {
        Match::field(
            format!("ip saddr {addr}"),
            Base::Network,
            12,
            addr.octets().to_vec(),
        )
    }

    pub fn ip_daddr(addr: Ipv4Addr) -> Match {
        Match::field(
            format!("ip daddr {addr}"),
            Base::Network,
            16,
            addr.octets().to_vec(),
        )
    }

    pub fn ip_saddr_in(net: Ipv4Net) -> Match {
        Match::prefix(format!("ip saddr {net}"), 12, net, Op::Eq)
    }

    pub fn ip_daddr_not_in(net: Ipv4Net) -> Match {
        Match::prefix(format!("ip daddr != {net}"), 16, net, Op::Ne)
    }

    fn prefix(text: String, offset: u32, net: Ipv4Net, op: Op) -> Match {
        Match {
            text,
            tests: vec![Test {
                load: Load::Payload {
                    base: Base::Network,
                    offset,
                    len: 4,
                },
                mask: Some(mask(net.prefix_len()).to_be_bytes().to_vec()),
                op,
                value: net.network().octets().to_vec(),
            }],
        }
    }

    /// An ARP packet for Ethernet and IPv4 (`arp htype 1 arp ptype ip arp
    /// hlen 6 arp plen 4`): the only kind whose sender fields sit where
    /// [`Match::arp_sender`] looks, and the only kind Linux answers.
    pub fn arp_ethernet_ipv4() -> Match {
        let parts = [
            (0, ARPHRD_ETHER.to_be_bytes().to_vec()),
            (2, EtherType::Ipv4.value().to_be_bytes().to_vec()),
            (4, vec![6]),
            (5, vec![4]),
        ];
        Match {
            text: "arp htype 1 arp ptype ip arp hlen 6 arp plen 4".into(),
            tests: parts
                .into_iter()
                .map(|(offset, value)| Test::field(Base::Network, offset, value))
                .collect(),
        }
    }

    /// The sender hardware and protocol addresses of an Ethernet/IPv4 ARP
    /// packet: what neighbours learn from it.
    pub fn arp_sender(mac: [u8; 6], addr: Ipv4Addr) -> Match {
        Match {
            text: format!("arp saddr ether {} arp saddr ip {addr}", format_mac(&mac)),
            tests: vec![
                Test::field(Base::Network, 8, mac.to_vec()),
                Test::field(Base::Network, 14, addr.octets().to_vec()),
            ],
        }
    }

    /// `ct state established,related`: replies, and what belongs to a
    /// connection already let through (ICMP errors, FTP data).
    pub fn ct_established_or_related() -> Match {
        Match {
            text: "ct state established,related".into(),
            tests: vec![Test {
                load: Load::CtState,
                mask: Some((CT_ESTABLISHED | CT_RELATED).to_ne_bytes().to_vec()),
                op: Op::Ne,
                value: 0u32.to_ne_bytes().to_vec(),
            }],
        }
    }

    /// `tcp dport PORT` / `udp dport PORT`, in the ip family.
    pub fn dport(l4: L4, port: u16) -> Match {
        let mut m = Match::l4proto(l4.number(), format!("{} dport {port}", l4.name()));
        m.tests
            .push(Test::field(Base::Transport, 2, port.to_be_bytes().to_vec()));
        m
    }

    /// `icmp type echo-request`, in the ip family.
    pub fn icmp_echo_request() -> Match {
        let mut m = Match::l4proto(libc::IPPROTO_ICMP as u8, "icmp type echo-request".into());
        m.tests
            .push(Test::field(Base::Transport, 0, vec![ICMP_ECHO_REQUEST]));
        m
    }

    fn l4proto(number: u8, text: String) -> Match {
        Match::one(text, Load::Meta(MetaKey::L4Proto), Op::Eq, vec![number])
    }

    /// What the kernel runs, in order; only writing a table needs it.
    #[cfg(any(test, feature = "nftables"))]
    pub(crate) fn tests(&self) -> &[Test] {
        &self.tests
    }
}

/// How the kernel compares interface names: the name and its NUL, so that
/// `okvm0` does not also match `okvm01`.
fn nul_terminated(name: &str) -> Vec<u8> {
    let mut bytes = name.as_bytes().to_vec();
    bytes.push(0);
    bytes
}

// `nft -f` syntax, the way `nft list table` prints it (minus counter values).

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "table {} {} {{", self.family, self.name)?;
        for chain in &self.chains {
            write!(f, "{chain}")?;
        }
        writeln!(f, "}}")
    }
}

impl fmt::Display for Chain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "\tchain {} {{", self.name)?;
        let kind = match self.kind {
            ChainKind::Filter => "filter",
            ChainKind::Nat => "nat",
        };
        let hook = match &self.hook {
            Hook::Ingress { device } => format!("ingress device \"{device}\""),
            Hook::Input => "input".into(),
            Hook::Forward => "forward".into(),
            Hook::PostRouting => "postrouting".into(),
        };
        let policy = match self.policy {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        };
        writeln!(
            f,
            "\t\ttype {kind} hook {hook} priority {}; policy {policy};",
            self.priority
        )?;
        for rule in &self.rules {
            writeln!(f, "\t\t{rule}")?;
        }
        writeln!(f, "\t}}")
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in &self.matches {
            write!(f, "{} ", m.text)?;
        }
        if self.counter {
            f.write_str("counter ")?;
        }
        f.write_str(match self.action {
            Action::Accept => "accept",
            Action::Drop => "drop",
            Action::Masquerade => "masquerade",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(base: Base, offset: u32, len: u32) -> Load {
        Load::Payload { base, offset, len }
    }

    #[test]
    fn header_fields_load_from_their_offsets() {
        let mac = [0x02, 1, 2, 3, 4, 5];
        let cases = [
            (
                Match::ether_saddr(mac),
                payload(Base::Link, 6, 6),
                mac.to_vec(),
            ),
            (
                Match::ether_type(EtherType::Arp),
                payload(Base::Link, 12, 2),
                vec![0x08, 0x06],
            ),
            (
                Match::ip_saddr(Ipv4Addr::new(10, 87, 0, 2)),
                payload(Base::Network, 12, 4),
                vec![10, 87, 0, 2],
            ),
            (
                Match::ip_daddr(Ipv4Addr::new(10, 87, 0, 1)),
                payload(Base::Network, 16, 4),
                vec![10, 87, 0, 1],
            ),
        ];
        for (m, load, value) in cases {
            assert_eq!(
                m.tests(),
                [Test {
                    load,
                    mask: None,
                    op: Op::Eq,
                    value
                }],
                "{}",
                m.text
            );
        }
    }

    #[test]
    fn arp_sender_fields_follow_an_ethernet_ipv4_header() {
        // htype(2) ptype(2) hlen(1) plen(1) op(2), then sha(6) spa(4).
        let m = Match::arp_sender([2, 0, 0, 0, 0, 9], Ipv4Addr::new(10, 0, 0, 9));
        let loads: Vec<_> = m
            .tests()
            .iter()
            .map(|t| (t.load, t.value.clone()))
            .collect();
        assert_eq!(
            loads,
            [
                (payload(Base::Network, 8, 6), vec![2, 0, 0, 0, 0, 9]),
                (payload(Base::Network, 14, 4), vec![10, 0, 0, 9]),
            ]
        );
        let header: Vec<_> = Match::arp_ethernet_ipv4()
            .tests()
            .iter()
            .map(|t| (t.load, t.value.clone()))
            .collect();
        assert_eq!(
            header,
            [
                (payload(Base::Network, 0, 2), vec![0, 1]),
                (payload(Base::Network, 2, 2), vec![0x08, 0x00]),
                (payload(Base::Network, 4, 1), vec![6]),
                (payload(Base::Network, 5, 1), vec![4]),
            ]
        );
    }

    #[test]
    fn prefixes_are_masked_and_negation_is_kept() {
        let net: Ipv4Net = "10.87.0.0/24".parse().unwrap();
        let m = Match::ip_daddr_not_in(net);
        assert_eq!(m.text, "ip daddr != 10.87.0.0/24");
        assert_eq!(
            m.tests(),
            [Test {
                load: payload(Base::Network, 16, 4),
                mask: Some(vec![255, 255, 255, 0]),
                op: Op::Ne,
                value: vec![10, 87, 0, 0],
            }]
        );
    }

    #[test]
    fn ports_and_icmp_check_the_protocol_first() {
        let m = Match::dport(L4::Udp, 53);
        assert_eq!(m.text, "udp dport 53");
        assert_eq!(m.tests()[0].load, Load::Meta(MetaKey::L4Proto));
        assert_eq!(m.tests()[0].value, [17]);
        assert_eq!(m.tests()[1].load, payload(Base::Transport, 2, 2));
        assert_eq!(m.tests()[1].value, [0, 53]);
        let m = Match::icmp_echo_request();
        assert_eq!(m.tests()[0].value, [1]);
        assert_eq!(m.tests()[1].load, payload(Base::Transport, 0, 1));
        assert_eq!(m.tests()[1].value, [8]);
    }

    #[test]
    fn interface_names_match_exactly_and_ct_state_by_flags() {
        let m = Match::iifname("okvm0");
        assert_eq!(m.tests()[0].value, b"okvm0\0");
        let m = Match::ct_established_or_related();
        assert_eq!(m.tests()[0].mask, Some(6u32.to_ne_bytes().to_vec()));
        assert_eq!(m.tests()[0].op, Op::Ne);
    }

    #[test]
    fn a_table_prints_as_nft_would_load_it() {
        let table = Table {
            family: Family::Ip,
            name: "t".into(),
            chains: vec![Chain {
                name: "input",
                kind: ChainKind::Filter,
                hook: Hook::Input,
                priority: 0,
                policy: Policy::Accept,
                rules: vec![Rule::new(vec![Match::iifname("br0")], Action::Drop).counted()],
            }],
        };
        assert_eq!(
            table.to_string(),
            "table ip t {\n\tchain input {\n\t\ttype filter hook input priority 0; policy accept;\n\t\tiifname \"br0\" counter drop\n\t}\n}\n"
        );
    }
}
