//! The host's bridge-mode settings: `/etc/okvm/network.conf` (or the file
//! `OKVM_NETWORK_CONF` names), `key=value` lines, `#` comments. Every key is
//! optional; a missing file means the defaults.
//!
//! ```text
//! bridge=okvm0                         # the bridge okvm makes and addresses
//! subnet=10.87.0.0/24                  # this host's subnet; .1 is the bridge
//! leases=/var/lib/okvm/network/okvm0.leases
//! rules=/etc/okvm/bridge.rules         # which bridge a tap joins
//! dns=192.0.2.53,192.0.2.54            # default: the host's non-loopback nameservers
//! masquerade=no                        # yes: guests reach beyond the host (nftables)
//! host-allow=                          # e.g. ping,tcp/22,udp/5353: more than replies and DNS
//! guest-to-guest=yes                   # no: guests on the bridge cannot reach each other
//! ```

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};
use cni_free_net::filter::HostService;
use cni_free_net::{Ipv4Net, Rules};

pub const DEFAULT_PATH: &str = "/etc/okvm/network.conf";
pub const ENV_PATH: &str = "OKVM_NETWORK_CONF";
const DEFAULT_RULES: &str = "/etc/okvm/bridge.rules";
const HOST_RESOLV_CONF: &str = "/etc/resolv.conf";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conf {
    pub bridge: String,
    pub subnet: Ipv4Net,
    pub leases: PathBuf,
    rules: Option<PathBuf>,
    pub dns: Option<Vec<IpAddr>>,
    /// Masquerade the subnet's traffic that leaves it (off unless asked).
    pub masquerade: bool,
    /// What guests may reach on the host itself besides replies to the
    /// host's own connections and DNS (nothing unless asked).
    pub host_allow: Vec<HostService>,
    /// Guests on the bridge reach each other (on unless turned off).
    pub guest_to_guest: bool,
}

impl Default for Conf {
    fn default() -> Conf {
        Conf {
            bridge: "okvm0".into(),
            subnet: Ipv4Net::new([10, 87, 0, 0].into(), 24).expect("a valid subnet"),
            leases: "/var/lib/okvm/network/okvm0.leases".into(),
            rules: None,
            dns: None,
            masquerade: false,
            host_allow: Vec::new(),
            guest_to_guest: true,
        }
    }
}

impl Conf {
    /// The settings in force: the file `OKVM_NETWORK_CONF` names, else
    /// /etc/okvm/network.conf when it exists, else the defaults.
    pub fn load() -> anyhow::Result<Conf> {
        match std::env::var_os(ENV_PATH) {
            Some(p) => Conf::read(Path::new(&p)),
            None if Path::new(DEFAULT_PATH).exists() => Conf::read(Path::new(DEFAULT_PATH)),
            None => Ok(Conf::default()),
        }
    }

    fn read(path: &Path) -> anyhow::Result<Conf> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        Conf::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    pub fn parse(text: &str) -> anyhow::Result<Conf> {
        let mut conf = Conf::default();
        let mut leases_set = false;
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                bail!("line {}: expected key=value, found {line:?}", n + 1);
            };
            let (key, value) = (key.trim(), value.trim());
            match key {
                "bridge" => {
                    cni_free_net::IfName::new(value)
                        .with_context(|| format!("line {}: bridge", n + 1))?;
                    conf.bridge = value.into();
                }
                "subnet" => {
                    conf.subnet = value
                        .parse()
                        .with_context(|| format!("line {}: subnet", n + 1))?
                }
                "leases" => {
                    conf.leases = value.into();
                    leases_set = true;
                }
                "rules" => conf.rules = Some(value.into()),
                "dns" => {
                    let servers = value
                        .split(',')
                        .map(|s| s.trim().parse::<IpAddr>())
                        .collect::<Result<Vec<_>, _>>()
                        .with_context(|| format!("line {}: dns {value:?}", n + 1))?;
                    conf.dns = Some(servers);
                }
                "masquerade" => conf.masquerade = yes_or_no(n, key, value)?,
                "guest-to-guest" => conf.guest_to_guest = yes_or_no(n, key, value)?,
                "host-allow" => {
                    conf.host_allow = match value {
                        "" | "none" => Vec::new(),
                        _ => value
                            .split(',')
                            .map(|s| s.trim().parse::<HostService>())
                            .collect::<Result<_, _>>()
                            .with_context(|| format!("line {}: host-allow", n + 1))?,
                    }
                }
                other => bail!(
                    "line {}: unknown key {other:?} (known: bridge, subnet, leases, rules, dns, masquerade, host-allow, guest-to-guest)",
                    n + 1
                ),
            }
        }
        if !leases_set {
            conf.leases = format!("/var/lib/okvm/network/{}.leases", conf.bridge).into();
        }
        Ok(conf)
    }

    /// The rules file in force (it need not exist).
    pub fn rules_path(&self) -> PathBuf {
        self.rules.clone().unwrap_or_else(|| DEFAULT_RULES.into())
    }

    /// The attach rules: the rules file, or without one the built-in rule
    /// that sends okvm's taps to [`Conf::bridge`].
    pub fn rules(&self) -> anyhow::Result<Rules> {
        let path = self.rules_path();
        if self.rules.is_some() || path.exists() {
            return Ok(Rules::load(&path)?);
        }
        Ok(Rules::parse(&format!(
            "match-name=okt* bridge={}",
            self.bridge
        ))?)
    }

    /// What guests are told about name resolution.
    pub fn guest_dns(&self) -> GuestDns {
        let host = std::fs::read_to_string(HOST_RESOLV_CONF).unwrap_or_default();
        guest_dns(&host, self.dns.as_deref())
    }
}

