//! A plain stderr logger for the `log` facade: one line per record, prefixed
//! like okvm's own error lines so users can tell whose message it is.

use std::io::Write;

struct Stderr;

impl log::Log for Stderr {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Error => "error",
            log::Level::Warn => "warning",
            log::Level::Info => "info",
            log::Level::Debug => "debug",
            log::Level::Trace => "trace",
        };
        // One write per line, so lines from several threads do not interleave.
        let line = format!("okvm: {level}: {}\n", record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

/// Installs the logger; `OKVM_LOG` (error, warn, info, debug, trace) overrides `default`.
pub fn init(default: log::LevelFilter) {
    let level = std::env::var("OKVM_LOG")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default);
    if log::set_logger(&Stderr).is_ok() {
        log::set_max_level(level);
    }
}
