//! The guest's network, as the host describes it ([`RequestBody::Network`]):
//! loopback up, and each NIC, found by the MAC the VMM gave it, with the MTU,
//! addresses and routes of the interface it stands for on the host.
//!
//! [`RequestBody::Network`]: okvm_protocol::RequestBody::Network

use cni_free_net::netlink::{self, Handle};
use cni_free_net::InterfaceConfig;

pub fn configure(interfaces: &[InterfaceConfig]) -> Result<(), String> {
    let mut h = Handle::open().map_err(|e| e.to_string())?;
    netlink::loopback_up(&mut h).map_err(|e| format!("cannot bring lo up: {e}"))?;
    if interfaces.is_empty() {
        return Ok(());
    }
    let links = h.links().map_err(|e| e.to_string())?;
    for config in interfaces {
        let link = links
            .iter()
            .find(|l| l.mac == Some(config.mac))
            .ok_or_else(|| format!("no NIC has MAC {}", mac_string(&config.mac)))?;
        netlink::configure(&mut h, link.index, config)
            .map_err(|e| format!("cannot configure {}: {e}", link.name))?;
    }
    Ok(())
}

fn mac_string(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
