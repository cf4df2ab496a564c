//! okvm-init: PID 1 inside every okvm guest, and the definitions the host side
//! shares with it.

pub mod banner;
pub mod protocol;
pub mod uptime;
