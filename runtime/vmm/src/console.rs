//! The serial console's sink, which also watches for a kernel panic: a guest
//! that panics resets (panic=-1) like one that powers off, and only its last
//! words tell the two apart.
//!
//! A console file never grows past [`MAX_FILE`]: the guest writes to its
//! console as much as it likes, and only its newest output is worth keeping.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

pub(crate) const PANIC: &str = "Kernel panic - not syncing";
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

/// The most a console file holds. Once it is full, its newest half (from a
/// line start) moves to the front behind one line that says how much was
/// dropped, so the file always ends with the guest's latest words.
pub const MAX_FILE: u64 = 256 * 1024;

/// A console file bounded by [`MAX_FILE`] (by `max` in tests). Writes at
/// offsets of its own, so trimming needs no reopening and no second file.
pub struct CappedFile {
    file: File,
    len: u64,
    max: u64,
    /// Bytes of guest output dropped so far.
    dropped: u64,
    /// Length of the note at the front (0 before the first trim).
    note: u64,
}

impl CappedFile {
    /// Creates (or truncates) the file at `path`.
    pub fn create(path: &Path) -> io::Result<Self> {
        Ok(Self::with_max(open(path)?, MAX_FILE))
    }

    pub(crate) fn with_max(file: File, max: u64) -> Self {
        CappedFile {
            file,
            len: 0,
            max,
            dropped: 0,
            note: 0,
        }
    }

    /// Keeps the newest half of the file, starting at a line if one starts
    /// there, behind a line counting what went.
    fn trim(&mut self) -> io::Result<()> {
        let mut keep = vec![0u8; (self.max / 2) as usize];
        let from = self.len - keep.len() as u64;
        self.file.read_exact_at(&mut keep, from)?;
        let start = keep.iter().position(|&b| b == b'\n').map_or(0, |nl| nl + 1);
        // The previous note is not guest output.
        self.dropped += from + start as u64 - self.note;
        let note = format!(
            "[okvm: {} earlier bytes of console output dropped]\n",
            self.dropped
        );
        self.file.write_all_at(note.as_bytes(), 0)?;
        self.file.write_all_at(&keep[start..], note.len() as u64)?;
        self.note = note.len() as u64;
        self.len = self.note + (keep.len() - start) as u64;
        self.file.set_len(self.len)
    }
}

/// Trimming reads the file back, so it is opened for both.
fn open(path: &Path) -> io::Result<File> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
}

impl Write for CappedFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if self.len >= self.max {
            self.trim()?;
        }
        let n = buf.len().min((self.max - self.len) as usize);
        self.file.write_all_at(&buf[..n], self.len)?;
        self.len += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_console_file_keeps_its_newest_lines_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let max = 4096;
        let mut f = CappedFile::with_max(open(&path).unwrap(), max);
        let mut written = 0u64;
        for i in 0..10_000 {
            let line = format!("line {i}\n");
            f.write_all(line.as_bytes()).unwrap();
            written += line.len() as u64;
            assert!(std::fs::metadata(&path).unwrap().len() <= max);
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        // The note first, then whole lines, ending with the last one written.
        let note = lines.next().unwrap();
        let dropped: u64 = note
            .strip_prefix("[okvm: ")
            .and_then(|n| n.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{note}"));
        let kept: Vec<&str> = lines.collect();
        assert!(kept.iter().all(|l| l.starts_with("line ")), "{kept:?}");
        assert_eq!(kept.last(), Some(&"line 9999"));
        let numbers: Vec<u32> = kept.iter().map(|l| l[5..].parse().unwrap()).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "a gap");
        assert!(text.len() as u64 >= max / 2, "too much dropped");
        let kept_bytes = (text.len() - note.len() - 1) as u64;
        assert_eq!(dropped + kept_bytes, written, "the note's count is exact");
    }

    #[test]
    fn output_without_newlines_is_trimmed_too() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("console.log");
        let mut f = CappedFile::with_max(open(&path).unwrap(), 1000);
        // One big write goes in as much as fits; write_all does the rest.
        f.write_all(&[b'x'; 5000]).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes.len() <= 1000 && bytes.ends_with(b"xxxx"),
            "{}",
            bytes.len()
        );
    }

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
