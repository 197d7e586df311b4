//! Guest RAM in a snapshot: written once to `memory.bin`, mapped privately
//! by every VM restored from it.
//!
//! The file holds the RAM regions back to back in guest-physical order.
//! Only pages the guest touched are written (mincore says which are
//! resident; all-zero ones are skipped too), the rest stay holes, so a
//! 256 MiB guest that booted its agent takes a few tens of MiB. A restored
//! VM maps the file MAP_PRIVATE: pages it only reads stay the host page
//! cache's, shared by every clone; a page it writes becomes its own copy.
//! The checksum covers every non-zero page with its index, so it does not
//! depend on how a filesystem stores holes.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::Path;

use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
};

const PAGE: usize = 4096;

#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: String,
        source: std::io::Error,
    },
    #[error("the memory file {path} is {got} bytes; the template's guest has {want}")]
    Size { path: String, want: u64, got: u64 },
    #[error(
        "the memory file {path} is corrupted (checksum {got:08x}, the template says {want:08x})"
    )]
    Checksum { path: String, want: u32, got: u32 },
    #[error("cannot map the memory file {path}: {message}")]
    Map { path: String, message: String },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> MemoryFileError {
    let path = path.display().to_string();
    move |source| MemoryFileError::Io { what, path, source }
}

/// Running checksum of (page index, page bytes) for non-zero pages.
struct PageDigest(crc32fast::Hasher);

impl PageDigest {
    fn new() -> Self {
        Self(crc32fast::Hasher::new())
    }

    fn page(&mut self, index: u64, bytes: &[u8]) {
        if bytes.iter().any(|&b| b != 0) {
            self.0.update(&index.to_le_bytes());
            self.0.update(bytes);
        }
    }

    fn finish(self) -> u32 {
        self.0.finalize()
    }
}

