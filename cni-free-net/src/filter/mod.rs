//! okvm's packet filters in bridge mode (docs/networking.md, "What a guest
//! may send and reach"):
//!
//! - [`guard`]: per tap, the guest may send only from its own MAC and its
//!   leased IPv4 address (a netdev-family chain on the tap's ingress);
//! - [`policy`]: per bridge, what guests may reach on the host itself,
//!   whether the host routes between guests, and the optional masquerade
//!   (an ip-family table).
//!
//! Rules are built as plain values ([`table`]) that print in `nft` syntax,
//! and, with the `nftables` feature, written to the kernel over netlink
//! through libnftnl.

pub mod guard;
#[cfg(feature = "nftables")]
mod nftables;
pub mod policy;
pub mod table;

pub use guard::TapGuard;
#[cfg(feature = "nftables")]
pub use nftables::{tables, FilterError};
pub use policy::{BridgePolicy, HostService, HostServiceError};
pub use table::{Family, Table};
