//! What the host tells the guest about one NIC. These values cross okvm's
//! host→guest protocol as JSON, so they are plain data: no indexes, no names,
//! nothing that only means something in the host's namespaces.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::net::{mask as mask32, parse_cidr, CidrSyntax};

/// How the guest's NIC must look: the interface it stands for on the host
/// (its MAC, MTU, addresses and the routes the guest cannot infer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InterfaceConfig {
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<IpCidr>,
    pub routes: Vec<Route>,
}

/// An interface address with its prefix length, e.g. `10.0.0.2/24` or
/// `2001:db8::2/64`. Unlike [`crate::Ipv4Net`] the host bits are the point:
/// this is an address on a subnet, not the subnet.
///
/// In JSON it is the string form, so a config is readable and a malformed one
/// is refused when it is parsed rather than by the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct IpCidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrParseError {
    #[error("{input:?} is not in CIDR form (expected e.g. 10.0.0.2/24 or 2001:db8::2/64)")]
    NotCidr { input: String },
    #[error("{input:?} is not an IPv4 or IPv6 address")]
    BadAddress { input: String },
    #[error("prefix length {input:?} is not a number between 0 and {max}")]
    BadPrefix { input: String, max: u8 },
}

impl IpCidr {
    /// No check here: the fields are public anyway, and every operation that
    /// hands a prefix to the kernel checks it ([`IpCidr::check`]).
    pub const fn new(addr: IpAddr, prefix_len: u8) -> Self {
        Self { addr, prefix_len }
    }

    /// 32 for IPv4, 128 for IPv6.
    pub fn max_prefix_len(&self) -> u8 {
        max_prefix_len(self.addr)
    }

    /// Refuses a prefix longer than the address.
    pub fn check(&self) -> Result<(), CidrParseError> {
        if self.prefix_len > self.max_prefix_len() {
            return Err(CidrParseError::BadPrefix {
                input: self.prefix_len.to_string(),
                max: self.max_prefix_len(),
            });
        }
        Ok(())
    }

    /// The subnet's address: host bits cleared.
    pub fn network(&self) -> IpAddr {
        match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask32(self.prefix_len))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask128(self.prefix_len))),
        }
    }

    pub fn contains(&self, addr: IpAddr) -> bool {
        match (self.addr, addr) {
            (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {
                IpCidr::new(addr, self.prefix_len).network() == self.network()
            }
            _ => false,
        }
    }

    /// The IPv4 broadcast address `ip address add ... brd +` would set; none
    /// for IPv6 and for /31 and /32, which have no room for one (RFC 3021).
    pub fn broadcast(&self) -> Option<Ipv4Addr> {
        match self.addr {
            IpAddr::V4(a) if self.prefix_len <= 30 => {
                Some(Ipv4Addr::from(u32::from(a) | !mask32(self.prefix_len)))
            }
            _ => None,
        }
    }
}

fn max_prefix_len(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask128(prefix_len: u8) -> u128 {
    // checked_shl: a shift by the full width (prefix 0) would overflow.
    u128::MAX
        .checked_shl(128 - u32::from(prefix_len.min(128)))
        .unwrap_or(0)
}

impl fmt::Display for IpCidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl FromStr for IpCidr {
    type Err = CidrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix_len) = parse_cidr(s, |a| max_prefix_len(*a)).map_err(|e| match e {
            CidrSyntax::NotCidr => CidrParseError::NotCidr {
                input: s.to_owned(),
            },
            CidrSyntax::BadAddress(input) => CidrParseError::BadAddress {
                input: input.to_owned(),
            },
            CidrSyntax::BadPrefix(input, max) => CidrParseError::BadPrefix {
                input: input.to_owned(),
                max,
            },
        })?;
        Ok(Self::new(addr, prefix_len))
    }
}

