//! Guest physical address map (x86_64).
//!
//! ```text
//! 0x0000_0500  GDT            0x0000_6000  PVH start info + memory map
//! 0x0000_7000  zero page      0x0000_9000  boot page tables (PML4, PDPT, PD)
//! 0x0002_0000  command line   0x0009_fc00  MP table (last KiB of base memory)
//! 0x000a_0000  legacy hole (VGA/BIOS), reserved
//! 0x0010_0000  RAM: kernel, then free memory; initrd at the top of low RAM
//! 0xd000_0000  MMIO window for virtio-mmio devices, up to the IOAPIC/LAPIC
//! 0x1_0000_0000  RAM above 4 GiB when the guest has more than fits below
//! ```

pub const GDT_ADDR: u64 = 0x500;
pub const PVH_INFO_ADDR: u64 = 0x6000;
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x2_0000;
/// Longest command line the guest gets (Linux x86 COMMAND_LINE_SIZE).
pub const CMDLINE_MAX: usize = 2048;
pub const EBDA_START: u64 = 0x9_fc00;
pub const MPTABLE_ADDR: u64 = EBDA_START;
/// End of the low "base memory" usable by the guest.
pub const LOW_RAM_END: u64 = EBDA_START;
pub const HIGH_RAM_START: u64 = 0x10_0000;

pub const MMIO_GAP_START: u64 = 0xd000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
pub const IOAPIC_ADDR: u32 = 0xfec0_0000;
pub const LAPIC_ADDR: u32 = 0xfee0_0000;

/// The smallest guest this VMM will build: below this a Linux guest cannot boot.
pub const MIN_MEM_BYTES: u64 = 16 << 20;
