//! Fuzz targets for everything the guest feeds the VMM (docs/fuzzing.md).
//!
//! Each target takes arbitrary bytes and drives the real code with them, on
//! the calling thread and without KVM: the transport's registers (`mmio`), the
//! serial port and the i8042 (`console`), and the rng, net and vsock devices'
//! queues as a driver lays them out in guest memory ([`queues`]), the
//! handlers being served one epoll event at a time as their worker thread
//! would. A target must never panic, allocate without bound or hang,
//! whatever the bytes; the devices' own checks (the vsock muxer's books)
//! run after every event.
//!
//! The bytes are read as a small program ([`Input`]); [`seeds`] writes valid
//! programs ([`Script`]) for the seed corpus in the repository's
//! `fuzz/corpus/`. The `okvm-fuzz` crate runs these functions under
//! libFuzzer (`make fuzz`) and replays the corpus in `cargo test`.

mod console;
mod mmio;
pub(crate) mod queues;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

pub use console::console;
pub use mmio::mmio;
pub use queues::{net, rng};

pub use crate::virtio::vsock::fuzzing::{vsock, vsock_packet};

use crate::virtio::worker::Handler;
use crate::virtio::{ActivateError, Activation, VirtioDevice};

/// A fuzz target: its name (its corpus directory's and binary's) and entry.
pub type Target = (&'static str, fn(&[u8]));
/// A seed input: the target's name, the seed's, the bytes.
pub type Seed = (&'static str, &'static str, Vec<u8>);

/// Every target.
pub const TARGETS: &[Target] = &[
    ("mmio", mmio),
    ("console", console),
    ("rng", rng),
    ("net", net),
    ("vsock", vsock),
    ("vsock_packet", vsock_packet),
];

/// Valid inputs for each target: (target, seed name, bytes).
pub fn seeds() -> Vec<Seed> {
    let mut all = Vec::new();
    all.extend(mmio::seeds());
    all.extend(console::seeds());
    all.extend(queues::seeds());
    all.extend(crate::virtio::vsock::fuzzing::seeds());
    all
}

/// A device whose worker-thread handler can be had without the thread.
pub(crate) trait Serve: VirtioDevice {
    /// What `activate` would run on the device's thread.
    fn serve(&mut self, a: Activation) -> Result<Box<dyn Handler>, ActivateError>;
}

/// Fuzz bytes read as numbers and byte strings; past the end, everything
/// reads as zero (an empty string), so every input is a whole program.
pub struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to `n` bytes (fewer at the end).
    pub fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (now, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        now
    }

    fn array<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        let b = self.bytes(N);
        a[..b.len()].copy_from_slice(b);
        a
    }

    pub fn u8(&mut self) -> u8 {
        self.array::<1>()[0]
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.array())
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.array())
    }

    pub fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.array())
    }
}

/// Writes what [`Input`] reads: the seeds' encoder.
#[derive(Default)]
pub struct Script(Vec<u8>);

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.0.push(v);
        self
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes(&v.to_le_bytes())
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.0.extend_from_slice(b);
        self
    }

    pub fn done(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.0)
    }
}

/// Reads its bytes `chunk` at a time, as a descriptor chain or a socket may
/// hand them over.
pub struct Chunked<'a> {
    data: &'a [u8],
    chunk: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], chunk: usize) -> Self {
        Chunked {
            data,
            chunk: chunk.max(1),
        }
    }
}

impl std::io::Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.chunk).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

/// A directory of the target's own for one input (device sockets), removed
/// with everything in it afterwards.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new() -> std::io::Result<Scratch> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        // tmpfs when there is one: a disk's file system makes creating and
        // removing files the slowest part of an input.
        let shm = Path::new("/dev/shm");
        let base = if shm.is_dir() {
            shm.to_path_buf()
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("okvm-fuzz-{}-{n}", std::process::id()));
        std::fs::create_dir(&dir)?;
        Ok(Scratch(dir))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn input_reads_what_script_writes_then_zeros() {
        let bytes = Script::new()
            .u8(1)
            .u16(0x0302)
            .u32(7)
            .u64(u64::MAX)
            .bytes(b"ab")
            .done();
        let mut i = Input::new(&bytes);
        assert_eq!(
            (i.u8(), i.u16(), i.u32(), i.u64()),
            (1, 0x0302, 7, u64::MAX)
        );
        assert_eq!(i.bytes(5), b"ab");
        assert!(i.is_empty());
        assert_eq!((i.u8(), i.u64()), (0, 0));
    }
}