/// Writes guest RAM to `path` (sparse); returns the checksum.
pub fn write(mem: &GuestMemoryMmap, path: &Path) -> Result<u32, MemoryFileError> {
    let mut file = File::create(path).map_err(io("creating", path))?;
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    file.set_len(total).map_err(io("sizing", path))?;
    let mut digest = PageDigest::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let host = mem
            .get_host_address(region.start_addr())
            .map_err(|e| MemoryFileError::Map {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let len = region.len() as usize;
        // SAFETY: the region is this VM's mapping, `len` bytes long, and
        // every vCPU and device is stopped while the snapshot is written.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len) };
        for (i, resident) in resident_pages(host, len).into_iter().enumerate() {
            let page = &bytes[i * PAGE..(i + 1) * PAGE];
            let index = (offset as usize / PAGE + i) as u64;
            if !resident || page.iter().all(|&b| b == 0) {
                continue;
            }
            digest.page(index, page);
            file.seek(SeekFrom::Start(index * PAGE as u64))
                .map_err(io("seeking in", path))?;
            file.write_all(page).map_err(io("writing", path))?;
        }
        offset += region.len();
    }
    file.sync_all().map_err(io("syncing", path))?;
    Ok(digest.finish())
}

/// Which pages of a mapping are resident (mincore); all of them if the
/// kernel cannot say.
fn resident_pages(host: *mut u8, len: usize) -> Vec<bool> {
    let pages = len / PAGE;
    let mut vec = vec![0u8; pages];
    // SAFETY: `host..host+len` is one page-aligned mapping of this process;
    // `vec` has one byte per page.
    let r = unsafe { libc::mincore(host.cast(), len, vec.as_mut_ptr()) };
    if r != 0 {
        return vec![true; pages];
    }
    vec.into_iter().map(|b| b & 1 == 1).collect()
}

/// Checks `path` against the template's size and checksum, reading only
/// its data (SEEK_DATA), which also warms the page cache the VM maps.
pub fn verify(path: &Path, want_size: u64, want_checksum: u32) -> Result<(), MemoryFileError> {
    let mut file = File::open(path).map_err(io("opening", path))?;
    let size = file.metadata().map_err(io("inspecting", path))?.len();
    if size != want_size {
        return Err(MemoryFileError::Size {
            path: path.display().to_string(),
            want: want_size,
            got: size,
        });
    }
    let mut digest = PageDigest::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0u64;
    while let Some((start, end)) = next_data(&file, at, size) {
        file.seek(SeekFrom::Start(start))
            .map_err(io("seeking in", path))?;
        let mut pos = start;
        while pos < end {
            let n = ((end - pos) as usize).min(buf.len());
            file.read_exact(&mut buf[..n])
                .map_err(io("reading", path))?;
            for (i, page) in buf[..n].chunks(PAGE).enumerate() {
                digest.page(pos / PAGE as u64 + i as u64, page);
            }
            pos += n as u64;
        }
        at = end;
    }
    let got = digest.finish();
    if got != want_checksum {
        return Err(MemoryFileError::Checksum {
            path: path.display().to_string(),
            want: want_checksum,
            got,
        });
    }
    Ok(())
}

/// The next data extent at or after `from`, page aligned: (start, end).
fn next_data(file: &File, from: u64, size: u64) -> Option<(u64, u64)> {
    if from >= size {
        return None;
    }
    let fd = file.as_raw_fd();
    // SAFETY: lseek on our own fd; errors (ENXIO: no data after `from`) are checked.
    let start = unsafe { libc::lseek(fd, from as i64, libc::SEEK_DATA) };
    if start < 0 {
        return None;
    }
    // SAFETY: as above.
    let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
    let end = if end < 0 { size } else { end as u64 };
    let start = (start as u64) & !(PAGE as u64 - 1);
    Some((start, end.min(size).next_multiple_of(PAGE as u64).min(size)))
}

/// Guest RAM of a restored VM: `ranges` (as the template's guest had them)
/// mapped MAP_PRIVATE from the memory file, back to back.
pub fn map_private(
    path: &Path,
    ranges: &[(GuestAddress, u64)],
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let file = File::open(path).map_err(io("opening", path))?;
    let mut regions = Vec::with_capacity(ranges.len());
    let mut offset = 0u64;
    let fail = |message: String| MemoryFileError::Map {
        path: path.display().to_string(),
        message,
    };
    for &(addr, len) in ranges {
        let fo = FileOffset::new(file.try_clone().map_err(io("duplicating", path))?, offset);
        let mapping = MmapRegionBuilder::new(len as usize)
            .with_file_offset(fo)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| fail(e.to_string()))?;
        let region = GuestRegionMmap::new(mapping, addr)
            .ok_or_else(|| fail(format!("region at {:#x}", addr.0)))?;
        regions.push(region);
        offset += len;
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| fail(e.to_string()))?;
    crate::memory::dont_fork(&mem);
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn a_written_guest_maps_back_privately_and_checks_out() {
        let dir = tempdir();
        let path = dir.join("memory.bin");
        let ranges = [(GuestAddress(0), 8u64 << 20)];
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        mem.write_slice(b"kernel text", GuestAddress(0x1000))
            .unwrap();
        mem.write_slice(b"page cache", GuestAddress(0x60_0000))
            .unwrap();
        let sum = write(&mem, &path).unwrap();
        verify(&path, 8 << 20, sum).unwrap();
        let restored = map_private(&path, &ranges).unwrap();
        let mut buf = [0u8; 11];
        restored.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"kernel text");
        // A write stays private: the file keeps the snapshot.
        restored
            .write_slice(b"changed", GuestAddress(0x1000))
            .unwrap();
        verify(&path, 8 << 20, sum).unwrap();
        let used = std::fs::metadata(&path)
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m))
            .unwrap();
        assert!(
            used * 512 < 1 << 20,
            "only touched pages are stored ({} bytes)",
            used * 512
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn truncated_or_corrupted_files_are_refused() {
        let dir = tempdir();
        let path = dir.join("memory.bin");
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        mem.write_slice(b"data", GuestAddress(0x2000)).unwrap();
        let sum = write(&mem, &path).unwrap();
        let err = verify(&path, 8 << 20, sum).unwrap_err();
        assert!(matches!(err, MemoryFileError::Size { .. }), "{err}");
        let mut f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.seek(SeekFrom::Start(0x2001)).unwrap();
        f.write_all(b"X").unwrap();
        let err = verify(&path, 4 << 20, sum).unwrap_err();
        assert!(matches!(err, MemoryFileError::Checksum { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn tempdir() -> std::path::PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("husk-memfile-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
