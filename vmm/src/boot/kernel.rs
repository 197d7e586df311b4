//! Loading the guest kernel and initrd into guest memory.
//!
//! An ELF `vmlinux` boots through its PVH entry note (32-bit protected mode,
//! no paging, start info in EBX); an ELF without that note and a bzImage boot
//! through the Linux 64-bit boot protocol (long mode, identity-mapped page
//! tables, zero page in RSI). linux-loader does the parsing and copying.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::{BzImage, Elf, KernelLoader, KernelLoaderResult, PvhBootCapability};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{HIGH_RAM_START, MMIO_GAP_START};

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("cannot open kernel {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("kernel {path} is neither an ELF vmlinux nor a bzImage")]
    UnknownFormat { path: String },
    #[error("cannot load ELF kernel {path}: {source}")]
    Elf {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("cannot load bzImage kernel {path}: {source}")]
    BzImage {
        path: String,
        source: linux_loader::loader::Error,
    },
    #[error("cannot read initrd {path}: {source}")]
    InitrdRead {
        path: String,
        source: std::io::Error,
    },
    #[error("initrd {path} ({size} bytes) does not fit in guest memory above the kernel")]
    InitrdTooBig { path: String, size: u64 },
    #[error("cannot write initrd to guest memory: {0}")]
    InitrdWrite(vm_memory::GuestMemoryError),
}

/// How the vCPU enters the loaded kernel.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelEntry {
    /// PVH: 32-bit protected mode at this address, start info in EBX.
    Pvh(GuestAddress),
    /// Linux 64-bit boot protocol: long mode at this address, zero page in RSI.
    Linux64 {
        entry: GuestAddress,
        header: Option<setup_header>,
    },
}

#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    pub entry: KernelEntry,
    /// First guest address past the kernel image.
    pub end: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

/// Loads the kernel at `path`, recognising ELF and bzImage by their headers.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, KernelError> {
    let shown = path.display().to_string();
    let mut file = File::open(path).map_err(|source| KernelError::Open {
        path: shown.clone(),
        source,
    })?;
    let mut magic = [0u8; 4];
    let is_elf = file.read_exact(&mut magic).is_ok() && magic == *b"\x7fELF";
    let start = Some(GuestAddress(HIGH_RAM_START));
    if is_elf {
        let r = Elf::load(mem, None, &mut file, start).map_err(|source| KernelError::Elf {
            path: shown,
            source,
        })?;
        return Ok(elf_entry(r));
    }
    match BzImage::load(mem, None, &mut file, start) {
        Ok(r) => Ok(LoadedKernel {
            // The 64-bit entry of a bzImage sits 0x200 past the protected-mode code.
            entry: KernelEntry::Linux64 {
                entry: GuestAddress(r.kernel_load.0 + 0x200),
                header: r.setup_header,
            },
            end: r.kernel_end,
        }),
        Err(linux_loader::loader::Error::Bzimage(
            linux_loader::loader::bzimage::Error::InvalidBzImage,
        )) => Err(KernelError::UnknownFormat { path: shown }),
        Err(source) => Err(KernelError::BzImage {
            path: shown,
            source,
        }),
    }
}

fn elf_entry(r: KernelLoaderResult) -> LoadedKernel {
    let entry = match r.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(addr) => KernelEntry::Pvh(addr),
        _ => KernelEntry::Linux64 {
            entry: r.kernel_load,
            header: None,
        },
    };
    LoadedKernel {
        entry,
        end: r.kernel_end,
    }
}

/// Places the initrd page-aligned at the top of RAM below the MMIO gap.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
    ram_size: u64,
) -> Result<LoadedInitrd, KernelError> {
    let shown = path.display().to_string();
    let data = std::fs::read(path).map_err(|source| KernelError::InitrdRead {
        path: shown.clone(),
        source,
    })?;
    let size = data.len() as u64;
    let top = ram_size.min(MMIO_GAP_START);
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= kernel_end)
        .ok_or(KernelError::InitrdTooBig { path: shown, size })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(KernelError::InitrdWrite)?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::create_guest_memory;

    fn temp_file(name: &str, bytes: &[u8]) -> std::path::PathBuf {
        let path =
            std::env::temp_dir().join(format!("husk-kernel-test-{}-{name}", std::process::id()));
        std::fs::write(&path, bytes).unwrap();
        path
    }

    #[test]
    fn rejects_files_that_are_no_kernel() {
        let mem = create_guest_memory(32 << 20).unwrap();
        let path = temp_file("text", &[b'x'; 8192]);
        let err = load_kernel(&mem, &path).unwrap_err();
        assert!(matches!(err, KernelError::UnknownFormat { .. }), "{err}");
        let missing = load_kernel(&mem, Path::new("/nonexistent/vmlinux")).unwrap_err();
        assert!(
            missing.to_string().contains("/nonexistent/vmlinux"),
            "{missing}"
        );
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn places_initrd_page_aligned_at_the_top_and_refuses_overlap() {
        let mem = create_guest_memory(32 << 20).unwrap();
        let path = temp_file("initrd", &[0xab; 5000]);
        let initrd = load_initrd(&mem, &path, 0x200_0000 - 0x10000, 32 << 20).unwrap();
        assert_eq!(initrd.addr.0 % 4096, 0);
        assert!(initrd.addr.0 + 5000 <= 32 << 20);
        let mut back = [0u8; 5000];
        mem.read_slice(&mut back, initrd.addr).unwrap();
        assert!(back.iter().all(|&b| b == 0xab));
        let err = load_initrd(&mem, &path, (32 << 20) - 4096, 32 << 20).unwrap_err();
        assert!(matches!(err, KernelError::InitrdTooBig { size: 5000, .. }));
        std::fs::remove_file(path).unwrap();
    }
}