impl From<IpCidr> for String {
    fn from(c: IpCidr) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for IpCidr {
    type Error = CidrParseError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A route the guest must add on its NIC.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Route {
    /// `None` is the default route (of the gateway's address family).
    pub destination: Option<IpCidr>,
    /// `None` for a route straight onto the link.
    pub gateway: Option<IpAddr>,
}

impl Route {
    /// Whether this is an IPv6 route, or `None` when nothing says (a default
    /// route without a gateway) or destination and gateway disagree.
    pub fn is_ipv6(&self) -> Option<bool> {
        let dst = self.destination.map(|d| d.addr.is_ipv6());
        let gw = self.gateway.map(|g| g.is_ipv6());
        match (dst, gw) {
            (Some(d), Some(g)) if d != g => None,
            (d, g) => d.or(g),
        }
    }
}

/// In the words of `ip route`: `default via 10.0.0.1`, `192.0.2.0/24`.
impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.destination {
            Some(d) => write!(f, "{d}")?,
            None => f.write_str("default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn cidr(s: &str) -> IpCidr {
        s.parse().expect("valid CIDR in test")
    }

    #[test]
    fn parses_and_prints_both_families() {
        let v4 = cidr("10.0.0.2/24");
        assert_eq!(v4, IpCidr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), 24));
        assert_eq!(v4.to_string(), "10.0.0.2/24");
        assert_eq!(v4.network().to_string(), "10.0.0.0");
        assert_eq!(v4.broadcast(), Some(Ipv4Addr::new(10, 0, 0, 255)));
        let v6 = cidr("2001:DB8::2/64");
        assert_eq!(v6.to_string(), "2001:db8::2/64");
        assert_eq!(v6.network().to_string(), "2001:db8::");
        assert_eq!(v6.broadcast(), None);
        assert_eq!(cidr("0.0.0.0/0").network().to_string(), "0.0.0.0");
        assert_eq!(cidr("::/0").network().to_string(), "::");
        assert_eq!(cidr("10.0.0.1/31").broadcast(), None);
        assert!(cidr("fe80::/10").contains("fe80::1234".parse().unwrap()));
        assert!(!cidr("fe80::/10").contains("2001:db8::1".parse().unwrap()));
        assert!(!cidr("fe80::/10").contains("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn refuses_malformed_input_with_a_reason() {
        let e = "10.0.0.2".parse::<IpCidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"10.0.0.2\" is not in CIDR form (expected e.g. 10.0.0.2/24 or 2001:db8::2/64)"
        );
        assert!(matches!(
            "10.0.0.256/24".parse::<IpCidr>(),
            Err(CidrParseError::BadAddress { .. })
        ));
        assert!(matches!(
            "fe80::1%eth0/64".parse::<IpCidr>(),
            Err(CidrParseError::BadAddress { .. })
        ));
        let e = "10.0.0.2/33".parse::<IpCidr>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "prefix length \"33\" is not a number between 0 and 32"
        );
        assert!("2001:db8::/128".parse::<IpCidr>().is_ok());
        assert!("2001:db8::/129".parse::<IpCidr>().is_err());
        for bad in ["", "+24", "-1", "24 ", " 24", "0x18", "256"] {
            assert!(
                matches!(
                    format!("10.0.0.0/{bad}").parse::<IpCidr>(),
                    Err(CidrParseError::BadPrefix { .. })
                ),
                "prefix {bad:?} should be refused"
            );
        }
        assert!(IpCidr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 40)
            .check()
            .is_err());
    }

    #[test]
    fn routes_print_like_iproute2_and_know_their_family() {
        let default = Route {
            destination: None,
            gateway: Some("10.0.0.1".parse().unwrap()),
        };
        assert_eq!(default.to_string(), "default via 10.0.0.1");
        assert_eq!(default.is_ipv6(), Some(false));
        let onlink = Route {
            destination: Some(cidr("2001:db8:1::/48")),
            gateway: None,
        };
        assert_eq!(onlink.to_string(), "2001:db8:1::/48");
        assert_eq!(onlink.is_ipv6(), Some(true));
        let mixed = Route {
            destination: Some(cidr("10.1.0.0/16")),
            gateway: Some("fe80::1".parse().unwrap()),
        };
        assert_eq!(mixed.is_ipv6(), None);
        let nothing = Route {
            destination: None,
            gateway: None,
        };
        assert_eq!(nothing.is_ipv6(), None);
    }

    #[test]
    fn json_is_readable_and_validated() {
        let config = InterfaceConfig {
            mac: [0x02, 0, 0, 0, 0, 1],
            mtu: 1500,
            addresses: vec![cidr("10.0.0.2/24"), cidr("2001:db8::2/64")],
            routes: vec![Route {
                destination: None,
                gateway: Some("10.0.0.1".parse().unwrap()),
            }],
        };
        let json = serde_json::to_string(&config).unwrap();
        assert_eq!(
            json,
            r#"{"mac":[2,0,0,0,0,1],"mtu":1500,"addresses":["10.0.0.2/24","2001:db8::2/64"],"routes":[{"destination":null,"gateway":"10.0.0.1"}]}"#
        );
        assert_eq!(
            serde_json::from_str::<InterfaceConfig>(&json).unwrap(),
            config
        );
        let e = serde_json::from_str::<IpCidr>(r#""10.0.0.2/99""#).unwrap_err();
        assert!(e.to_string().contains("between 0 and 32"), "{e}");
    }

    fn any_cidr() -> impl Strategy<Value = IpCidr> {
        prop_oneof![
            (any::<u32>(), 0..=32u8)
                .prop_map(|(a, p)| IpCidr::new(IpAddr::V4(Ipv4Addr::from(a)), p)),
            (any::<u128>(), 0..=128u8)
                .prop_map(|(a, p)| IpCidr::new(IpAddr::V6(Ipv6Addr::from(a)), p)),
        ]
    }

    proptest! {
        #[test]
        fn display_and_parse_round_trip(c in any_cidr()) {
            prop_assert_eq!(c.to_string().parse::<IpCidr>(), Ok(c));
            prop_assert!(c.check().is_ok());
            let json = serde_json::to_string(&c).unwrap();
            prop_assert_eq!(serde_json::from_str::<IpCidr>(&json).unwrap(), c);
        }

        #[test]
        fn network_is_inside_and_idempotent(c in any_cidr()) {
            let net = IpCidr::new(c.network(), c.prefix_len);
            prop_assert!(c.contains(c.addr));
            prop_assert!(net.contains(c.addr));
            prop_assert_eq!(net.network(), c.network());
        }

        #[test]
        fn parsing_never_panics_and_what_parses_prints_back(s in "\\PC{0,48}") {
            if let Ok(c) = s.parse::<IpCidr>() {
                prop_assert!(c.check().is_ok());
                prop_assert_eq!(c.to_string().parse::<IpCidr>(), Ok(c));
            }
        }

        #[test]
        fn cidr_shaped_noise_never_panics(
            addr in "[0-9a-fA-F:.]{0,40}",
            prefix in "[0-9+ -]{0,5}",
        ) {
            let _ = format!("{addr}/{prefix}").parse::<IpCidr>();
        }
    }
}
