//! The guest's resource usage, answering `Stats`: memory from /proc/meminfo,
//! CPU time from the first `cpu ` line of /proc/stat.
//!
//! The whole guest is measured, not only the container's processes: the VM
//! is the container's boundary, as a cgroup is under runc, and a guest has
//! nothing else worth excluding. The parsers are pure functions over the
//! files' text so malformed content can be tested without a guest; none of
//! them panics, whatever the text.

use okvm_protocol::GuestStats;

const MEMINFO: &str = "/proc/meminfo";
const STAT: &str = "/proc/stat";

/// What is wrong with a /proc file's content.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("no {0} line")]
    Missing(&'static str),
    #[error("{field} is {value:?}, not a number of kB")]
    BadMemory { field: &'static str, value: String },
    #[error("MemAvailable ({available} kB) exceeds MemTotal ({total} kB)")]
    AvailableAboveTotal { total: u64, available: u64 },
    #[error("no `cpu ` line")]
    NoCpuLine,
    #[error("field {index} of the cpu line is {value:?}, not a number of ticks")]
    BadTicks { index: usize, value: String },
    #[error("the cpu line has {0} numbers, fewer than the 8 up to steal")]
    ShortCpuLine(usize),
    #[error("{0} clock ticks per second")]
    ClockTicks(i64),
    #[error("the numbers overflow 64 bits")]
    Overflow,
}

/// Why the guest's usage could not be told; each names its file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {file}: {err}")]
    Read {
        file: &'static str,
        err: std::io::Error,
    },
    #[error("{file}: {err}")]
    Parse { file: &'static str, err: ParseError },
}

/// The parts of /proc/meminfo `Stats` reports, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    pub total: u64,
    pub available: u64,
    pub cached: u64,
}

/// CPU time over all CPUs, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cpu {
    pub usage: u64,
    pub user: u64,
    pub system: u64,
}

/// Parses /proc/meminfo ("MemTotal:  250000 kB" lines).
pub fn parse_meminfo(text: &str) -> Result<Memory, ParseError> {
    let kib = |field: &'static str| -> Result<u64, ParseError> {
        let value = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == field).then_some(v)
            })
            .ok_or(ParseError::Missing(field))?;
        let bad = || ParseError::BadMemory {
            field,
            value: value.trim().chars().take(40).collect(),
        };
        match value.split_whitespace().collect::<Vec<_>>()[..] {
            [n, "kB"] => n.parse::<u64>().map_err(|_| bad()),
            _ => Err(bad()),
        }
    };
    let (total, available, cached) = (kib("MemTotal")?, kib("MemAvailable")?, kib("Cached")?);
    if available > total {
        return Err(ParseError::AvailableAboveTotal { total, available });
    }
    let bytes = |k: u64| k.checked_mul(1024).ok_or(ParseError::Overflow);
    Ok(Memory {
        total: bytes(total)?,
        available: bytes(available)?,
        cached: bytes(cached)?,
    })
}

/// The first `cpu ` line of /proc/stat: the sum over all CPUs.
pub fn cpu_line(stat: &str) -> Result<&str, ParseError> {
    stat.lines()
        .find(|l| l.starts_with("cpu "))
        .ok_or(ParseError::NoCpuLine)
}

/// Parses a `cpu ` line (user nice system idle iowait irq softirq steal
/// [guest guest_nice], in ticks of `clk_tck` a second). guest and guest_nice
/// are already inside user and nice, so they are not added again.
pub fn parse_cpu_line(line: &str, clk_tck: i64) -> Result<Cpu, ParseError> {
    let rest = line.strip_prefix("cpu ").ok_or(ParseError::NoCpuLine)?;
    let ticks = rest
        .split_whitespace()
        .enumerate()
        .map(|(i, v)| {
            v.parse::<u64>().map_err(|_| ParseError::BadTicks {
                index: i + 1,
                value: v.chars().take(40).collect(),
            })
        })
        .collect::<Result<Vec<u64>, _>>()?;
    let &[user, nice, system, _idle, _iowait, irq, softirq, steal, ..] = &ticks[..] else {
        return Err(ParseError::ShortCpuLine(ticks.len()));
    };
    let hz = u128::try_from(clk_tck)
        .ok()
        .filter(|&hz| hz > 0)
        .ok_or(ParseError::ClockTicks(clk_tck))?;
    // In u128, so no sum of u64 tick counts can overflow before the check.
    let ns = |parts: &[u64]| -> Result<u64, ParseError> {
        let ticks: u128 = parts.iter().map(|&t| u128::from(t)).sum();
        u64::try_from(ticks * 1_000_000_000 / hz).map_err(|_| ParseError::Overflow)
    };
    Ok(Cpu {
        usage: ns(&[user, nice, system, irq, softirq, steal])?,
        user: ns(&[user, nice])?,
        system: ns(&[system, irq, softirq])?,
    })
}

