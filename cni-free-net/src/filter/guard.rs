//! The anti-spoofing guard of one guest's tap: a netdev-family table of its
//! own, `netdev okvm-<tap>`, whose one chain sits on the tap's ingress (what
//! the guest sends, before the bridge learns or forwards anything) and lets
//! through only
//!
//! - IPv4 from the guest's own MAC and its leased address, and
//! - ARP for Ethernet/IPv4 whose sender is that MAC and address pair.
//!
//! Everything else is dropped and counted: other source MACs or addresses,
//! VLAN-tagged frames, IPv6 (bridge mode gives guests no IPv6; link-local
//! IPv6 would otherwise reach the host and other guests past every IPv4
//! rule), spanning-tree BPDUs and any other ethertype.
//!
//! The table lives and dies with the tap: made right after the tap, before
//! it joins the bridge, and deleted at teardown (the kernel unhooks the
//! chain when the tap goes, but keeps the table).

use std::net::Ipv4Addr;

use super::table::{Action, Chain, ChainKind, EtherType, Family, Hook, Match, Policy, Rule, Table};
use crate::IfName;

/// What a guest behind `tap` may claim to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TapGuard {
    pub tap: IfName,
    pub mac: [u8; 6],
    pub addr: Ipv4Addr,
}

/// The table guarding `tap`.
pub fn table_name(tap: &IfName) -> String {
    format!("okvm-{}", tap.as_str())
}

impl TapGuard {
    pub fn table(&self) -> Table {
        let own_mac = || Match::ether_saddr(self.mac);
        let rules = vec![
            Rule::new(
                vec![
                    own_mac(),
                    Match::ether_type(EtherType::Ipv4),
                    Match::ip_saddr(self.addr),
                ],
                Action::Accept,
            ),
            Rule::new(
                vec![
                    own_mac(),
                    Match::ether_type(EtherType::Arp),
                    Match::arp_ethernet_ipv4(),
                    Match::arp_sender(self.mac, self.addr),
                ],
                Action::Accept,
            ),
            // The policy drops as well; the rule is there to count.
            Rule::new(vec![], Action::Drop).counted(),
        ];
        Table {
            family: Family::NetDev,
            name: table_name(&self.tap),
            chains: vec![Chain {
                name: "guard",
                kind: ChainKind::Filter,
                hook: Hook::Ingress {
                    device: self.tap.as_str().to_owned(),
                },
                priority: 0,
                policy: Policy::Drop,
                rules,
            }],
        }
    }
}

#[cfg(feature = "nftables")]
impl TapGuard {
    /// Puts the guard on the tap, which must exist, replacing any guard it
    /// had.
    pub fn install(&self) -> Result<(), super::FilterError> {
        super::nftables::apply(
            &self.table(),
            &format!("the anti-spoofing guard of tap {}", self.tap),
        )
    }

    /// Removes the guard of `tap`, whether or not the tap still exists.
    /// Absent is not an error.
    pub fn remove(tap: &IfName) -> Result<(), super::FilterError> {
        super::nftables::delete(Family::NetDev, &table_name(tap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_guests_own_mac_and_address_pass() {
        let guard = TapGuard {
            tap: IfName::new("okt0123456789ab").unwrap(),
            mac: [0x02, 0x11, 0x22, 0x33, 0x44, 0x55],
            addr: Ipv4Addr::new(10, 87, 0, 2),
        };
        assert_eq!(
            guard.table().to_string(),
            "table netdev okvm-okt0123456789ab {
\tchain guard {
\t\ttype filter hook ingress device \"okt0123456789ab\" priority 0; policy drop;
\t\tether saddr 02:11:22:33:44:55 ether type ip ip saddr 10.87.0.2 accept
\t\tether saddr 02:11:22:33:44:55 ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 arp saddr ether 02:11:22:33:44:55 arp saddr ip 10.87.0.2 accept
\t\tcounter drop
\t}
}
"
        );
    }

    #[test]
    fn every_address_check_comes_after_its_ethertype() {
        // A payload load at the network header reads whatever follows the
        // Ethernet header: an IPv4 offset in an ARP packet is meaningless.
        let guard = TapGuard {
            tap: IfName::new("tap0").unwrap(),
            mac: [2, 0, 0, 0, 0, 1],
            addr: Ipv4Addr::new(192, 0, 2, 1),
        };
        for rule in &guard.table().chains[0].rules {
            let texts: Vec<String> = rule
                .matches
                .iter()
                .map(|m| Rule::new(vec![m.clone()], Action::Accept).to_string())
                .collect();
            let ethertype = texts.iter().position(|t| t.starts_with("ether type"));
            let network = texts
                .iter()
                .position(|t| t.starts_with("ip ") || t.starts_with("arp "));
            if let Some(network) = network {
                assert!(ethertype.is_some_and(|e| e < network), "{texts:?}");
            }
        }
    }
}
