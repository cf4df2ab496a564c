//! Reading `/proc/uptime`, the guest's own clock since the kernel started.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("unexpected /proc/uptime content {0:?}")]
pub struct ParseError(pub String);

/// Parses the first field of `/proc/uptime` ("12.34 56.78\n") exactly, without
/// going through floating point, so a banner shows what the kernel said.
pub fn parse(text: &str) -> Result<Duration, ParseError> {
    let err = || ParseError(text.chars().take(64).collect());
    let first = text.split_whitespace().next().ok_or_else(err)?;
    let (secs, frac) = first.split_once('.').unwrap_or((first, ""));
    if secs.is_empty() || !secs.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    if frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err());
    }
    let secs: u64 = secs.parse().map_err(|_| err())?;
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        let scale = 10u32.pow(9 - frac.len() as u32);
        frac.parse::<u32>().map_err(|_| err())? * scale
    };
    Ok(Duration::new(secs, nanos))
}

/// The guest's uptime now.
pub fn read() -> Result<Duration, ParseError> {
    let text = std::fs::read_to_string("/proc/uptime").map_err(|e| ParseError(e.to_string()))?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_kernel_format() {
        assert_eq!(parse("0.12 0.00\n"), Ok(Duration::from_millis(120)));
        assert_eq!(parse("3 1"), Ok(Duration::from_secs(3)));
        assert_eq!(
            parse("12345.67 9.1\n"),
            Ok(Duration::new(12345, 670_000_000))
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            " ",
            "-1.0 0",
            "1.2.3 0",
            "x 0",
            "1.x 0",
            ".5 0",
            "1.0000000001 0",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = parse(&s);
        }

        #[test]
        fn round_trips_centiseconds(secs in 0u64..10_000_000, cs in 0u32..100) {
            let d = parse(&format!("{secs}.{cs:02} 1.00\n")).unwrap();
            prop_assert_eq!(d, Duration::new(secs, cs * 10_000_000));
        }
    }
}