/// Combines the two files' text into the answer to `Stats`.
pub fn from_text(meminfo: &str, stat: &str, clk_tck: i64, pids: u64) -> Result<GuestStats, Error> {
    let mem = parse_meminfo(meminfo).map_err(|err| Error::Parse { file: MEMINFO, err })?;
    let cpu = cpu_line(stat)
        .and_then(|l| parse_cpu_line(l, clk_tck))
        .map_err(|err| Error::Parse { file: STAT, err })?;
    Ok(GuestStats {
        memory_total_bytes: mem.total,
        memory_used_bytes: mem.total.saturating_sub(mem.available),
        memory_cache_bytes: mem.cached,
        cpu_usage_ns: cpu.usage,
        cpu_user_ns: cpu.user,
        cpu_system_ns: cpu.system,
        pids,
    })
}

/// The guest's usage now; `pids` is the container's process count.
pub fn read(pids: u64) -> Result<GuestStats, Error> {
    let read = |file| std::fs::read_to_string(file).map_err(|err| Error::Read { file, err });
    let (meminfo, stat) = (read(MEMINFO)?, read(STAT)?);
    from_text(&meminfo, &stat, clk_tck(), pids)
}

/// USER_HZ, the unit of /proc/stat. A failed sysconf gives -1, which the
/// parser then reports rather than guessing a unit.
fn clk_tck() -> i64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(hz)) => hz,
        _ => -1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 256 MiB okvm guest's /proc/meminfo (Linux 6.12), abridged at the end.
    const MEMINFO_SAMPLE: &str = "\
MemTotal:         238672 kB
MemFree:          214500 kB
MemAvailable:     212048 kB
Buffers:               0 kB
Cached:             5184 kB
SwapCached:            0 kB
Active:             2432 kB
Inactive:           4076 kB
SwapTotal:             0 kB
SwapFree:              0 kB
Shmem:                 8 kB
HugePages_Total:       0
HugePages_Free:        0
Hugepagesize:       2048 kB
";

    const STAT_SAMPLE: &str = "\
cpu  120 3 450 98000 12 7 20 5 0 0
cpu0 60 1 200 49000 6 4 10 2 0 0
cpu1 60 2 250 49000 6 3 10 3 0 0
intr 123456 0 9 0 0
ctxt 98765
btime 1700000000
processes 321
procs_running 1
procs_blocked 0
softirq 5000 0 100 0 0 0 0 200 0 0 4700
";

    #[test]
    fn parses_a_real_meminfo() {
        assert_eq!(
            parse_meminfo(MEMINFO_SAMPLE),
            Ok(Memory {
                total: 238672 * 1024,
                available: 212048 * 1024,
                cached: 5184 * 1024,
            })
        );
    }

    #[test]
    fn parses_the_summed_cpu_line_not_a_single_cpu() {
        let line = cpu_line(STAT_SAMPLE).unwrap();
        assert!(line.starts_with("cpu  120"));
        // user 120 + nice 3; system 450 + irq 7 + softirq 20; + steal 5.
        let cpu = parse_cpu_line(line, 100).unwrap();
        assert_eq!(cpu.user, 123 * 10_000_000);
        assert_eq!(cpu.system, 477 * 10_000_000);
        assert_eq!(cpu.usage, 605 * 10_000_000);
        assert_eq!(parse_cpu_line(line, 1000).unwrap().usage, 605 * 1_000_000);
    }

    #[test]
    fn a_kernel_without_the_guest_columns_is_fine() {
        let cpu = parse_cpu_line("cpu 1 0 1 5 0 0 0 0", 100).unwrap();
        assert_eq!(cpu.usage, 20_000_000);
    }

    #[test]
    fn stats_combine_both_files() {
        let s = from_text(MEMINFO_SAMPLE, STAT_SAMPLE, 100, 2).unwrap();
        assert_eq!(s.memory_total_bytes, 238672 * 1024);
        assert_eq!(s.memory_used_bytes, (238672 - 212048) * 1024);
        assert_eq!(s.memory_cache_bytes, 5184 * 1024);
        assert_eq!(s.cpu_usage_ns, 6_050_000_000);
        assert_eq!(s.pids, 2);
    }

    #[test]
    fn errors_name_the_file() {
        let e = from_text("", STAT_SAMPLE, 100, 0).unwrap_err().to_string();
        assert_eq!(e, "/proc/meminfo: no MemTotal line");
        let e = from_text(MEMINFO_SAMPLE, "intr 1\n", 100, 0)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "/proc/stat: no `cpu ` line");
    }

    #[test]
    fn malformed_meminfo_is_an_error() {
        let without = |field: &str| {
            MEMINFO_SAMPLE
                .lines()
                .filter(|l| !l.starts_with(&format!("{field}:")))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(
            parse_meminfo(&without("MemAvailable")),
            Err(ParseError::Missing("MemAvailable"))
        );
        assert_eq!(
            parse_meminfo(&without("Cached")),
            Err(ParseError::Missing("Cached"))
        );
        for bad in [
            "MemTotal: 12\nMemAvailable: 1 kB\nCached: 1 kB",
            "MemTotal: x kB\nMemAvailable: 1 kB\nCached: 1 kB",
            "MemTotal: -5 kB\nMemAvailable: 1 kB\nCached: 1 kB",
            "MemTotal: 5 MB\nMemAvailable: 1 kB\nCached: 1 kB",
            "MemTotal: 5 kB extra\nMemAvailable: 1 kB\nCached: 1 kB",
            "MemTotal 5 kB\nMemAvailable: 1 kB\nCached: 1 kB",
            "\u{0}\u{ff}garbage",
        ] {
            assert!(parse_meminfo(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_meminfo("MemTotal: 1 kB\nMemAvailable: 2 kB\nCached: 0 kB"),
            Err(ParseError::AvailableAboveTotal {
                total: 1,
                available: 2
            })
        );
        let huge = format!(
            "MemTotal: {} kB\nMemAvailable: 1 kB\nCached: 1 kB",
            u64::MAX
        );
        assert_eq!(parse_meminfo(&huge), Err(ParseError::Overflow));
    }

    #[test]
    fn malformed_cpu_lines_are_errors() {
        assert_eq!(
            parse_cpu_line("cpu 1 2 3 4 5 6 7", 100),
            Err(ParseError::ShortCpuLine(7))
        );
        assert_eq!(
            parse_cpu_line("cpu ", 100),
            Err(ParseError::ShortCpuLine(0))
        );
        assert_eq!(
            parse_cpu_line("cpu 1 2 x 4 5 6 7 8", 100),
            Err(ParseError::BadTicks {
                index: 3,
                value: "x".into()
            })
        );
        assert!(parse_cpu_line("cpu 1 -2 3 4 5 6 7 8", 100).is_err());
        assert_eq!(
            parse_cpu_line("cpu0 1 2 3 4 5 6 7 8", 100),
            Err(ParseError::NoCpuLine)
        );
        for hz in [0, -1] {
            assert_eq!(
                parse_cpu_line("cpu 1 2 3 4 5 6 7 8", hz),
                Err(ParseError::ClockTicks(hz))
            );
        }
        let huge = format!("cpu {m} {m} {m} 0 0 {m} {m} {m}", m = u64::MAX);
        assert_eq!(parse_cpu_line(&huge, 100), Err(ParseError::Overflow));
        assert_eq!(cpu_line("cpu0 1 2\ncpux"), Err(ParseError::NoCpuLine));
    }

    #[test]
    fn this_hosts_files_parse() {
        // Linux's own files, as a guest has them: the parsers keep up with
        // the running kernel's format, not only with the samples above.
        let s = read(1).unwrap();
        assert!(s.memory_used_bytes > 0 && s.memory_used_bytes < s.memory_total_bytes);
        assert!(s.cpu_usage_ns > 0);
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}", hz in any::<i64>()) {
            let _ = parse_meminfo(&text);
            let _ = cpu_line(&text).and_then(|l| parse_cpu_line(l, hz));
            let _ = parse_cpu_line(&format!("cpu {text}"), hz);
        }

        #[test]
        fn arbitrary_numbers_never_panic(ticks in proptest::collection::vec(any::<u64>(), 0..12), hz in any::<i64>(), kib in any::<[u64; 3]>()) {
            let line = ticks.iter().fold(String::from("cpu "), |l, t| format!("{l} {t}"));
            let _ = parse_cpu_line(&line, hz);
            let meminfo = format!("MemTotal: {} kB\nMemAvailable: {} kB\nCached: {} kB\n", kib[0], kib[1], kib[2]);
            if let Ok(m) = parse_meminfo(&meminfo) {
                prop_assert!(m.available <= m.total);
            }
        }
    }
}
