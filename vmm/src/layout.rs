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
//! device memory  from the first 1 GiB boundary at or above both 4 GiB and
//!                the end of RAM: pmem images and virtio shared-memory
//!                windows (virtio-fs DAX), each 128 MiB aligned
//! ```
//!
//! Device memory is never guest RAM (it is not in the e820 map): Linux maps
//! it with memremap_pages (ZONE_DEVICE), which wants at least 2 MiB
//! (subsection) alignment; 128 MiB (a whole memory section) works on every
//! kernel, and costs only guest-physical address space.

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

/// Alignment of each device-memory region (one x86_64 memory section).
pub const DEVICE_MEMORY_ALIGN: u64 = 128 << 20;
/// Device memory starts on this boundary above RAM.
pub const DEVICE_MEMORY_BASE_ALIGN: u64 = 1 << 30;
/// Granule of a device-memory region's size (a subsection, Linux's smallest
/// unit of ZONE_DEVICE memory).
pub const DEVICE_MEMORY_GRANULE: u64 = 2 << 20;

/// First guest-physical address of device memory for a guest with `ram_end`
/// as the end of its highest RAM range.
pub const fn device_memory_start(ram_end: u64) -> u64 {
    let floor = if ram_end > MMIO_GAP_END {
        ram_end
    } else {
        MMIO_GAP_END
    };
    floor.next_multiple_of(DEVICE_MEMORY_BASE_ALIGN)
}
