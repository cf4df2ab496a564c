//! Putting a Linux kernel, its initramfs, command line and zero page into guest
//! RAM for the 64-bit boot protocol (Documentation/arch/x86/boot.rst).
//!
//! Users bring their own kernels, so both an uncompressed ELF `vmlinux` and a
//! `bzImage` are accepted; the format is told by the file's magic, not its name.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{ram_ranges, MMIO_GAP_START};

/// The zero page (`struct boot_params`).
pub const ZERO_PAGE: u64 = 0x7000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// x86's COMMAND_LINE_SIZE.
pub const CMDLINE_MAX: usize = 2048;
/// Where the kernel is loaded (1 MiB, above the legacy area).
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the EBDA/BIOS area the e820 map keeps out of usable RAM.
pub const EBDA_START: u64 = 0x9_fc00;

const E820_RAM: u32 = 1;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open kernel {path}: {err}")]
    OpenKernel { path: PathBuf, err: std::io::Error },
    #[error("kernel {0} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat(PathBuf),
    #[error("cannot load kernel {path}: {err}")]
    LoadKernel { path: PathBuf, err: loader::Error },
    #[error("cannot read initramfs {path}: {err}")]
    ReadInitrd { path: PathBuf, err: std::io::Error },
    #[error("initramfs {path} ({size} bytes) does not fit in guest RAM below {limit:#x} above the kernel")]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("kernel command line is invalid or longer than {CMDLINE_MAX} bytes: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write boot data into guest memory: {0}")]
    Memory(String),
}

/// What the vCPU set-up needs to know after loading.
#[derive(Debug, Clone, Copy)]
pub struct Loaded {
    /// 64-bit entry point.
    pub entry: GuestAddress,
    pub initrd: Option<(GuestAddress, u64)>,
}

enum Format {
    Elf,
    BzImage,
}

fn sniff(path: &Path, file: &mut File) -> Result<Format, Error> {
    let mut head = [0u8; 0x206];
    let n = read_up_to(file, &mut head).map_err(|err| Error::OpenKernel {
        path: path.into(),
        err,
    })?;
    if n >= 4 && head[..4] == *b"\x7fELF" {
        Ok(Format::Elf)
    } else if n >= 0x206 && head[0x202..0x206] == *b"HdrS" {
        Ok(Format::BzImage)
    } else {
        Err(Error::UnknownFormat(path.into()))
    }
}

fn read_up_to(f: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Loads kernel and initramfs, writes the command line and the zero page.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_mib: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
) -> Result<Loaded, Error> {
    let mut file = File::open(kernel).map_err(|err| Error::OpenKernel {
        path: kernel.into(),
        err,
    })?;
    let format = sniff(kernel, &mut file)?;
    let himem = Some(GuestAddress(HIMEM_START));
    let result = match format {
        Format::Elf => Elf::load(mem, None, &mut file, himem),
        Format::BzImage => BzImage::load(mem, None, &mut file, himem),
    }
    .map_err(|err| Error::LoadKernel {
        path: kernel.into(),
        err,
    })?;
    let entry = match format {
        Format::Elf => result.kernel_load,
        // The 64-bit entry of a bzImage is 0x200 past where its protected-mode
        // part was loaded.
        Format::BzImage => GuestAddress(result.kernel_load.0 + 0x200),
    };

    let low_end = ram_ranges(mem_mib)[0].1.min(MMIO_GAP_START);
    let initrd = match initrd {
        Some(path) => Some(load_initrd(mem, path, result.kernel_end, low_end)?),
        None => None,
    };

    let mut line = Cmdline::new(CMDLINE_MAX).map_err(Error::Cmdline)?;
    line.insert_str(cmdline).map_err(Error::Cmdline)?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &line)
        .map_err(|e| Error::Memory(e.to_string()))?;

    let params = boot_params_for(result.setup_header, cmdline.len() as u32, initrd, mem_mib);
    LinuxBootConfigurator::write_bootparams(
        &BootParams::new(&params, GuestAddress(ZERO_PAGE)),
        mem,
    )
    .map_err(|e| Error::Memory(e.to_string()))?;
    Ok(Loaded { entry, initrd })
}

/// Places the initramfs page-aligned at the top of low RAM, where the kernel's
/// own decompression and early allocations will not reach it.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    low_end: u64,
) -> Result<(GuestAddress, u64), Error> {
    let data = std::fs::read(path).map_err(|err| Error::ReadInitrd {
        path: path.into(),
        err,
    })?;
    let size = data.len() as u64;
    let too_large = || Error::InitrdTooLarge {
        path: path.into(),
        size,
        limit: low_end,
    };
    let start = low_end.checked_sub(size).ok_or_else(too_large)? & !0xfff;
    if start < kernel_end {
        return Err(too_large());
    }
    mem.write_slice(&data, GuestAddress(start))
        .map_err(|e| Error::Memory(e.to_string()))?;
    Ok((GuestAddress(start), size))
}

