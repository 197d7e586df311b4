//! Boot information handed to the kernel: memory map, command line, initrd.
//!
//! The same e820 map is written either as PVH start info (hvm_start_info plus
//! a memory map table and one module for the initrd) or into the Linux zero
//! page, depending on how the kernel is entered.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{load_cmdline, Cmdline};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::kernel::LoadedInitrd;
use crate::layout::{
    CMDLINE_ADDR, CMDLINE_MAX, EBDA_START, HIGH_RAM_START, LOW_RAM_END, PVH_INFO_ADDR,
    ZERO_PAGE_ADDR,
};
use crate::memory::ram_ranges;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

#[derive(Debug, thiserror::Error)]
pub enum BootParamsError {
    #[error("invalid kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write the command line to guest memory: {0}")]
    CmdlineWrite(linux_loader::loader::Error),
    #[error("cannot write boot parameters to guest memory: {0}")]
    Write(linux_loader::configurator::Error),
}

/// One e820 entry: start, length, type.
pub type E820Entry = (u64, u64, u32);

/// The guest's memory map: low RAM, the reserved EBDA/BIOS hole, RAM above 1 MiB.
pub fn e820_map(ram_size: u64) -> Vec<E820Entry> {
    let mut map = vec![
        (0, LOW_RAM_END, E820_RAM),
        (EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED),
    ];
    for (start, len) in ram_ranges(ram_size) {
        let end = start.0 + len;
        let start = start.0.max(HIGH_RAM_START);
        if end > start {
            map.push((start, end - start, E820_RAM));
        }
    }
    map
}

/// Builds a kernel command line from the text the user gave.
pub fn cmdline(text: &str) -> Result<Cmdline, BootParamsError> {
    let mut cmdline = Cmdline::new(CMDLINE_MAX).map_err(BootParamsError::Cmdline)?;
    cmdline.insert_str(text).map_err(BootParamsError::Cmdline)?;
    Ok(cmdline)
}

fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<u32, BootParamsError> {
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(BootParamsError::CmdlineWrite)?;
    let len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or(0);
    Ok(len as u32)
}

/// Writes PVH start info for the kernel; its address goes in EBX.
pub fn write_pvh(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    cmdline: &Cmdline,
    initrd: Option<LoadedInitrd>,
) -> Result<GuestAddress, BootParamsError> {
    write_cmdline(mem, cmdline)?;
    let memmap: Vec<hvm_memmap_table_entry> = e820_map(ram_size)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let info_addr = GuestAddress(PVH_INFO_ADDR);
    let modlist_addr = GuestAddress(PVH_INFO_ADDR + std::mem::size_of::<hvm_start_info>() as u64);
    let memmap_addr =
        GuestAddress(modlist_addr.0 + std::mem::size_of::<hvm_modlist_entry>() as u64);
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_ADDR,
        memmap_paddr: memmap_addr.0,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let modules: Vec<hvm_modlist_entry> = initrd
        .map(|i| hvm_modlist_entry {
            paddr: i.addr.0,
            size: i.size,
            ..Default::default()
        })
        .into_iter()
        .collect();
    if !modules.is_empty() {
        info.nr_modules = modules.len() as u32;
        info.modlist_paddr = modlist_addr.0;
    }
    let mut params = BootParams::new(&info, info_addr);
    params.set_sections(&memmap, memmap_addr);
    if !modules.is_empty() {
        params.set_modules(&modules, modlist_addr);
    }
    PvhBootConfigurator::write_bootparams(&params, mem).map_err(BootParamsError::Write)?;
    Ok(info_addr)
}

/// Writes the Linux zero page for the 64-bit boot protocol; its address goes in RSI.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    cmdline: &Cmdline,
    initrd: Option<LoadedInitrd>,
    header: Option<setup_header>,
) -> Result<GuestAddress, BootParamsError> {
    let cmdline_len = write_cmdline(mem, cmdline)?;
    let mut params = boot_params::default();
    if let Some(header) = header {
        params.hdr = header;
    }
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len;
    if let Some(i) = initrd {
        params.hdr.ramdisk_image = i.addr.0 as u32;
        params.hdr.ramdisk_size = i.size as u32;
    }
    for (slot, (addr, size, r#type)) in params.e820_table.iter_mut().zip(e820_map(ram_size)) {
        *slot = boot_e820_entry {
            addr,
            size,
            type_: r#type,
        };
        params.e820_entries += 1;
    }
    let addr = GuestAddress(ZERO_PAGE_ADDR);
    LinuxBootConfigurator::write_bootparams(&BootParams::new(&params, addr), mem)
        .map_err(BootParamsError::Write)?;
    Ok(addr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::{MMIO_GAP_END, MMIO_GAP_START};

    #[test]
    fn e820_covers_ram_and_reserves_the_bios_hole() {
        let small = e820_map(256 << 20);
        assert_eq!(
            small,
            vec![
                (0, LOW_RAM_END, E820_RAM),
                (EBDA_START, HIGH_RAM_START - EBDA_START, E820_RESERVED),
                (HIGH_RAM_START, (256 << 20) - HIGH_RAM_START, E820_RAM),
            ]
        );
        let big = e820_map(5 << 30);
        assert_eq!(
            big[2],
            (HIGH_RAM_START, MMIO_GAP_START - HIGH_RAM_START, E820_RAM)
        );
        assert_eq!(big[3], (MMIO_GAP_END, (5 << 30) - MMIO_GAP_START, E820_RAM));
    }

    #[test]
    fn rejects_overlong_command_lines() {
        assert!(cmdline(&"x".repeat(CMDLINE_MAX + 1)).is_err());
        assert!(cmdline("console=ttyS0").is_ok());
    }
}
