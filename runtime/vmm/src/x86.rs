//! The 64-bit machine state the Linux boot protocol expects at the kernel's entry:
//! identity-mapped page tables, a flat GDT, long mode on, `rsi` at the zero page.
//! Everything here only writes guest memory or fills structs, so it is tested
//! without KVM.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_segment, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::boot::ZERO_PAGE;

const GDT_START: u64 = 0x500;
const IDT_START: u64 = 0x520;
const PML4_START: u64 = 0x9000;
const PDPTE_START: u64 = 0xa000;
const PDE_START: u64 = 0xb000;
/// The boot stack grows down from here, below the page tables.
pub const BOOT_STACK: u64 = 0x8ff0;

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// GDT entries: null, 64-bit code, data, TSS.
const GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

fn segment(index: u16, entry: u64) -> kvm_segment {
    let flag = |shift: u32, bits: u64| ((entry >> shift) & bits) as u8;
    kvm_segment {
        base: ((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: (((entry >> 32) & 0x000f_0000) | (entry & 0xffff)) as u32,
        selector: index * 8,
        type_: flag(40, 0xf),
        present: flag(47, 1),
        dpl: flag(45, 3),
        db: flag(54, 1),
        s: flag(44, 1),
        l: flag(53, 1),
        g: flag(55, 1),
        avl: flag(52, 1),
        unusable: if flag(47, 1) == 0 { 1 } else { 0 },
        padding: 0,
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write the boot-time {what} into guest memory")]
pub struct MemoryError {
    what: &'static str,
}

/// Writes GDT, IDT and the identity map of the first GiB (2 MiB pages), and
/// returns the special registers that go with them.
pub fn setup_long_mode(mem: &GuestMemoryMmap, sregs: &mut kvm_sregs) -> Result<(), MemoryError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_START + 8 * i as u64))
            .map_err(|_| MemoryError { what: "GDT" })?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .map_err(|_| MemoryError { what: "IDT" })?;
    let code = segment(1, GDT[1]);
    let data = segment(2, GDT[2]);
    let tss = segment(3, GDT[3]);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = tss;

    mem.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))
        .map_err(|_| MemoryError { what: "PML4" })?;
    mem.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))
        .map_err(|_| MemoryError { what: "PDPTE" })?;
    for i in 0..512u64 {
        // present | writable | 2 MiB page
        mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))
            .map_err(|_| MemoryError { what: "PDE" })?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    Ok(())
}

/// General registers at the 64-bit entry point.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    }
}

/// The FPU as a reset leaves it.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory;

    #[test]
    fn gdt_segments_decode_back() {
        let cs = segment(1, GDT[1]);
        assert_eq!((cs.selector, cs.l, cs.present, cs.type_), (8, 1, 1, 0xb));
        assert_eq!(cs.limit, 0xfffff);
        let ds = segment(2, GDT[2]);
        assert_eq!((ds.selector, ds.db, ds.type_), (16, 1, 3));
        assert_eq!(segment(0, GDT[0]).unusable, 1);
    }

    #[test]
    fn long_mode_tables_identity_map_the_first_gib() {
        let ram = memory::create(64, memory::Sharing::Private).unwrap();
        let mut sregs = kvm_sregs::default();
        setup_long_mode(&ram.memory, &mut sregs).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        let pml4: u64 = ram.memory.read_obj(GuestAddress(PML4_START)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPTE_START);
        let last: u64 = ram
            .memory
            .read_obj(GuestAddress(PDE_START + 511 * 8))
            .unwrap();
        assert_eq!(last, (511 << 21) | 0x83);
        let gdt1: u64 = ram.memory.read_obj(GuestAddress(GDT_START + 8)).unwrap();
        assert_eq!(gdt1, GDT[1]);
    }

    #[test]
    fn entry_registers_follow_the_boot_protocol() {
        let r = boot_regs(0x100_0000);
        assert_eq!((r.rip, r.rsi, r.rflags), (0x100_0000, ZERO_PAGE, 2));
    }
}
