//! The serial console's sink, which also watches for a kernel panic: a guest
//! that panics resets (panic=-1) like one that powers off, and only its last
//! words tell the two apart.

use std::io::{self, Write};
use std::sync::{Arc, Mutex};

const PANIC: &str = "Kernel panic - not syncing";
/// Longest console line kept while looking for the panic message.
const MAX_LINE: usize = 512;

/// The panic line, once seen.
#[derive(Clone, Default)]
pub struct PanicNote(Arc<Mutex<Option<String>>>);

impl PanicNote {
    pub fn get(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Forwards console output to `inner` and records a panic line.
pub struct Watched<W> {
    inner: W,
    line: Vec<u8>,
    note: PanicNote,
    /// When the VMM started, to log when the guest first spoke (boot profiling).
    started: Option<std::time::Instant>,
}

impl<W: Write> Watched<W> {
    pub fn new(inner: W) -> (Self, PanicNote) {
        let note = PanicNote::default();
        (
            Watched {
                inner,
                line: Vec::new(),
                note: note.clone(),
                started: Some(std::time::Instant::now()),
            },
            note,
        )
    }

    fn scan(&mut self, bytes: &[u8]) {
        if let Some(t) = self.started.take() {
            log::debug!("vm: first console output after {:?}", t.elapsed());
        }
        for &b in bytes {
            if b == b'\n' {
                let line = String::from_utf8_lossy(&self.line);
                if let Some(at) = line.find(PANIC) {
                    let mut note = self.note.0.lock().unwrap_or_else(|e| e.into_inner());
                    note.get_or_insert_with(|| line[at..].trim_end().to_string());
                }
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }
}

impl<W: Write> Write for Watched<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.scan(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_panic_line_is_kept_and_output_passes_through() {
        let (mut w, note) = Watched::new(Vec::new());
        for chunk in [
            &b"[ 1.0] Kernel pa"[..],
            b"nic - not syncing: VFS: no root\r\n",
            b"more\n",
        ] {
            w.write_all(chunk).unwrap();
        }
        assert_eq!(
            note.get().as_deref(),
            Some("Kernel panic - not syncing: VFS: no root")
        );
        assert!(w.inner.ends_with(b"more\n"));
    }

    #[test]
    fn ordinary_output_is_no_panic() {
        let (mut w, note) = Watched::new(io::sink());
        w.write_all(&[b'x'; 4096]).unwrap();
        w.write_all(b"\nall fine\n").unwrap();
        assert_eq!(note.get(), None);
    }
}
