//! Guest RAM: anonymous, private, MAP_NORESERVE mappings through vm-memory.
//!
//! Untouched guest pages cost the host nothing: the kernel backs a page only
//! when the guest (or a device) first writes it. RAM is split around the MMIO
//! gap below 4 GiB so devices can sit at fixed addresses.

use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::layout::{MIN_MEM_BYTES, MMIO_GAP_END, MMIO_GAP_START};

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error("guest memory of {got} MiB is too small: husk needs at least {min} MiB")]
    TooSmall { got: u64, min: u64 },
    #[error(
        "guest memory of {got} MiB is more than this host has ({host} MiB of RAM); \
         husk will not promise a guest memory the host cannot back"
    )]
    MoreThanHost { got: u64, host: u64 },
    #[error("guest memory of {0} bytes is not a whole number of 4 KiB pages")]
    NotPageAligned(u64),
    #[error("cannot map {mib} MiB of guest memory: {source}")]
    Map {
        mib: u64,
        #[source]
        source: vm_memory::mmap::FromRangesError,
    },
}

/// The RAM ranges of a guest with `size` bytes of memory.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, u64)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), size - MMIO_GAP_START),
        ]
    }
}

/// Host RAM in bytes, from /proc/meminfo.
pub fn host_ram_bytes() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Checks a requested guest size against husk's floor and the host's RAM.
pub fn validate_size(size: u64, host_ram: Option<u64>) -> Result<(), MemoryError> {
    if size < MIN_MEM_BYTES {
        return Err(MemoryError::TooSmall {
            got: size >> 20,
            min: MIN_MEM_BYTES >> 20,
        });
    }
    if !size.is_multiple_of(4096) {
        return Err(MemoryError::NotPageAligned(size));
    }
    if let Some(host) = host_ram {
        if size > host {
            return Err(MemoryError::MoreThanHost {
                got: size >> 20,
                host: host >> 20,
            });
        }
    }
    Ok(())
}

/// Maps guest RAM of `size` bytes.
pub fn create_guest_memory(size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    validate_size(size, host_ram_bytes())?;
    let ranges: Vec<(GuestAddress, usize)> = ram_ranges(size)
        .into_iter()
        .map(|(a, l)| (a, l as usize))
        .collect();
    let mem = GuestMemoryMmap::from_ranges(&ranges).map_err(|source| MemoryError::Map {
        mib: size >> 20,
        source,
    })?;
    dont_fork(&mem);
    Ok(mem)
}

/// MADV_DONTFORK on every RAM region: a child the VMM's process spawns
/// (the shim's daemon, a helper) does not copy-on-write map guest RAM, and
/// the flag keeps each region its own mapping (never merged with a
/// neighbour), so /proc/PID/smaps shows guest RAM as exactly its size.
pub fn dont_fork(mem: &GuestMemoryMmap) {
    use vm_memory::{GuestMemory, GuestMemoryRegion};
    for region in mem.iter() {
        let Ok(host) = mem.get_host_address(region.start_addr()) else {
            continue;
        };
        // SAFETY: madvise on a mapping this process owns, for its whole length.
        let r = unsafe { libc::madvise(host.cast(), region.len() as usize, libc::MADV_DONTFORK) };
        if r != 0 {
            tracing::debug!(
                "MADV_DONTFORK on guest RAM: {}",
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{GuestMemory, GuestMemoryRegion};

    #[test]
    fn splits_ram_around_the_mmio_gap() {
        assert_eq!(ram_ranges(256 << 20), vec![(GuestAddress(0), 256 << 20)]);
        let big = 4u64 << 30;
        assert_eq!(
            ram_ranges(big),
            vec![
                (GuestAddress(0), MMIO_GAP_START),
                (GuestAddress(MMIO_GAP_END), big - MMIO_GAP_START)
            ]
        );
    }

    #[test]
    fn rejects_sizes_below_the_floor_and_above_the_host() {
        assert!(matches!(
            validate_size(8 << 20, None),
            Err(MemoryError::TooSmall { got: 8, min: 16 })
        ));
        assert!(matches!(
            validate_size(2 << 30, Some(1 << 30)),
            Err(MemoryError::MoreThanHost {
                got: 2048,
                host: 1024
            })
        ));
        assert!(matches!(
            validate_size((16 << 20) + 1, None),
            Err(MemoryError::NotPageAligned(_))
        ));
        assert!(validate_size(16 << 20, Some(1 << 30)).is_ok());
    }

    #[test]
    fn maps_the_requested_size() {
        let mem = create_guest_memory(64 << 20).unwrap();
        let total: u64 = mem.iter().map(|r| r.len()).sum();
        assert_eq!(total, 64 << 20);
    }
}
