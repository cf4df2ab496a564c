//! What guests on an okvm bridge may reach besides the outside world: one
//! ip-family table per bridge, `ip okvm-<bridge>`, replaced whole at every
//! bridge-mode create (one nf_tables batch, so concurrent creates converge
//! and a changed setting replaces the old rules):
//!
//! - chain `input`: packets from the bridge to the host itself (any of its
//!   addresses) are dropped unless they belong to a connection the host
//!   opened, go to a DNS server the guests were given on port 53 (it only
//!   matters when that server is the host), or are a service the admin
//!   allowed (`host-allow` in network.conf);
//! - chain `forward`, only when guest-to-guest traffic is off: nothing the
//!   host routes may go from the bridge back into it (the bridge's own port
//!   isolation stops the frames that never reach the host's IP layer);
//! - chain `postrouting`, only with masquerade: the subnet leaves the host
//!   from the host's own address.
//!
//! The forward path to the outside is left alone: it is the host's
//! firewall's business, as it is for Docker's and CNI's bridges.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use super::table::{Action, Chain, ChainKind, Family, Hook, Match, Policy, Rule, Table, L4};
use crate::net::parse_digits;
use crate::{IfName, Ipv4Net};

/// Something on the host guests may open connections to (`host-allow`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HostService {
    /// ICMP echo requests.
    Ping,
    Tcp(u16),
    Udp(u16),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostServiceError {
    #[error("{input:?} is not ping, tcp/PORT or udp/PORT")]
    Syntax { input: String },
    #[error("{input:?}: the port must be a number from 1 to 65535")]
    Port { input: String },
}

impl FromStr for HostService {
    type Err = HostServiceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if input == "ping" {
            return Ok(HostService::Ping);
        }
        let syntax = || HostServiceError::Syntax {
            input: input.to_owned(),
        };
        let (proto, port) = input.split_once('/').ok_or_else(syntax)?;
        let make = match proto {
            "tcp" => HostService::Tcp,
            "udp" => HostService::Udp,
            _ => return Err(syntax()),
        };
        let port = parse_digits::<u16>(port)
            .filter(|p| *p != 0)
            .ok_or_else(|| HostServiceError::Port {
                input: input.to_owned(),
            })?;
        Ok(make(port))
    }
}

impl fmt::Display for HostService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostService::Ping => f.write_str("ping"),
            HostService::Tcp(p) => write!(f, "tcp/{p}"),
            HostService::Udp(p) => write!(f, "udp/{p}"),
        }
    }
}

impl HostService {
    fn matches(self) -> Match {
        match self {
            HostService::Ping => Match::icmp_echo_request(),
            HostService::Tcp(p) => Match::dport(L4::Tcp, p),
            HostService::Udp(p) => Match::dport(L4::Udp, p),
        }
    }
}

/// The filter settings of one bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgePolicy {
    pub bridge: IfName,
    pub subnet: Ipv4Net,
    /// What guests may reach on the host besides replies and DNS.
    pub host_allow: Vec<HostService>,
    /// The name servers guests are given.
    pub dns: Vec<Ipv4Addr>,
    pub guest_to_guest: bool,
    pub masquerade: bool,
}

/// The table holding the rules of `bridge`.
pub fn table_name(bridge: &IfName) -> String {
    format!("okvm-{}", bridge.as_str())
}

impl BridgePolicy {
    pub fn table(&self) -> Table {
        let from_bridge = || Match::iifname(self.bridge.as_str());
        let mut input = vec![Rule::new(
            vec![from_bridge(), Match::ct_established_or_related()],
            Action::Accept,
        )];
        for server in &self.dns {
            for l4 in [L4::Udp, L4::Tcp] {
                input.push(Rule::new(
                    vec![
                        from_bridge(),
                        Match::ip_daddr(*server),
                        Match::dport(l4, 53),
                    ],
                    Action::Accept,
                ));
            }
        }
        for service in &self.host_allow {
            input.push(Rule::new(
                vec![from_bridge(), service.matches()],
                Action::Accept,
            ));
        }
        input.push(Rule::new(vec![from_bridge()], Action::Drop).counted());
        let filter = |name, hook, rules| Chain {
            name,
            kind: ChainKind::Filter,
            hook,
            priority: 0,
            policy: Policy::Accept,
            rules,
        };
        let mut chains = vec![filter("input", Hook::Input, input)];
        if !self.guest_to_guest {
            chains.push(filter(
                "forward",
                Hook::Forward,
                vec![Rule::new(
                    vec![from_bridge(), Match::oifname(self.bridge.as_str())],
                    Action::Drop,
                )
                .counted()],
            ));
        }
        if self.masquerade {
            chains.push(Chain {
                name: "postrouting",
                kind: ChainKind::Nat,
                hook: Hook::PostRouting,
                priority: 100,
                policy: Policy::Accept,
                rules: vec![Rule::new(
                    vec![
                        Match::ip_saddr_in(self.subnet),
                        Match::ip_daddr_not_in(self.subnet),
                    ],
                    Action::Masquerade,
                )],
            });
        }
        Table {
            family: Family::Ip,
            name: table_name(&self.bridge),
            chains,
        }
    }
}

