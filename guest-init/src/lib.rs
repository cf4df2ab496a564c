//! okvm-init: PID 1 inside every okvm guest, and the definitions the host side
//! shares with it.

pub mod banner;
pub mod reaper;
pub mod server;
pub mod uptime;
pub mod vsock;
