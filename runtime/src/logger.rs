//! The logger behind the `log` facade: stderr by default, or the file `--log`
//! names (conmon and containerd read the runtime's errors from there), as text
//! lines or, with `--log-format json`, as runc's JSON lines
//! (`{"level":…,"msg":…,"time":…}`).

use std::io::Write;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Text,
    Json,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Format::Text),
            "json" => Ok(Format::Json),
            other => Err(format!("unknown log format {other:?}: use text or json")),
        }
    }
}

struct Logger {
    sink: Mutex<Box<dyn Write + Send>>,
    format: Format,
}

fn level_name(level: log::Level) -> &'static str {
    match level {
        log::Level::Error => "error",
        log::Level::Warn => "warning",
        log::Level::Info => "info",
        log::Level::Debug => "debug",
        log::Level::Trace => "trace",
    }
}

/// One record as a line in `format`.
pub fn line(format: Format, level: log::Level, msg: &str, unix_time: f64) -> String {
    match format {
        Format::Text => format!("okvm: {}: {msg}\n", level_name(level)),
        Format::Json => {
            let level = match level {
                log::Level::Warn => "warning",
                l => level_name(l),
            };
            format!(
                "{}\n",
                serde_json::json!({ "level": level, "msg": msg, "time": unix_time })
            )
        }
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let text = line(self.format, record.level(), &record.args().to_string(), now);
        // One write per line, so lines from several threads do not interleave.
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        let _ = sink.write_all(text.as_bytes());
        let _ = sink.flush();
    }

    fn flush(&self) {}
}

/// Installs the logger. `OKVM_LOG` (error, warn, info, debug, trace) overrides
/// `default`. A log file that cannot be opened falls back to stderr, with a
/// warning there.
pub fn init(default: log::LevelFilter, file: Option<&Path>, format: Format) {
    let level = std::env::var("OKVM_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    let mut warning = None;
    let sink: Box<dyn Write + Send> = match file {
        Some(path) => match std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            Ok(f) => Box::new(f),
            Err(e) => {
                warning = Some(format!("cannot open log file {}: {e}", path.display()));
                Box::new(std::io::stderr())
            }
        },
        None => Box::new(std::io::stderr()),
    };
    let logger = Logger {
        sink: Mutex::new(sink),
        format,
    };
    // Leaked on purpose: the logger lives as long as the process.
    if log::set_logger(Box::leak(Box::new(logger))).is_ok() {
        log::set_max_level(level);
    }
    if let Some(w) = warning {
        log::warn!("{w}");
    }
}

/// The last `n` lines of the file at `path` (fewer if it has fewer; none if
/// it cannot be read), read from at most its last [`TAIL_BYTES`]: files the
/// guest fills (the console) or can make log (the sandbox's log) may be
/// large, and only their end is wanted.
pub fn last_lines(path: &Path, n: usize) -> Vec<String> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    let len = f.metadata().map_or(0, |m| m.len());
    let from = len.saturating_sub(TAIL_BYTES);
    let mut bytes = Vec::new();
    if f.seek(SeekFrom::Start(from)).is_err() || f.take(TAIL_BYTES).read_to_end(&mut bytes).is_err()
    {
        return Vec::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let mut lines: Vec<&str> = text.lines().collect();
    // A line cut by the window's start is not a line.
    if from > 0 && !lines.is_empty() {
        lines.remove(0);
    }
    let skip = lines.len().saturating_sub(n);
    lines[skip..].iter().map(|l| l.to_string()).collect()
}

/// How much of a file's end [`last_lines`] reads.
pub const TAIL_BYTES: u64 = 8192;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_reads_only_the_end_of_a_large_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut text = String::new();
        for i in 0..100_000 {
            text.push_str(&format!("line {i}\n"));
        }
        std::fs::write(&path, &text).unwrap();
        assert_eq!(
            last_lines(&path, 3),
            ["line 99997", "line 99998", "line 99999"]
        );
        // A window full of one endless line yields no fragment of it.
        std::fs::write(&path, "x".repeat(100_000)).unwrap();
        assert!(last_lines(&path, 5).is_empty());
        std::fs::write(&path, "only\n").unwrap();
        assert_eq!(last_lines(&path, 5), ["only"]);
        assert!(last_lines(&dir.path().join("missing"), 5).is_empty());
    }

    #[test]
    fn lines_in_both_formats() {
        assert_eq!(
            line(Format::Text, log::Level::Warn, "careful", 0.0),
            "okvm: warning: careful\n"
        );
        let j: serde_json::Value =
            serde_json::from_str(&line(Format::Json, log::Level::Error, "boom \"x\"", 1.5))
                .unwrap();
        assert_eq!(j["level"], "error");
        assert_eq!(j["msg"], "boom \"x\"");
        assert_eq!(j["time"], 1.5);
        assert!("yaml".parse::<Format>().is_err());
    }
}
