//! The line okvm-init prints on the console once the guest is up. Tests and the
//! demo look for it, so its shape is defined once, here.

use std::time::Duration;

/// Every banner starts with this.
pub const PREFIX: &str = "okvm-init: ready";

/// `okvm-init: ready in 0.123 s (kernel uptime), okvm-init 0.1.0, kernel 6.12.117, 2 CPUs`
pub fn banner(uptime: Duration, kernel_release: &str, cpus: usize) -> String {
    format!(
        "{PREFIX} in {}.{:03} s (kernel uptime), okvm-init {}, kernel {}, {} CPU{}",
        uptime.as_secs(),
        uptime.subsec_millis(),
        env!("CARGO_PKG_VERSION"),
        kernel_release,
        cpus,
        if cpus == 1 { "" } else { "s" }
    )
}

/// The CPU count a banner reports.
pub fn parse_cpus(line: &str) -> Option<usize> {
    let rest = line.split(PREFIX).nth(1)?;
    let tail = rest.rsplit(", ").next()?;
    tail.trim().split(' ').next()?.parse().ok()
}

/// The boot time a banner reports, for whoever reads the console.
pub fn parse_uptime(line: &str) -> Option<Duration> {
    let rest = line.split(PREFIX).nth(1)?.strip_prefix(" in ")?;
    let secs = rest.split_once(" s ")?.0;
    crate::uptime::parse(secs).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn banner_reads_back() {
        let b = banner(Duration::from_millis(1234), "6.12.117", 2);
        assert!(b.starts_with("okvm-init: ready in 1.234 s (kernel uptime), okvm-init "));
        assert!(b.ends_with(", kernel 6.12.117, 2 CPUs"));
        assert_eq!(parse_cpus(&b), Some(2));
        assert!(banner(Duration::ZERO, "x", 1).ends_with(", 1 CPU"));
        assert_eq!(parse_uptime(&b), Some(Duration::from_millis(1234)));
        // Console lines may carry a prefix (e.g. a timestamp or \r).
        assert_eq!(
            parse_uptime(&format!("\r[x] {b}\r")),
            Some(Duration::from_millis(1234))
        );
    }

    #[test]
    fn other_lines_have_no_uptime() {
        assert_eq!(parse_uptime("Linux version 6.12"), None);
        assert_eq!(parse_uptime("okvm-init: ready in soon s"), None);
    }
}
