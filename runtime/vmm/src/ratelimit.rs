//! Log lines a guest can cause. A hostile guest repeats whatever makes the
//! VMM log, as fast as it can, so every such line goes through here and is
//! bounded twice:
//!
//! - per kind of event, per device: [`Limited`] logs the 1st, 2nd, 4th, 8th…
//!   occurrence with the count so far, so a flood costs one line per
//!   doubling, not one per packet;
//! - per process (one VM): at most [`BURST`] lines at once, then one per
//!   [`REFILL`], whatever their kind (a guest that resets a device to re-arm
//!   its counters, or that finds many kinds of fault, hits this). Lines
//!   beyond it are dropped and counted; the next line that passes says how
//!   many.
//!
//! The process-wide budget is a GCRA token bucket ([`Bucket`]); it is ten
//! lines of arithmetic, which a rate-limiting crate and its dependencies
//! would not make any clearer.

use std::fmt::{self, Display};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use log::Level;

/// Guest-caused lines a process may log at once.
pub const BURST: u32 = 100;
/// After the burst: one line per this long.
pub const REFILL: Duration = Duration::from_secs(10);
/// The longest piece of guest-chosen text a line quotes (see [`quote`]).
pub const MAX_QUOTE: usize = 512;

/// A GCRA token bucket: `burst` admissions at once, then one per `every`.
#[derive(Debug)]
pub struct Bucket {
    burst: u32,
    every: Duration,
    /// When the bucket will be full again (None: it is full).
    full_at: Option<Instant>,
    /// Refused since the last admission.
    refused: u64,
}

impl Bucket {
    pub const fn new(burst: u32, every: Duration) -> Self {
        Bucket {
            burst,
            every,
            full_at: None,
            refused: 0,
        }
    }

    /// Whether one more line may go out at `now`: `Some(n)` with the number
    /// of lines refused since the last one that went out, `None` if this one
    /// is refused.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let full_at = self.full_at.map_or(now, |t| t.max(now));
        // Each admission pushes "full again" one period further; once it is
        // `burst` periods ahead, the bucket is empty.
        let horizon = self.every.saturating_mul(self.burst.saturating_sub(1));
        if full_at > now + horizon {
            self.refused += 1;
            return None;
        }
        self.full_at = Some(full_at + self.every);
        Some(std::mem::take(&mut self.refused))
    }
}

static BUDGET: Mutex<Bucket> = Mutex::new(Bucket::new(BURST, REFILL));

/// Logs one guest-caused line at `level` if the process's budget allows.
pub fn log(level: log::Level, args: fmt::Arguments<'_>) {
    if !log::log_enabled!(level) {
        return;
    }
    let admitted = BUDGET
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .admit(Instant::now());
    match admitted {
        None => {}
        Some(0) => log::log!(level, "{args}"),
        Some(n) => log::log!(
            level,
            "{args} ({n} earlier guest-caused log lines suppressed)"
        ),
    }
}

/// [`log`] at warning level, with `format!` arguments.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {
        $crate::ratelimit::log($crate::ratelimit::Level::Warn, format_args!($($arg)+))
    };
}

/// Counts events of each kind `K` (a device's fault enum, whose `Display`
/// says what happened) and logs the 1st, 2nd, 4th, 8th… of each through the
/// process's budget. Lives as long as the device's worker.
#[derive(Debug)]
pub struct Limited<K> {
    /// Prefix of every line (the device: "virtio-net", "vsock").
    device: &'static str,
    /// Kinds are a small closed set, so a scan beats a map.
    seen: Vec<(K, u64)>,
}

impl<K: Copy + Eq + Display> Limited<K> {
    pub fn new(device: &'static str) -> Self {
        Limited {
            device,
            seen: Vec::new(),
        }
    }

