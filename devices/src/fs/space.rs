//! The per-share size limit: how many bytes the guest may add to the host.
//!
//! What is counted: the apparent size of regular files (`st_size`), rounded
//! up to 4 KiB blocks, as the guest's requests grow them. Apparent size, not
//! allocated blocks, so a sparse file costs its full length: holes cannot
//! hide data from the count, and filling a hole later (through WRITE or a
//! writable DAX mapping, which cannot move the end of a file) costs nothing
//! more. Only growth the guest causes is charged, per host inode
//! (`charged`): files already in the share, or bound into it later by the
//! host (a container's rootfs), cost nothing, and shrinking or deleting them
//! gives the guest no credit; shrinking or deleting what it wrote gives
//! back what it was charged. Each operation is charged from the file's
//! sizes before and after it, so writes past the end, O_APPEND, truncation,
//! fallocate and O_TRUNC are all accounted the same way.
//!
//! A deleted file's space stays charged while the host still holds it: an
//! unlinked file (its last link gone) becomes an orphan, freed once the
//! guest has no handle open on it and has forgotten its node, the two
//! things that keep its data on the host disk. A guest that keeps deleted
//! files open keeps paying for them; a guest reset frees them all (the
//! server and its descriptors are dropped).
//!
//! Not counted: directories, names, symlinks, extended attributes and
//! inodes (metadata; the host filesystem's own limits apply), blocks
//! a filesystem preallocates beyond a file's end (fallocate with
//! KEEP_SIZE is refused while a limit is set, so the guest cannot ask for
//! them). Host-side changes to files are seen only at the guest's next
//! operation on them. The counters live as long as the device, across
//! guest reboots.

use std::collections::HashMap;
use std::io;
use std::sync::Mutex;

/// Granularity of the charge: a file of 1 byte costs one block.
pub const BLOCK: u64 = 4096;

/// The bytes a regular file of `size` bytes is charged at.
pub fn charge(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// A host file: device and inode number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FileId {
    dev: u64,
    ino: u64,
}

impl FileId {
    pub fn of(st: &libc::stat64) -> Self {
        Self {
            dev: st.st_dev,
            ino: st.st_ino,
        }
    }
}

/// The size of `st` if it is a regular file; other kinds are not charged.
fn regular_size(st: &libc::stat64) -> Option<u64> {
    (st.st_mode & libc::S_IFMT == libc::S_IFREG).then(|| u64::try_from(st.st_size).unwrap_or(0))
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(libc::ENOSPC)
}

/// Usage against one share's limit. FUSE nodes (`u64`) are the passthrough
/// filesystem's inode numbers, as the guest names them.
#[derive(Debug)]
pub struct SpaceBudget {
    limit: u64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Sum of `charged`.
    used: u64,
    /// Bytes of growth charged to each host file; no zero entries.
    charged: HashMap<FileId, u64>,
    /// Charged files whose last link the guest removed, by FUSE node.
    orphans: HashMap<u64, FileId>,
    /// Open handles per FUSE node.
    open: HashMap<u64, u32>,
}

impl State {
    fn add(&mut self, id: FileId, bytes: u64) {
        if bytes > 0 {
            *self.charged.entry(id).or_default() += bytes;
            self.used = self.used.saturating_add(bytes);
        }
    }

    /// Gives back up to `bytes` of what `id` was charged.
    fn credit(&mut self, id: FileId, bytes: u64) {
        let Some(charged) = self.charged.get_mut(&id) else {
            return;
        };
        let freed = bytes.min(*charged);
        *charged -= freed;
        self.used -= freed;
        if *charged == 0 {
            self.charged.remove(&id);
        }
    }
}

