//! What the guest writes to its legacy ports: the serial console (into a
//! bounded console file, watched for a kernel panic line) and the i8042.

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};

use nix::sys::memfd::{memfd_create, MemFdCreateFlag};

use vmm_sys_util::eventfd::EventFd;

use super::{Input, Script, Seed};
use crate::console::{CappedFile, Watched, PANIC};
use crate::legacy::{Legacy, I8042_COMMAND, I8042_DATA, SERIAL_PORT};

/// The console file's bound here: small, so that inputs reach trimming.
const MAX: u64 = 1024;

const TEXT: u8 = 0;
const WRITE: u8 = 1;
const READ: u8 = 2;

fn port(sel: u16) -> u16 {
    match sel % 12 {
        p @ 0..=7 => SERIAL_PORT + p,
        8 => I8042_DATA,
        9 => I8042_COMMAND,
        _ => sel,
    }
}

pub fn console(data: &[u8]) {
    let mut input = Input::new(data);
    let fd = memfd_create(c"okvm-fuzz-console", MemFdCreateFlag::MFD_CLOEXEC).expect("memfd");
    let file = File::from(fd);
    let Ok(mut seen) = file.try_clone() else {
        return;
    };
    let file = CappedFile::with_max(file, MAX);
    let (watched, panic) = Watched::new(file);
    let irq = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let reset = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    let mut legacy = Legacy::new(irq, reset, watched);
    while !input.is_empty() {
        match input.u8() % 3 {
            TEXT => {
                let n = usize::from(input.u8());
                for &b in input.bytes(n) {
                    legacy.pio_write(SERIAL_PORT, &[b]);
                }
            }
            op => {
                let (port, len, value) =
                    (port(input.u16()), usize::from(input.u8() % 5), input.u32());
                if op == WRITE {
                    legacy.pio_write(port, &value.to_le_bytes()[..len]);
                } else {
                    let mut buf = [0u8; 4];
                    legacy.pio_read(port, &mut buf[..len]);
                }
            }
        }
    }
    let _ = legacy.serial.writer_mut().flush();
    let len = seen.seek(SeekFrom::End(0)).unwrap_or(0);
    assert!(len <= MAX, "a console file of {len} bytes");
    if let Some(line) = panic.get() {
        assert!(line.starts_with(PANIC), "{line:?}");
    }
}

pub(crate) fn seeds() -> Vec<Seed> {
    let mut s = Script::new();
    for line in [
        "[    0.1] Linux version 6.12\n",
        "[    1.0] Kernel panic - not syncing: VFS: no root\n",
    ] {
        s.u8(TEXT).u8(line.len() as u8).bytes(line.as_bytes());
    }
    // LCR with DLAB, the divisor, LCR back; the i8042's reset command.
    for (p, v) in [(3u16, 0x80u32), (0, 1), (1, 0), (3, 3)] {
        s.u8(WRITE).u16(p).u8(1).u32(v);
    }
    s.u8(READ).u16(5).u8(1).u32(0);
    s.u8(WRITE).u16(9).u8(1).u32(0xfe);
    vec![("console", "boot-then-panic", s.done())]
}