#[cfg(feature = "nftables")]
const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";

#[cfg(feature = "nftables")]
impl BridgePolicy {
    /// Replaces the bridge's table; with masquerade, also turns IPv4
    /// forwarding on (and leaves it on: other users of the host may rely on
    /// it).
    pub fn apply(&self) -> Result<(), super::FilterError> {
        super::nftables::apply(
            &self.table(),
            &format!("the rules of bridge {}", self.bridge),
        )?;
        if self.masquerade {
            std::fs::write(IP_FORWARD, "1").map_err(super::FilterError::Forwarding)?;
        }
        Ok(())
    }

    /// Removes the table of `bridge`; absent is not an error.
    pub fn remove(bridge: &IfName) -> Result<(), super::FilterError> {
        super::nftables::delete(Family::Ip, &table_name(bridge))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> BridgePolicy {
        BridgePolicy {
            bridge: IfName::new("okvm0").unwrap(),
            subnet: "10.87.0.0/24".parse().unwrap(),
            host_allow: vec![],
            dns: vec![],
            guest_to_guest: true,
            masquerade: false,
        }
    }

    #[test]
    fn by_default_guests_reach_the_host_only_with_replies() {
        assert_eq!(
            policy().table().to_string(),
            "table ip okvm-okvm0 {
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\tiifname \"okvm0\" ct state established,related accept
\t\tiifname \"okvm0\" counter drop
\t}
}
"
        );
    }

    #[test]
    fn dns_servers_and_allowed_services_come_before_the_drop() {
        let p = BridgePolicy {
            dns: vec![Ipv4Addr::new(10, 87, 0, 1)],
            host_allow: vec![HostService::Ping, HostService::Tcp(22)],
            ..policy()
        };
        let rules: Vec<String> = p.table().chains[0]
            .rules
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            rules,
            [
                "iifname \"okvm0\" ct state established,related accept",
                "iifname \"okvm0\" ip daddr 10.87.0.1 udp dport 53 accept",
                "iifname \"okvm0\" ip daddr 10.87.0.1 tcp dport 53 accept",
                "iifname \"okvm0\" icmp type echo-request accept",
                "iifname \"okvm0\" tcp dport 22 accept",
                "iifname \"okvm0\" counter drop",
            ]
        );
    }

    #[test]
    fn guest_to_guest_off_drops_what_the_host_would_route_back() {
        let p = BridgePolicy {
            guest_to_guest: false,
            ..policy()
        };
        let table = p.table();
        let forward = table.chains.iter().find(|c| c.name == "forward").unwrap();
        assert_eq!(forward.hook, Hook::Forward);
        assert_eq!(
            forward.rules[0].to_string(),
            "iifname \"okvm0\" oifname \"okvm0\" counter drop"
        );
        assert!(!policy().table().chains.iter().any(|c| c.name == "forward"));
    }

    #[test]
    fn masquerade_adds_the_nat_chain() {
        let p = BridgePolicy {
            masquerade: true,
            ..policy()
        };
        let table = p.table();
        let nat = table.chains.last().unwrap();
        assert_eq!(
            nat.to_string(),
            "\tchain postrouting {
\t\ttype nat hook postrouting priority 100; policy accept;
\t\tip saddr 10.87.0.0/24 ip daddr != 10.87.0.0/24 masquerade
\t}
"
        );
        assert!(!policy()
            .table()
            .chains
            .iter()
            .any(|c| c.kind == ChainKind::Nat));
    }

    #[test]
    fn host_services_parse_and_print_alike() {
        for text in ["ping", "tcp/22", "udp/53", "tcp/65535"] {
            assert_eq!(text.parse::<HostService>().unwrap().to_string(), text);
        }
        for (bad, needle) in [
            ("icmp", "not ping, tcp/PORT or udp/PORT"),
            ("sctp/9", "not ping"),
            ("tcp", "not ping"),
            ("tcp/0", "1 to 65535"),
            ("tcp/65536", "1 to 65535"),
            ("udp/+53", "1 to 65535"),
            ("udp/", "1 to 65535"),
        ] {
            let e = bad.parse::<HostService>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
