//! How a host process ends to stand for a guest process: the sandbox for the
//! container's process, an exec proxy for its process, `okvm run` for the
//! sandbox. Faithfully where that is possible (its exit code, or death by its
//! signal, which the host process raises on itself), and never in a way the
//! guest could abuse: the status comes from a guest that may lie, and a
//! host process must not stop itself, raise a signal glibc uses for itself,
//! or hand on a code that does not fit a wait status.
//!
//! | the guest reports | the host process ends with |
//! |---|---|
//! | exit code 0–255 | that code |
//! | exit code < 0 or > 255, or nothing at all | exit code 255 |
//! | a signal whose default action ends a process (1–16, 24–27, 29–31, SIGRTMIN–SIGRTMAX) | death by that signal (no core dump) |
//! | a signal that cannot end a process: SIGCHLD, SIGCONT, SIGURG, SIGWINCH (17, 18, 23, 28), or stops it: SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU (19–22) | exit code 128 + n, as a shell reports it |
//! | glibc's own signals (32, 33, below SIGRTMIN) | exit code 128 + n |
//! | signal 0, a negative one, or one above SIGRTMAX (64) | exit code 255 |
//!
//! A signal, when there is one, decides: a process that was killed has no
//! exit code, so a code beside it is ignored.

/// How the host process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// `exit(code)`.
    Code(u8),
    /// Death by this signal, raised on itself; its default action is to
    /// end the process.
    Signal(i32),
}

/// The exit code for anything that cannot be a wait status.
pub const NONSENSE: u8 = 255;

/// Standard signals whose default action ends the process (Linux's numbers,
/// signal(7)).
const FATAL: [i32; 23] = [
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26, 27, 29, 30, 31,
];

impl Ending {
    /// The ending for a guest process that ended with exit `code` or by
    /// `signal`, as the guest reported it.
    pub fn of(code: Option<i32>, signal: Option<i32>) -> Ending {
        Self::with_realtime(code, signal, libc::SIGRTMIN(), libc::SIGRTMAX())
    }

    /// [`Ending::of`] with the C library's real-time signal range.
    fn with_realtime(code: Option<i32>, signal: Option<i32>, rtmin: i32, rtmax: i32) -> Ending {
        match (signal, code) {
            (Some(n), _) if FATAL.contains(&n) || (rtmin..=rtmax).contains(&n) => Ending::Signal(n),
            // 128 + n fits: n is at most 64 here.
            (Some(n @ 1..=64), _) => Ending::Code(128 + n as u8),
            (Some(_), _) => Ending::Code(NONSENSE),
            (None, Some(c)) => Ending::Code(u8::try_from(c).unwrap_or(NONSENSE)),
            (None, None) => Ending::Code(NONSENSE),
        }
    }

    /// Whether this ending shows the status exactly as the guest reported
    /// it (otherwise the report was impossible, and is worth a warning).
    pub fn is_faithful(self, code: Option<i32>, signal: Option<i32>) -> bool {
        match self {
            Ending::Signal(n) => signal == Some(n),
            Ending::Code(c) => signal.is_none() && code == Some(i32::from(c)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const RTMIN: i32 = 34;
    const RTMAX: i32 = 64;

    fn of(code: Option<i32>, signal: Option<i32>) -> Ending {
        Ending::with_realtime(code, signal, RTMIN, RTMAX)
    }

    #[test]
    fn the_c_library_agrees_on_the_real_time_range() {
        assert_eq!((libc::SIGRTMIN(), libc::SIGRTMAX()), (RTMIN, RTMAX));
    }

    #[test]
    fn every_signal_number_has_its_ending() {
        for n in -70..=300 {
            let want = match n {
                1..=16 | 24..=27 | 29..=31 | 34..=64 => Ending::Signal(n),
                17..=23 | 28 | 32 | 33 => Ending::Code(128 + n as u8),
                _ => Ending::Code(255),
            };
            assert_eq!(of(None, Some(n)), want, "signal {n}");
            // A code beside a signal changes nothing.
            assert_eq!(of(Some(3), Some(n)), want, "signal {n} with code 3");
        }
        for n in [i32::MIN, i32::MIN + 1, i32::MAX - 127, i32::MAX] {
            assert_eq!(of(None, Some(n)), Ending::Code(255), "signal {n}");
        }
    }

    #[test]
    fn the_stop_family_never_stops_the_host_process() {
        for (n, name) in [
            (19, "SIGSTOP"),
            (20, "SIGTSTP"),
            (21, "SIGTTIN"),
            (22, "SIGTTOU"),
        ] {
            assert_eq!(of(None, Some(n)), Ending::Code(128 + n as u8), "{name}");
        }
    }

    #[test]
    fn every_exit_code_has_its_ending() {
        for c in -300..=600 {
            let want = match u8::try_from(c) {
                Ok(c) => Ending::Code(c),
                Err(_) => Ending::Code(255),
            };
            assert_eq!(of(Some(c), None), want, "code {c}");
        }
        for c in [i32::MIN, i32::MAX] {
            assert_eq!(of(Some(c), None), Ending::Code(255), "code {c}");
        }
        assert_eq!(of(None, None), Ending::Code(255));
    }

    #[test]
    fn only_real_statuses_are_faithful() {
        assert!(of(Some(3), None).is_faithful(Some(3), None));
        assert!(of(None, Some(9)).is_faithful(None, Some(9)));
        assert!(!of(Some(300), None).is_faithful(Some(300), None));
        assert!(!of(None, Some(19)).is_faithful(None, Some(19)));
        assert!(!of(None, None).is_faithful(None, None));
    }

    proptest! {
        #[test]
        fn any_report_gives_an_exit_code_or_a_fatal_signal(
            code in any::<Option<i32>>(),
            signal in any::<Option<i32>>(),
        ) {
            match of(code, signal) {
                Ending::Signal(n) => {
                    prop_assert_eq!(signal, Some(n));
                    prop_assert!(FATAL.contains(&n) || (RTMIN..=RTMAX).contains(&n));
                    prop_assert!(!(17..=23).contains(&n) && n != 28);
                }
                Ending::Code(c) => {
                    if let (None, Some(k)) = (signal, code) {
                        prop_assert!(i32::from(c) == k || c == NONSENSE);
                    }
                }
            }
        }
    }
}
