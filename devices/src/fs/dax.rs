//! The DAX window: host memory the guest maps file pages through.
//!
//! The device reserves `len` bytes of address space (anonymous, PROT_NONE,
//! MAP_NORESERVE, so it costs nothing); the VMM registers that mapping as a
//! KVM memory slot at the guest-physical base it chooses. FUSE SETUPMAPPING
//! replaces a range of it with a MAP_SHARED|MAP_FIXED mapping of the file, so
//! guest loads and stores hit the host page cache; REMOVEMAPPING puts the
//! reservation back. Every range the guest names is checked against the
//! window first: MAP_FIXED outside it would clobber the VMM's own memory.
//!
//! The window must never be part of the `GuestMemory` devices read virtqueue
//! buffers from: its pages are PROT_NONE or may lie past a file's end, so a
//! descriptor pointing into it would fault the host process. It is a KVM
//! memory slot only, touched by guest vCPUs alone.

use std::io;
use std::os::fd::RawFd;
use std::ptr;

use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::transport::FsCacheReqHandler;

/// Granularity the Linux guest maps in (FUSE_DAX_SHIFT); the window's size
/// must be a multiple of it.
pub const DAX_ALIGNMENT: u64 = 2 << 20;

/// A reserved host mapping that FUSE SETUPMAPPING maps file ranges into.
#[derive(Debug)]
pub struct DaxWindow {
    /// Start of the reservation (an address, not dereferenced here).
    addr: usize,
    len: u64,
}

impl DaxWindow {
    /// Reserves `len` bytes of address space, inaccessible until mapped.
    pub fn new(len: u64) -> io::Result<Self> {
        let size = usize::try_from(len).map_err(|_| einval())?;
        // SAFETY: a fresh anonymous mapping at an address the kernel picks
        // touches no existing memory; the result is checked.
        let addr = unsafe {
            libc::mmap(
                ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            addr: addr as usize,
            len,
        })
    }

    /// Host address of the window, for the VMM's memory slot.
    pub fn host_addr(&self) -> u64 {
        self.addr as u64
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Unmaps every file range, leaving the bare reservation.
    pub fn clear(&mut self) -> io::Result<()> {
        self.reserve(0, self.len)
    }

    // The host address of [moffset, moffset + len), if it is a non-empty,
    // page-aligned range inside the window.
    fn range(&self, moffset: u64, len: u64) -> io::Result<*mut libc::c_void> {
        let page_mask = page_size() - 1;
        let end = moffset.checked_add(len).ok_or_else(einval)?;
        if len == 0 || end > self.len || (moffset | len) & page_mask != 0 {
            crate::warn_limited!(
                moffset,
                len,
                window = self.len,
                "virtio-fs: DAX range outside the window"
            );
            return Err(einval());
        }
        Ok((self.addr + moffset as usize) as *mut libc::c_void)
    }

    fn reserve(&mut self, moffset: u64, len: u64) -> io::Result<()> {
        let at = self.range(moffset, len)?;
        // SAFETY: `range` checked [at, at + len) lies inside our own
        // reservation, so MAP_FIXED replaces only window pages.
        let res = unsafe {
            libc::mmap(
                at,
                len as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if res == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl FsCacheReqHandler for DaxWindow {
    fn map(
        &mut self,
        foffset: u64,
        moffset: u64,
        len: u64,
        flags: u64,
        fd: RawFd,
    ) -> io::Result<()> {
        let at = self.range(moffset, len)?;
        let foffset = libc::off_t::try_from(foffset).map_err(|_| einval())?;
        let mut prot = libc::PROT_READ;
        if flags & SetupmappingFlags::WRITE.bits() != 0 {
            prot |= libc::PROT_WRITE;
        }
        // SAFETY: `range` checked [at, at + len) lies inside our own
        // reservation, so MAP_FIXED replaces only window pages; the kernel
        // checks `fd`, `foffset` and `prot` against the open file.
        let res = unsafe {
            libc::mmap(
                at,
                len as usize,
                prot,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd,
                foffset,
            )
        };
        if res == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn unmap(&mut self, requests: Vec<RemovemappingOne>) -> io::Result<()> {
        for req in requests {
            // virtiofsd's convention: offset 0, length ~0 means the whole window.
            if req.moffset == 0 && req.len == u64::MAX {
                self.clear()?;
            } else {
                self.reserve(req.moffset, req.len)?;
            }
        }
        Ok(())
    }
}

impl Drop for DaxWindow {
    fn drop(&mut self) {
        // SAFETY: the window owns [addr, addr + len) since `new`; nothing
        // else refers to it once the device is dropped.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len as usize) };
    }
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).unwrap_or(4096)
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}