fn boot_params_for(
    header: Option<setup_header>,
    cmdline_len: u32,
    initrd: Option<(GuestAddress, u64)>,
    mem_mib: u64,
) -> boot_params {
    let mut p = boot_params::default();
    if let Some(h) = header {
        p.hdr = h;
    } else {
        p.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
        p.hdr.header = KERNEL_HDR_MAGIC;
        p.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    }
    p.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    p.hdr.cmd_line_ptr = CMDLINE_START as u32;
    p.hdr.cmdline_size = cmdline_len;
    if let Some((addr, size)) = initrd {
        p.hdr.ramdisk_image = addr.0 as u32;
        p.hdr.ramdisk_size = size as u32;
    }
    // Usable RAM: below the EBDA, then from 1 MiB to the end of each range.
    let mut entries = vec![(0, EBDA_START)];
    for (start, len) in ram_ranges(mem_mib) {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            entries.push((start, end - start));
        }
    }
    for (i, (addr, size)) in entries.into_iter().enumerate() {
        p.e820_table[i] = boot_e820_entry {
            addr,
            size,
            r#type: E820_RAM,
        };
        p.e820_entries = (i + 1) as u8;
    }
    p
}

/// Reads back the zero page, for tests and diagnostics.
pub fn read_boot_params(mem: &GuestMemoryMmap) -> Option<boot_params> {
    mem.read_obj(GuestAddress(ZERO_PAGE)).ok()
}

// `boot_params` is plain old data generated from the kernel's headers.
const _: () = assert!(std::mem::size_of::<boot_params>() == 4096);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    fn repo_file(rel: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../..")
            .join(rel)
    }

    /// Our guest kernel; `make` builds it before the tests run.
    fn vmlinux() -> PathBuf {
        let p = repo_file("target/okvm/vmlinux");
        assert!(
            p.exists(),
            "{} missing: run `make kernel` first",
            p.display()
        );
        p
    }

    fn cmdline_at(mem: &GuestMemoryMmap, len: usize) -> String {
        let mut buf = vec![0u8; len];
        mem.read_slice(&mut buf, GuestAddress(CMDLINE_START))
            .unwrap();
        String::from_utf8(buf).unwrap()
    }

    #[test]
    fn loads_our_vmlinux_with_initrd_and_cmdline() {
        let ram = memory::create(256, memory::Sharing::Private).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let initrd = dir.path().join("initrd");
        std::fs::write(&initrd, vec![0x5a; 10_000]).unwrap();
        let cmd = "console=ttyS0 reboot=k panic=-1";
        let l = load(&ram.memory, 256, &vmlinux(), Some(&initrd), cmd).unwrap();
        // The ELF entry of a 64-bit kernel is its physical startup_64.
        assert!(
            l.entry.0 >= HIMEM_START && l.entry.0 < 256 << 20,
            "{:#x}",
            l.entry.0
        );
        let (addr, size) = l.initrd.unwrap();
        assert_eq!(size, 10_000);
        assert_eq!(addr.0 % 4096, 0);
        assert!(addr.0 + size <= 256 << 20);
        let mut back = vec![0u8; 10_000];
        ram.memory.read_slice(&mut back, addr).unwrap();
        assert!(back.iter().all(|&b| b == 0x5a));
        assert_eq!(cmdline_at(&ram.memory, cmd.len()), cmd);

        let p = read_boot_params(&ram.memory).unwrap();
        assert_eq!({ p.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ p.hdr.ramdisk_image }, addr.0 as u32);
        assert_eq!({ p.hdr.ramdisk_size }, 10_000);
        assert_eq!({ p.hdr.boot_flag }, KERNEL_BOOT_FLAG_MAGIC);
        assert_eq!({ p.hdr.type_of_loader }, KERNEL_LOADER_OTHER);
        assert_eq!(p.e820_entries, 2);
        let e = p.e820_table[1];
        assert_eq!(
            ({ e.addr }, { e.size }),
            (HIMEM_START, (256 << 20) - HIMEM_START)
        );
    }

    #[test]
    fn loads_a_bzimage() {
        let boot = std::fs::read_dir("/boot")
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("vmlinuz-")
            })
            .expect("a bzImage in /boot (make setup installs linux-image-cloud-amd64)");
        let ram = memory::create(512, memory::Sharing::Private).unwrap();
        let l = load(&ram.memory, 512, &boot, None, "console=ttyS0").unwrap();
        assert_eq!(l.entry.0, HIMEM_START + 0x200);
        let p = read_boot_params(&ram.memory).unwrap();
        // A bzImage carries its own setup header; its magic must survive.
        assert_eq!({ p.hdr.header }, KERNEL_HDR_MAGIC);
        assert!(l.initrd.is_none());
    }

    #[test]
    fn bad_inputs_name_the_problem() {
        let ram = memory::create(64, memory::Sharing::Private).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let e = load(&ram.memory, 64, &missing, None, "").unwrap_err();
        assert!(e.to_string().starts_with("cannot open kernel"), "{e}");
        assert!(e.to_string().contains("nope"), "{e}");

        let junk = dir.path().join("junk");
        std::fs::write(&junk, b"not a kernel").unwrap();
        let e = load(&ram.memory, 64, &junk, None, "").unwrap_err();
        assert!(matches!(e, Error::UnknownFormat(_)), "{e}");

        let big = dir.path().join("big-initrd");
        std::fs::write(&big, vec![0u8; 70 << 20]).unwrap();
        let e = load(&ram.memory, 64, &vmlinux(), Some(&big), "").unwrap_err();
        assert!(matches!(e, Error::InitrdTooLarge { .. }), "{e}");

        let long = "x".repeat(CMDLINE_MAX + 1);
        let e = load(&ram.memory, 64, &vmlinux(), None, &long).unwrap_err();
        assert!(matches!(e, Error::Cmdline(_)), "{e}");
    }
}