/// Name resolution as a bridge-mode guest sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GuestDns {
    /// The configured servers, else the host's own minus loopback ones (a
    /// stub resolver on the host's 127.0.0.53 is not reachable from a guest).
    pub servers: Vec<IpAddr>,
    /// The guest's resolv.conf: the host's search and options lines, then
    /// the servers.
    pub resolv_conf: String,
}

fn yes_or_no(n: usize, key: &str, value: &str) -> anyhow::Result<bool> {
    match value {
        "yes" | "true" | "1" => Ok(true),
        "no" | "false" | "0" => Ok(false),
        _ => bail!("line {}: {key} must be yes or no, not {value:?}", n + 1),
    }
}

fn guest_dns(host: &str, dns: Option<&[IpAddr]>) -> GuestDns {
    let mut resolv_conf = String::new();
    let mut host_servers = Vec::new();
    for line in host.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("search" | "domain" | "options"), _) => {
                resolv_conf.push_str(line.trim());
                resolv_conf.push('\n');
            }
            (Some("nameserver"), Some(addr)) => {
                host_servers.extend(addr.parse::<IpAddr>().ok().filter(|a| !a.is_loopback()))
            }
            _ => {}
        }
    }
    let servers = dns.map_or(host_servers, <[IpAddr]>::to_vec);
    for server in &servers {
        resolv_conf.push_str(&format!("nameserver {server}\n"));
    }
    GuestDns {
        servers,
        resolv_conf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_without_a_file() {
        let c = Conf::parse("").unwrap();
        assert_eq!(c.bridge, "okvm0");
        assert_eq!(c.subnet.to_string(), "10.87.0.0/24");
        assert_eq!(c.leases, Path::new("/var/lib/okvm/network/okvm0.leases"));
        assert!(!c.masquerade);
        assert_eq!(c.host_allow, []);
        assert!(c.guest_to_guest);
        assert!(c.rules().unwrap().bridge_for("okt0123456789ab") == Some("okvm0"));
    }

    #[test]
    fn keys_override_and_the_lease_file_follows_the_bridge() {
        let c = Conf::parse(
            "# mine\nbridge = br9\nsubnet=10.9.9.0/24 # lab\ndns=192.0.2.1, 192.0.2.2\nmasquerade=yes\n\
             host-allow=ping, tcp/22,udp/5353\nguest-to-guest=no\n",
        )
        .unwrap();
        assert_eq!(c.bridge, "br9");
        assert_eq!(c.subnet.to_string(), "10.9.9.0/24");
        assert_eq!(c.leases, Path::new("/var/lib/okvm/network/br9.leases"));
        assert_eq!(c.dns.as_ref().unwrap().len(), 2);
        assert!(c.masquerade);
        assert_eq!(
            c.host_allow,
            [
                HostService::Ping,
                HostService::Tcp(22),
                HostService::Udp(5353)
            ]
        );
        assert!(!c.guest_to_guest);
        for nothing in ["host-allow=", "host-allow=none"] {
            assert_eq!(Conf::parse(nothing).unwrap().host_allow, []);
        }
    }

    #[test]
    fn bad_lines_name_the_line_and_the_problem() {
        for (text, needle) in [
            ("subnet=10.0.0.1/24", "host bits"),
            ("colour=blue", "unknown key \"colour\""),
            ("bridge", "expected key=value"),
            ("dns=not-an-ip", "dns"),
            ("masquerade=maybe", "masquerade must be yes or no"),
            ("guest-to-guest=off", "guest-to-guest must be yes or no"),
            (
                "host-allow=tcp/22,ssh",
                "\"ssh\" is not ping, tcp/PORT or udp/PORT",
            ),
            ("host-allow=udp/0", "1 to 65535"),
            ("bridge=a-name-far-too-long-for-linux", "bridge"),
        ] {
            let e = format!("{:#}", Conf::parse(text).unwrap_err());
            assert!(e.contains("line 1"), "{e}");
            assert!(e.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn guest_dns_drops_loopback_servers_and_keeps_search() {
        let host =
            "nameserver 127.0.0.53\nnameserver 192.0.2.7\nsearch lab.example\noptions edns0\n";
        let from_host = guest_dns(host, None);
        assert_eq!(from_host.servers, ["192.0.2.7".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            from_host.resolv_conf,
            "search lab.example\noptions edns0\nnameserver 192.0.2.7\n"
        );
        let mine = ["198.51.100.1".parse().unwrap()];
        let configured = guest_dns(host, Some(&mine));
        assert_eq!(configured.servers, mine);
        assert_eq!(
            configured.resolv_conf,
            "search lab.example\noptions edns0\nnameserver 198.51.100.1\n"
        );
    }
}
