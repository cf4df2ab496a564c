//! Networking for okvm sandboxes without CNI.
//!
//! This crate holds the host-side pieces that need no netlink socket and are
//! therefore testable anywhere: the per-host subnet and its crash-safe address
//! allocator ([`alloc`]), the declarative rules that decide which bridge an
//! interface joins ([`rules`]), and interface-name validation ([`ifname`]).

pub mod alloc;
pub mod ifname;
pub mod net;
pub mod rules;

pub use alloc::{AllocError, Allocator, Lease};
pub use ifname::{IfName, IfNameError};
pub use net::{Ipv4Net, NetParseError};
pub use rules::{Rules, RulesError};
