//! Initial vCPU state for each way of entering the kernel.
//!
//! PVH starts in flat 32-bit protected mode with paging off (the PVH ABI);
//! the Linux 64-bit protocol starts in long mode with the first GiB identity
//! mapped. Both share one GDT written at a fixed address.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::kernel::KernelEntry;
use crate::layout::{GDT_ADDR, PDPT_ADDR, PD_ADDR, PML4_ADDR};

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// Boot stack for the 64-bit protocol, below the page tables.
const BOOT_STACK: u64 = 0x8ff0;

// Flat descriptors: (flags, access). Index in this list = selector / 8.
const GDT: [u64; 5] = [
    0,
    gdt_entry(0xc09b, 0, 0xfffff), // 0x08: 32-bit code
    gdt_entry(0xa09b, 0, 0xfffff), // 0x10: 64-bit code
    gdt_entry(0xc093, 0, 0xfffff), // 0x18: data
    gdt_entry(0x808b, 0, 0xfffff), // 0x20: TSS
];
pub const CODE32_SEL: u16 = 0x08;
pub const CODE64_SEL: u16 = 0x10;
pub const DATA_SEL: u16 = 0x18;
pub const TSS_SEL: u16 = 0x20;

const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM view of the GDT entry at `selector`.
fn segment(selector: u16) -> kvm_segment {
    let e = GDT[(selector / 8) as usize];
    let limit = ((e >> 32) & 0xf_0000) as u32 | (e & 0xffff) as u32;
    let g = ((e >> 55) & 1) as u8;
    kvm_segment {
        base: (((e >> 32) & 0xff00_0000) | ((e >> 16) & 0xff_ffff)),
        limit: if g == 1 { (limit << 12) | 0xfff } else { limit },
        selector,
        type_: ((e >> 40) & 0xf) as u8,
        present: ((e >> 47) & 1) as u8,
        dpl: ((e >> 45) & 3) as u8,
        db: ((e >> 54) & 1) as u8,
        s: ((e >> 44) & 1) as u8,
        l: ((e >> 53) & 1) as u8,
        g,
        avl: ((e >> 52) & 1) as u8,
        ..Default::default()
    }
}

/// Writes the GDT and, for the 64-bit protocol, identity page tables for 1 GiB.
pub fn write_tables(
    mem: &GuestMemoryMmap,
    entry: &KernelEntry,
) -> Result<(), vm_memory::GuestMemoryError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))?;
    }
    if let KernelEntry::Linux64 { .. } = entry {
        mem.write_obj(PDPT_ADDR | 0x3, GuestAddress(PML4_ADDR))?;
        mem.write_obj(PD_ADDR | 0x3, GuestAddress(PDPT_ADDR))?;
        for i in 0..512u64 {
            // Present, writable, 2 MiB page.
            mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))?;
        }
    }
    Ok(())
}

/// Special registers for the entry mode; `base` is the vCPU's current sregs.
pub fn sregs(entry: &KernelEntry, mut base: kvm_sregs) -> kvm_sregs {
    let (code, data) = match entry {
        KernelEntry::Pvh(_) => (segment(CODE32_SEL), segment(DATA_SEL)),
        KernelEntry::Linux64 { .. } => (segment(CODE64_SEL), segment(DATA_SEL)),
    };
    base.cs = code;
    (base.ds, base.es, base.fs, base.gs, base.ss) = (data, data, data, data, data);
    base.tr = segment(TSS_SEL);
    base.gdt.base = GDT_ADDR;
    base.gdt.limit = (GDT.len() * 8 - 1) as u16;
    base.idt.base = 0;
    base.idt.limit = 0;
    match entry {
        KernelEntry::Pvh(_) => {
            base.cr0 = X86_CR0_PE | X86_CR0_ET;
            base.cr3 = 0;
            base.cr4 = 0;
            base.efer = 0;
        }
        KernelEntry::Linux64 { .. } => {
            base.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            base.cr3 = PML4_ADDR;
            base.cr4 = X86_CR4_PAE;
            base.efer = EFER_LME | EFER_LMA;
        }
    }
    base
}

/// General registers: entry point, and where the boot information is.
pub fn regs(entry: &KernelEntry, boot_info: GuestAddress) -> kvm_regs {
    match entry {
        KernelEntry::Pvh(addr) => kvm_regs {
            rip: addr.0,
            rbx: boot_info.0,
            rflags: 0x2,
            ..Default::default()
        },
        KernelEntry::Linux64 { entry, .. } => kvm_regs {
            rip: entry.0,
            rsi: boot_info.0,
            rsp: BOOT_STACK,
            rbp: BOOT_STACK,
            rflags: 0x2,
            ..Default::default()
        },
    }
}

pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

/// Model-specific registers in the state a firmware would leave them.
pub fn boot_msrs() -> Msrs {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    Msrs::from_entries(&entries).expect("a fixed, small MSR list fits a KVM MSR array")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_decodes_to_flat_segments() {
        let code32 = segment(CODE32_SEL);
        assert_eq!(
            (code32.base, code32.limit, code32.db, code32.l, code32.type_),
            (0, 0xffff_ffff, 1, 0, 0xb)
        );
        let code64 = segment(CODE64_SEL);
        assert_eq!(
            (code64.db, code64.l, code64.present, code64.s),
            (0, 1, 1, 1)
        );
        let data = segment(DATA_SEL);
        assert_eq!((data.type_, data.limit, data.g), (3, 0xffff_ffff, 1));
    }

    #[test]
    fn pvh_starts_flat_protected_without_paging() {
        let s = sregs(
            &KernelEntry::Pvh(GuestAddress(0x100_0000)),
            kvm_sregs::default(),
        );
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_ne!(s.cr0 & X86_CR0_PE, 0);
        assert_eq!(s.efer, 0);
        let r = regs(
            &KernelEntry::Pvh(GuestAddress(0x100_0000)),
            GuestAddress(0x6000),
        );
        assert_eq!((r.rip, r.rbx), (0x100_0000, 0x6000));
    }
}