    /// One more event of kind `kind`; `detail` (ports, sizes, an error) is
    /// only formatted when the line is logged.
    pub fn note(&mut self, kind: K, detail: impl Display) {
        let n = match self.seen.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => {
                *n += 1;
                *n
            }
            None => {
                self.seen.push((kind, 1));
                1
            }
        };
        if n.is_power_of_two() {
            log(
                log::Level::Warn,
                format_args!("{}: {kind} ({detail}); {n} so far", self.device),
            );
        }
    }

    /// How many events of kind `kind` there were.
    pub fn count(&self, kind: K) -> u64 {
        self.seen
            .iter()
            .find(|(k, _)| *k == kind)
            .map_or(0, |(_, n)| *n)
    }

    /// How many events there were, of all kinds.
    pub fn total(&self) -> u64 {
        self.seen.iter().map(|(_, n)| n).sum()
    }
}

/// Guest-chosen text (an error message from okvm-init, a string in a frame)
/// made fit for a log line: at most [`MAX_QUOTE`] characters, control
/// characters escaped, so that a guest can neither make a line huge nor
/// forge lines of its own with a newline.
pub fn quote(text: &str) -> Quoted<'_> {
    Quoted(text)
}

pub struct Quoted<'a>(&'a str);

impl Display for Quoted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut chars = self.0.chars();
        for c in chars.by_ref().take(MAX_QUOTE) {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                write!(f, "{c}")?;
            }
        }
        if chars.next().is_some() {
            write!(f, "…")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_passes_a_burst_then_one_line_per_period() {
        let mut b = Bucket::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.admit(t0), Some(0));
        }
        // Empty: everything is refused and counted until a period has passed.
        assert_eq!(b.admit(t0), None);
        assert_eq!(b.admit(t0 + Duration::from_secs(9)), None);
        assert_eq!(b.admit(t0 + Duration::from_secs(10)), Some(2));
        assert_eq!(b.admit(t0 + Duration::from_secs(11)), None);
        assert_eq!(b.admit(t0 + Duration::from_secs(20)), Some(1));
        // A long quiet spell refills it to the burst, never beyond.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert_eq!(b.admit(later), Some(0));
        }
        assert_eq!(b.admit(later), None);
    }

    #[test]
    fn a_flood_for_an_hour_passes_the_burst_plus_one_line_per_period() {
        let mut b = Bucket::new(BURST, REFILL);
        let t0 = Instant::now();
        let mut passed = 0u64;
        // A line every millisecond for an hour.
        for ms in 0..3_600_000u64 {
            if b.admit(t0 + Duration::from_millis(ms)).is_some() {
                passed += 1;
            }
        }
        let bound = u64::from(BURST) + 3600 / REFILL.as_secs();
        assert!(
            passed <= bound && passed >= bound - 1,
            "{passed} vs {bound}"
        );
    }

    #[derive(Clone, Copy, PartialEq, Eq, Debug)]
    enum Fault {
        A,
        B,
    }

    impl Display for Fault {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "fault {self:?}")
        }
    }

    #[test]
    fn each_kind_is_counted_and_logged_at_powers_of_two() {
        let mut l = Limited::new("dev");
        let mut logged = 0;
        for _ in 0..1000 {
            let before = l.count(Fault::A);
            l.note(Fault::A, "x");
            if (before + 1).is_power_of_two() {
                logged += 1;
            }
        }
        l.note(Fault::B, 7);
        assert_eq!((l.count(Fault::A), l.count(Fault::B)), (1000, 1));
        // 1, 2, 4, … 512: ten lines for a thousand events.
        assert_eq!(logged, 10);
    }

    #[test]
    fn quoted_guest_text_is_short_and_on_one_line() {
        let forged = format!("oops\nokvm: error: forged{}", "x".repeat(1000));
        let q = quote(&forged).to_string();
        assert!(!q.contains('\n'), "{q}");
        assert!(q.starts_with("oops\\nokvm: error: forged"));
        assert!(q.chars().count() <= MAX_QUOTE + 10 && q.ends_with('…'));
        assert_eq!(quote("plain").to_string(), "plain");
    }
}
