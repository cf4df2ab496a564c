//! Guest RAM: one memfd, mapped shared, so that vhost-user backends (virtiofsd)
//! can map the very same pages from the file descriptor we hand them.

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

/// Guest RAM and the file that backs it.
pub struct GuestRam {
    pub memory: GuestMemoryMmap,
    /// The memfd every region maps, at file offset == its position in RAM order.
    pub file: File,
    pub size: u64,
}

/// Creates `mem_mib` MiB of shared, memfd-backed guest RAM laid out by
/// [`ram_ranges`]. Pages are allocated lazily, on first touch.
pub fn create(mem_mib: u64) -> Result<GuestRam, Error> {
    if mem_mib == 0 || mem_mib > MAX_MEM_MIB {
        return Err(Error::BadSize(mem_mib));
    }
    let size = mem_mib << 20;
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
    Ok(GuestRam { memory, file, size })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn writes_land_in_the_shared_file() {
        let ram = create(4).unwrap();
        assert_eq!(ram.memory.num_regions(), 1);
        ram.memory
            .write_slice(b"okvm", GuestAddress(0x1000))
            .unwrap();
        // What a vhost-user backend mapping the memfd would see.
        let mut buf = [0u8; 4];
        ram.file.read_exact_at(&mut buf, 0x1000).unwrap();
        assert_eq!(&buf, b"okvm");
    }

    #[test]
    fn ram_above_the_gap_maps_after_the_low_part_in_the_file() {
        let ram = create(3072 + 2).unwrap();
        assert_eq!(ram.memory.num_regions(), 2);
        ram.memory
            .write_slice(b"high", GuestAddress(crate::layout::MMIO_GAP_END + 16))
            .unwrap();
        let mut buf = [0u8; 4];
        ram.file
            .read_exact_at(&mut buf, crate::layout::MMIO_GAP_START + 16)
            .unwrap();
        assert_eq!(&buf, b"high");
        assert!(ram
            .memory
            .write_slice(b"x", GuestAddress(crate::layout::MMIO_GAP_START))
            .is_err());
    }

    #[test]
    fn absurd_sizes_are_refused() {
        assert!(matches!(create(0), Err(Error::BadSize(0))));
        assert!(matches!(create(MAX_MEM_MIB + 1), Err(Error::BadSize(_))));
    }
}
