//! Where things live in the guest's physical address space (x86_64).
//!
//! RAM starts at 0 and runs up to the 32-bit MMIO gap; RAM beyond that continues
//! above 4 GiB. Devices (virtio-mmio windows) live in the gap, where no RAM is.

/// Start of the gap below 4 GiB reserved for device MMIO (and the LAPIC/IOAPIC).
pub const MMIO_GAP_START: u64 = 0xC000_0000;
/// End of that gap: RAM resumes here.
pub const MMIO_GAP_END: u64 = 1 << 32;

/// Largest guest RAM okvm agrees to configure, in MiB (a sanity bound, not a
/// technical limit).
pub const MAX_MEM_MIB: u64 = 1 << 20;

/// Guest RAM as (start, length) ranges, in address order, for `mem_mib` MiB.
pub fn ram_ranges(mem_mib: u64) -> Vec<(u64, u64)> {
    let total = mem_mib << 20;
    if total <= MMIO_GAP_START {
        vec![(0, total)]
    } else {
        vec![(0, MMIO_GAP_START), (MMIO_GAP_END, total - MMIO_GAP_START)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn small_guests_have_one_range() {
        assert_eq!(ram_ranges(256), vec![(0, 256 << 20)]);
        assert_eq!(ram_ranges(3072), vec![(0, MMIO_GAP_START)]);
    }

    #[test]
    fn large_guests_skip_the_mmio_gap() {
        assert_eq!(
            ram_ranges(4096),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    proptest! {
        #[test]
        fn ranges_cover_exactly_the_size_and_never_the_gap(mib in 1u64..MAX_MEM_MIB) {
            let r = ram_ranges(mib);
            prop_assert_eq!(r.iter().map(|x| x.1).sum::<u64>(), mib << 20);
            for (start, len) in r {
                let end = start + len;
                prop_assert!(end <= MMIO_GAP_START || start >= MMIO_GAP_END);
            }
        }
    }
}
