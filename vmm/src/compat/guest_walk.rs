//! Reading guest memory the way a vCPU sees it: through its page tables.
//!
//! Used to fetch the instruction bytes at a vCPU's RIP when KVM gives up on
//! emulating it, so the VMM can handle the instruction or at least say what
//! it was. Every table read goes through vm-memory's checked accessors, so a
//! hostile guest's tables can make a lookup fail but never read out of bounds.

use kvm_bindings::kvm_sregs;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap};

const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PTE_PRESENT: u64 = 1;
const PTE_WRITABLE: u64 = 1 << 1;
const PTE_PAGE_SIZE: u64 = 1 << 7;
const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Longest x86 instruction.
pub const MAX_INSN_LEN: usize = 15;

/// Translates a guest virtual address to a guest physical one.
///
/// Handles paging off and 4/5-level long-mode paging (with 1 GiB and 2 MiB
/// pages); 32-bit paging is only used by guests before they reach long mode
/// and is not walked (`None`).
pub fn translate(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64) -> Option<u64> {
    walk(mem, sregs, gva, false)
}

/// Like `translate`, for a write: every level must allow writing (the guest
/// kernel runs with CR0.WP, and copy-on-write pages are mapped read-only).
pub fn translate_for_write(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64) -> Option<u64> {
    walk(mem, sregs, gva, true)
}

