//! Networking for okvm sandboxes without CNI.
//!
//! Pieces that need no netlink socket and are therefore testable anywhere:
//! the per-host subnet and its crash-safe address allocator ([`alloc`]), the
//! declarative rules that decide which bridge an interface joins ([`rules`]),
//! and interface-name validation ([`ifname`]). And the rtnetlink/tc layer
//! ([`netlink`]) that makes taps and bridges, mirrors an engine's veth, and
//! configures the guest's NIC, whose tests need CAP_NET_ADMIN; and the packet
//! filters of bridge mode ([`filter`]: per-tap anti-spoofing, what guests may
//! reach on the host, the optional masquerade), which the `nftables` feature
//! writes to the kernel.

pub mod alloc;
pub mod filter;
pub mod ifname;
pub mod net;
pub mod netlink;
pub mod rules;

pub use alloc::{AllocError, Allocator, Lease};
pub use ifname::{IfName, IfNameError};
pub use net::{Ipv4Net, NetParseError};
pub use netlink::{
    create_persistent_tap, CidrParseError, Handle, InterfaceConfig, IpCidr, Link, NetlinkError,
    Route,
};
pub use rules::{Rules, RulesError};
