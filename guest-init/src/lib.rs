//! okvm-init: PID 1 inside every okvm guest, and the definitions the host side
//! shares with it.

pub mod banner;
pub mod container;
pub mod network;
pub mod reaper;
pub mod root;
pub mod server;
pub mod stats;
pub mod uptime;
pub mod vsock;