fn walk(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64, write: bool) -> Option<u64> {
    if sregs.cr0 & CR0_PG == 0 {
        return Some(gva & 0xffff_ffff);
    }
    if sregs.efer & EFER_LMA == 0 {
        return None;
    }
    let top_shift = if sregs.cr4 & CR4_LA57 != 0 { 48 } else { 39 };
    let mut table = sregs.cr3 & PTE_ADDR_MASK;
    let mut shift = top_shift;
    loop {
        let index = (gva >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PTE_PRESENT == 0 || (write && entry & PTE_WRITABLE == 0) {
            return None;
        }
        let leaf = shift == 12 || ((shift == 21 || shift == 30) && entry & PTE_PAGE_SIZE != 0);
        if leaf {
            let page_mask = (1u64 << shift) - 1;
            return Some((entry & PTE_ADDR_MASK & !page_mask) | (gva & page_mask));
        }
        table = entry & PTE_ADDR_MASK;
        shift -= 9;
    }
}

/// Reads `buf.len()` bytes at virtual address `gva`, page by page; `None`
/// if any page is unmapped.
pub fn read_virt(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64, buf: &mut [u8]) -> Option<()> {
    for (gpa, range) in pages(gva, buf.len(), |va| translate(mem, sregs, va))? {
        mem.read_slice(&mut buf[range], GuestAddress(gpa)).ok()?;
    }
    Some(())
}

/// Writes `data` at virtual address `gva`; checks every page is mapped
/// writable before writing any, so a failed write changes nothing.
pub fn write_virt(mem: &GuestMemoryMmap, sregs: &kvm_sregs, gva: u64, data: &[u8]) -> Option<()> {
    let pages = pages(gva, data.len(), |va| translate_for_write(mem, sregs, va))?;
    // The guest's tables may map a page to guest-physical addresses with no
    // RAM behind them: check every page's memory too before writing any.
    if !pages
        .iter()
        .all(|(gpa, range)| mem.check_range(GuestAddress(*gpa), range.len()))
    {
        return None;
    }
    for (gpa, range) in pages {
        mem.write_slice(&data[range], GuestAddress(gpa)).ok()?;
    }
    Some(())
}

/// Splits `len` bytes at `gva` at page boundaries: (physical address, range
/// of the buffer) per page.
fn pages(
    gva: u64,
    len: usize,
    translate: impl Fn(u64) -> Option<u64>,
) -> Option<Vec<(u64, std::ops::Range<usize>)>> {
    let mut out = Vec::new();
    let mut done = 0;
    while done < len {
        let va = gva.wrapping_add(done as u64);
        let chunk = (0x1000 - (va & 0xfff) as usize).min(len - done);
        out.push((translate(va)?, done..done + chunk));
        done += chunk;
    }
    Some(out)
}

/// Reads up to `MAX_INSN_LEN` bytes at `rip` (stopping at the first unmapped byte).
pub fn instruction_bytes(mem: &GuestMemoryMmap, sregs: &kvm_sregs, rip: u64) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(MAX_INSN_LEN);
    for i in 0..MAX_INSN_LEN as u64 {
        let gva = sregs.cs.base.wrapping_add(rip).wrapping_add(i);
        let Some(gpa) = translate(mem, sregs, gva) else {
            break;
        };
        match mem.read_obj::<u8>(GuestAddress(gpa)) {
            Ok(b) => bytes.push(b),
            Err(_) => break,
        }
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_mode(cr3: u64) -> kvm_sregs {
        let mut s = kvm_sregs {
            cr3,
            efer: EFER_LMA,
            ..Default::default()
        };
        s.cr0 = CR0_PG | 1;
        s
    }

    #[test]
    fn walks_4k_and_2m_pages_and_reads_across_them() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        // gva 0xffff_ffff_8000_0000 (PML4 511, PDPT 510) -> 2 MiB page at 0x40_0000,
        // gva 0x1000 -> 4 KiB page at 0x80_0000.
        let (pml4, pdpt, pd, pt, pdpt_low, pd_low) =
            (0x1000, 0x2000, 0x3000, 0x4000, 0x5000, 0x6000);
        mem.write_obj(pdpt | 3u64, GuestAddress(pml4 + 511 * 8))
            .unwrap();
        mem.write_obj(pd | 3u64, GuestAddress(pdpt + 510 * 8))
            .unwrap();
        mem.write_obj(0x40_0000u64 | 0x83, GuestAddress(pd))
            .unwrap();
        mem.write_obj(pdpt_low | 3u64, GuestAddress(pml4)).unwrap();
        mem.write_obj(pd_low | 3u64, GuestAddress(pdpt_low))
            .unwrap();
        mem.write_obj(pt | 3u64, GuestAddress(pd_low)).unwrap();
        mem.write_obj(0x80_0000u64 | 3, GuestAddress(pt + 8))
            .unwrap();
        let s = long_mode(pml4);
        assert_eq!(translate(&mem, &s, 0xffff_ffff_8000_1234), Some(0x40_1234));
        assert_eq!(translate(&mem, &s, 0x1abc), Some(0x80_0abc));
        assert_eq!(translate(&mem, &s, 0x2000), None, "unmapped page");

        mem.write_slice(&[0xcc, 0x90], GuestAddress(0x80_0ffe))
            .unwrap();
        assert_eq!(
            instruction_bytes(&mem, &s, 0x1ffe),
            vec![0xcc, 0x90],
            "stops at the unmapped page"
        );
    }

    // Found by the guest_walk fuzz target: a write whose first page was
    // RAM and whose second was not wrote the first page, then failed.
    #[test]
    fn a_write_running_off_guest_memory_changes_nothing() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        let paging_off = kvm_sregs::default();
        assert_eq!(write_virt(&mem, &paging_off, 0xf_fffe, &[0xaa; 4]), None);
        // Within one page, running off the end of the region.
        let mem2 = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1800)]).unwrap();
        assert_eq!(write_virt(&mem2, &paging_off, 0x17fe, &[0xaa; 4]), None);
        for m in [&mem, &mem2] {
            let end = m.last_addr().0;
            let mut tail = [0u8; 2];
            m.read_slice(&mut tail, GuestAddress(end - 1)).unwrap();
            assert_eq!(tail, [0, 0], "nothing written");
        }
        assert_eq!(
            write_virt(&mem, &paging_off, 0xf_fffc, &[0xaa; 4]),
            Some(())
        );
    }

    #[test]
    fn hostile_tables_fail_cleanly() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // PML4 entry pointing far outside guest memory.
        mem.write_obj(0x000f_ffff_ffff_f003u64, GuestAddress(0x1000))
            .unwrap();
        assert_eq!(translate(&mem, &long_mode(0x1000), 0x10), None);
        assert_eq!(translate(&mem, &long_mode(0xffff_f000), 0x10), None);
        let real = kvm_sregs {
            cr0: 1,
            ..Default::default()
        };
        assert_eq!(translate(&mem, &real, 0x1_0000_1234), Some(0x1234));
    }
}