impl SpaceBudget {
    pub fn new(limit: u64) -> Self {
        Self {
            limit,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Bytes charged to the guest so far.
    pub fn used(&self) -> u64 {
        self.state().used
    }

    /// The largest size the file `st` describes may reach now.
    fn max_size(&self, st: &libc::stat64) -> u64 {
        let room = self.limit.saturating_sub(self.state().used);
        let size = regular_size(st).unwrap_or(0);
        charge(size).saturating_add(room / BLOCK * BLOCK)
    }

    /// How many of `len` bytes written at `offset` (at the end of the file
    /// with `append`) fit; ENOSPC when none does.
    pub fn fit_write(
        &self,
        st: &libc::stat64,
        offset: u64,
        len: u32,
        append: bool,
    ) -> io::Result<u32> {
        let size = regular_size(st).unwrap_or(0);
        let start = if append { size } else { offset };
        let max = self.max_size(st);
        if len == 0 || start.saturating_add(u64::from(len)) <= max {
            return Ok(len);
        }
        match max.checked_sub(start) {
            Some(fits) if fits > 0 => Ok(fits as u32),
            _ => Err(enospc()),
        }
    }

    /// ENOSPC if the file `st` describes may not grow to `new_size` bytes.
    pub fn check_size(&self, st: &libc::stat64, new_size: u64) -> io::Result<()> {
        let size = regular_size(st).unwrap_or(0);
        if new_size <= size || new_size <= self.max_size(st) {
            Ok(())
        } else {
            Err(enospc())
        }
    }

    /// Charges (or credits) what an operation did to a file: `before` and
    /// `after` are its attributes around the operation.
    pub fn account(&self, before: &libc::stat64, after: &libc::stat64) {
        let (Some(old), Some(new)) = (regular_size(before), regular_size(after)) else {
            return;
        };
        let (old, new) = (charge(old), charge(new));
        let id = FileId::of(after);
        let mut s = self.state();
        if new > old {
            s.add(id, new - old);
        } else {
            s.credit(id, old - new);
        }
    }

    /// The guest opened a handle on `node`.
    pub fn opened(&self, node: u64) {
        *self.state().open.entry(node).or_default() += 1;
    }

    /// The guest released a handle on `node`.
    pub fn released(&self, node: u64) {
        let mut s = self.state();
        if let Some(count) = s.open.get_mut(&node) {
            *count -= 1;
            if *count == 0 {
                s.open.remove(&node);
            }
        }
    }

    /// The guest removed a name of `node`, whose attributes are now `st`:
    /// with its last link gone, its charge waits for `free`.
    pub fn unlinked(&self, node: u64, st: &libc::stat64) {
        if regular_size(st).is_none() || st.st_nlink > 0 {
            return;
        }
        let id = FileId::of(st);
        let mut s = self.state();
        if s.charged.contains_key(&id) {
            s.orphans.insert(node, id);
        }
    }

    /// Whether `node` is an orphan with no handle open; it may be freed
    /// once the host no longer holds it.
    pub fn may_free(&self, node: u64) -> bool {
        let s = self.state();
        s.orphans.contains_key(&node) && !s.open.contains_key(&node)
    }

    /// Gives back everything orphan `node` was charged.
    pub fn free(&self, node: u64) {
        let mut s = self.state();
        if let Some(id) = s.orphans.remove(&node) {
            s.credit(id, u64::MAX);
        }
    }

    /// The guest's server is gone with every node and handle: orphans are
    /// freed, handle counts start over.
    pub fn guest_reset(&self) {
        let mut s = self.state();
        let orphans: Vec<FileId> = s.orphans.drain().map(|(_, id)| id).collect();
        for id in orphans {
            s.credit(id, u64::MAX);
        }
        s.open.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(ino: u64, size: u64) -> libc::stat64 {
        // SAFETY: stat64 is plain data; all zeroes is a valid value.
        let mut st: libc::stat64 = unsafe { std::mem::zeroed() };
        st.st_mode = libc::S_IFREG | 0o644;
        st.st_ino = ino;
        st.st_dev = 7;
        st.st_nlink = 1;
        st.st_size = size as i64;
        st
    }

    #[test]
    fn growth_is_charged_in_blocks_and_shrinking_gives_back_only_what_was_charged() {
        let b = SpaceBudget::new(10 * BLOCK);
        b.account(&file(1, 0), &file(1, 1));
        assert_eq!(b.used(), BLOCK);
        // A pre-existing file of 100 blocks, cut to nothing: no credit.
        b.account(&file(2, 100 * BLOCK), &file(2, 0));
        assert_eq!(b.used(), BLOCK);
        // It grows back by 3 blocks, then loses 5: only the 3 come back.
        b.account(&file(2, 0), &file(2, 3 * BLOCK));
        assert_eq!(b.used(), 4 * BLOCK);
        b.account(&file(2, 3 * BLOCK), &file(2, 0));
        assert_eq!(b.used(), BLOCK);
    }

    #[test]
    fn writes_fit_up_to_the_limit_then_get_enospc() {
        let b = SpaceBudget::new(4 * BLOCK + 100);
        let empty = file(1, 0);
        assert_eq!(b.fit_write(&empty, 0, 4096, false).unwrap(), 4096);
        // Only whole blocks fit: 4 of them.
        assert_eq!(b.fit_write(&empty, 3 * BLOCK, 8192, false).unwrap(), 4096);
        assert_eq!(
            b.fit_write(&empty, 4 * BLOCK, 1, false)
                .unwrap_err()
                .raw_os_error(),
            Some(libc::ENOSPC)
        );
        // A sparse write far out costs its offset.
        assert!(b.fit_write(&empty, 1 << 30, 1, false).is_err());
        b.account(&empty, &file(1, 4 * BLOCK));
        let full = file(1, 4 * BLOCK);
        // Overwriting what is charged always fits; appending does not.
        assert_eq!(b.fit_write(&full, 0, 4096, false).unwrap(), 4096);
        assert!(b.fit_write(&full, 0, 1, true).is_err());
        assert!(b.check_size(&full, 4 * BLOCK + 1).is_err());
        assert!(b.check_size(&full, 1).is_ok());
        assert_eq!(b.fit_write(&full, 0, 0, true).unwrap(), 0);
    }

    #[test]
    fn an_unlinked_file_is_charged_until_released_and_freed() {
        let b = SpaceBudget::new(100 * BLOCK);
        b.account(&file(1, 0), &file(1, 8 * BLOCK));
        b.opened(11);
        b.opened(11);
        let mut gone = file(1, 8 * BLOCK);
        gone.st_nlink = 0;
        b.unlinked(11, &gone);
        assert!(!b.may_free(11));
        b.released(11);
        assert!(!b.may_free(11));
        b.released(11);
        assert!(b.may_free(11));
        assert_eq!(b.used(), 8 * BLOCK);
        b.free(11);
        assert_eq!(b.used(), 0);
        // A file with another link left is not an orphan.
        let linked = file(2, BLOCK);
        b.account(&file(2, 0), &linked);
        b.unlinked(12, &linked);
        assert!(!b.may_free(12));
    }

    #[test]
    fn a_guest_reset_frees_orphans_but_keeps_what_is_still_on_disk() {
        let b = SpaceBudget::new(100 * BLOCK);
        b.account(&file(1, 0), &file(1, 2 * BLOCK));
        b.account(&file(2, 0), &file(2, 3 * BLOCK));
        b.opened(21);
        let mut gone = file(2, 3 * BLOCK);
        gone.st_nlink = 0;
        b.unlinked(21, &gone);
        b.guest_reset();
        assert_eq!(b.used(), 2 * BLOCK);
        assert!(!b.may_free(21));
    }
}
