//! Guest RAM. With a vhost-user backend (virtiofsd) it is one memfd, mapped
//! shared, so the backend can map the very same pages from the descriptor we
//! hand it. Without one it is private anonymous memory, which the host can
//! back with transparent huge pages by default (shmem only when the host's
//! `shmem_enabled` allows it): fewer nested page faults, a faster boot.

use std::ffi::CString;
use std::fs::File;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap};

use crate::layout::{ram_ranges, MAX_MEM_MIB};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory of {0} MiB is out of range (1..={MAX_MEM_MIB} MiB)")]
    BadSize(u64),
    #[error("cannot create the guest memory file (memfd_create): {0}")]
    Memfd(nix::Error),
    #[error("cannot size the guest memory file to {size} bytes: {err}")]
    Truncate { size: u64, err: std::io::Error },
    #[error("cannot duplicate the guest memory file descriptor: {0}")]
    Dup(std::io::Error),
    #[error("cannot map guest memory: {0}")]
    Map(#[from] vm_memory::mmap::FromRangesError),
}

/// Guest RAM and, when shared, the file that backs it.
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    /// The memfd every region maps, at file offset == its position in RAM
    /// order; `None` for private memory.
    pub file: Option<File>,
    pub size: u64,
}

/// Whether another process (a vhost-user backend) must be able to map the RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    Private,
    Shared,
}

/// Creates `mem_mib` MiB of guest RAM laid out by [`ram_ranges`]. Pages are
/// allocated lazily, on first touch.
pub fn create(mem_mib: u64, sharing: Sharing) -> Result<GuestRam, Error> {
    if mem_mib == 0 || mem_mib > MAX_MEM_MIB {
        return Err(Error::BadSize(mem_mib));
    }
    let size = mem_mib << 20;
    if sharing == Sharing::Private {
        let ranges: Vec<_> = ram_ranges(mem_mib)
            .into_iter()
            .map(|(start, len)| (GuestAddress(start), len as usize))
            .collect();
        let memory = GuestMemoryMmap::from_ranges(&ranges)?;
        advise_huge_pages(&memory);
        return Ok(GuestRam {
            memory,
            file: None,
            size,
        });
    }
    let name = CString::new("okvm-guest-ram").expect("no NUL in a literal");
    let fd = nix::sys::memfd::memfd_create(&name, nix::sys::memfd::MemFdCreateFlag::MFD_CLOEXEC)
        .map_err(Error::Memfd)?;
    let file = File::from(fd);
    file.set_len(size)
        .map_err(|err| Error::Truncate { size, err })?;
    let mut offset = 0u64;
    let mut regions = Vec::new();
    for (start, len) in ram_ranges(mem_mib) {
        let fo = FileOffset::new(file.try_clone().map_err(Error::Dup)?, offset);
        regions.push((GuestAddress(start), len as usize, Some(fo)));
        offset += len;
    }
    let memory = GuestMemoryMmap::from_ranges_with_files(regions)?;
    advise_huge_pages(&memory);
    Ok(GuestRam {
        memory,
        file: Some(file),
        size,
    })
}

/// Asks for transparent huge pages. Purely advisory: a host that does not
/// allow them (e.g. shmem THP off) simply keeps small pages.
fn advise_huge_pages(memory: &GuestMemoryMmap) {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    for region in memory.iter() {
        // SAFETY: the range is exactly one live mapping owned by `memory`;
        // MADV_HUGEPAGE changes only how the kernel backs it, never its contents.
        unsafe {
            libc::madvise(
                region.as_ptr().cast(),
                region.len() as usize,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn writes_land_in_the_shared_file() {
        let ram = create(4, Sharing::Shared).unwrap();
        assert_eq!(ram.memory.num_regions(), 1);
        ram.memory
            .write_slice(b"okvm", GuestAddress(0x1000))
            .unwrap();
        // What a vhost-user backend mapping the memfd would see.
        let mut buf = [0u8; 4];
        ram.file
            .as_ref()
            .unwrap()
            .read_exact_at(&mut buf, 0x1000)
            .unwrap();
        assert_eq!(&buf, b"okvm");
    }

    #[test]
    fn ram_above_the_gap_maps_after_the_low_part_in_the_file() {
        let ram = create(3072 + 2, Sharing::Shared).unwrap();
        assert_eq!(ram.memory.num_regions(), 2);
        ram.memory
            .write_slice(b"high", GuestAddress(crate::layout::MMIO_GAP_END + 16))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.file
            .as_ref()
            .unwrap()
            .read_exact_at(&mut buf, crate::layout::MMIO_GAP_START + 16)
            .unwrap();
        assert_eq!(&buf, b"high");
        assert!(ram
            .memory
            .write_slice(b"x", GuestAddress(crate::layout::MMIO_GAP_START))
            .is_err());
    }

    #[test]
    fn private_memory_has_no_file_and_skips_the_gap_too() {
        let ram = create(3072 + 2, Sharing::Private).unwrap();
        assert!(ram.file.is_none());
        assert_eq!(ram.memory.num_regions(), 2);
        ram.memory
            .write_slice(b"x", GuestAddress(crate::layout::MMIO_GAP_END))
            .unwrap();
    }

    #[test]
    fn absurd_sizes_are_refused() {
        assert!(matches!(
            create(0, Sharing::Private),
            Err(Error::BadSize(0))
        ));
        assert!(matches!(
            create(MAX_MEM_MIB + 1, Sharing::Shared),
            Err(Error::BadSize(_))
        ));
    }
}
