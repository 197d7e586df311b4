//! husk's rules between the guest's FUSE requests and the passthrough
//! filesystem. `PolicyFs` wraps `PassthroughFs` as a `FileSystem` itself,
//! so it sees every request after the server decoded it, whatever bytes the
//! guest sent, and the rules cannot be bypassed by framing a request oddly.
//!
//! Always on, not configurable (logged once per share, at debug level):
//! - No device nodes: MKNOD of a block device, or of a character device other
//!   than 0:0 (an overlayfs whiteout), gets EPERM; a device node in the share
//!   would hand a host device to any host process that opens it.
//! - No setuid or setgid files: S_ISUID and S_ISGID are stripped from the
//!   mode of CREATE and MKNOD, and of a SETATTR of anything but a directory;
//!   a WRITE, a truncation, a fallocate or a writable DAX mapping of a file
//!   that has them clears them first, as the kernel does for an unprivileged
//!   writer (husk holds CAP_FSETID, so the kernel would not). Directories
//!   keep S_ISGID (it makes new entries inherit the directory's group, which
//!   shared group directories rely on, and grants nothing by itself); they
//!   lose S_ISUID, which Linux ignores on directories. Files the host put in
//!   the share keep their bits until the guest changes their content.
//! - No file capabilities: SETXATTR of `security.capability` gets EPERM,
//!   with or without xattr support (the kernel itself removes the attribute
//!   when a file's content changes, even for a privileged writer).
//! - Host buffers sized by the guest are bounded: GETXATTR and LISTXATTR
//!   by the kernel's 64 KiB xattr limit, READDIR by 1 MiB.
//!
//! Optional: the share's size limit (`space`): a write past it is cut short
//! or gets ENOSPC, as are truncation and fallocate; fallocate with
//! KEEP_SIZE gets EOPNOTSUPP. The operations that change what is charged
//! (write, setattr, fallocate, open and create with O_TRUNC, unlink,
//! rename, release, forget) report to the budget here.

mod filesystem;

use std::ffi::CStr;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use fuse_backend_rs::api::filesystem::{Context, FileSystem, SetattrValid};
use fuse_backend_rs::passthrough::PassthroughFs;
use libc::stat64;

use super::space::SpaceBudget;
use super::FsMetrics;

type Inode = u64;
type Handle = u64;

const SUID_SGID: u32 = libc::S_ISUID | libc::S_ISGID;
/// The one extended attribute the guest may never set.
const CAPABILITY_XATTR: &[u8] = b"security.capability";

/// The kernel's limit on an xattr value and on a name list (XATTR_SIZE_MAX,
/// XATTR_LIST_MAX): no answer is longer.
const XATTR_MAX: u32 = 64 * 1024;

/// The buffer to give the passthrough for a GETXATTR or LISTXATTR of the
/// guest's `size`. The passthrough allocates `size` bytes before asking the
/// kernel, so a guest asking for 4 GiB made the device allocate 4 GiB; past
/// the kernel's limit a bigger buffer cannot change the answer. Zero stays
/// zero: it asks for the length.
pub(super) fn xattr_buffer_len(size: u32) -> u32 {
    size.min(XATTR_MAX)
}

/// The most directory data one READDIR reads from the host: fuse-backend-rs's
/// largest request buffer (1 MiB); Linux's FUSE client asks for one page.
const DIR_BUFFER_MAX: u32 = 1 << 20;

/// The passthrough's getdents buffer for a READDIR of the guest's `size`,
/// allocated before the call: the server only checks `size` against the
/// reply's writable buffers, which a guest can make 4 GiB by pointing many
/// descriptors at the same memory. A shorter answer is a normal one: the
/// guest reads on from the last entry's offset.
pub(super) fn dir_buffer_len(size: u32) -> u32 {
    size.min(DIR_BUFFER_MAX)
}

/// The mode bits the guest may give: no setuid or setgid, except S_ISGID
/// on a directory.
pub(super) fn allowed_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir {
        mode & !libc::S_ISUID
    } else {
        mode & !SUID_SGID
    }
}

/// Whether MKNOD of `mode`/`rdev` would make a device node.
pub(super) fn is_device_node(mode: u32, rdev: u32) -> bool {
    let kind = mode & libc::S_IFMT;
    kind == libc::S_IFBLK || (kind == libc::S_IFCHR && rdev != 0)
}

fn is_dir(st: &stat64) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

/// The passthrough filesystem under husk's policy.
pub(super) struct PolicyFs {
    inner: PassthroughFs,
    metrics: Arc<FsMetrics>,
    space: Option<Arc<SpaceBudget>>,
    /// How long the guest may remember that a name does not exist (the
    /// cache mode's entry timeout; zero: not at all).
    negative_timeout: Duration,
}

impl PolicyFs {
    pub(super) fn new(
        inner: PassthroughFs,
        metrics: Arc<FsMetrics>,
        space: Option<Arc<SpaceBudget>>,
        negative_timeout: Duration,
    ) -> Self {
        Self {
            inner,
            metrics,
            space,
            negative_timeout,
        }
    }

    /// `mode` without the bits the guest may not set, counted if any went.
    fn strip(&self, mode: u32, dir: bool, op: &'static str) -> u32 {
        let allowed = allowed_mode(mode, dir);
        if allowed != mode {
            self.metrics
                .mode_bits_stripped
                .fetch_add(1, Ordering::Relaxed);
            crate::debug_limited!(
                op,
                mode = format_args!("{mode:o}"),
                "virtio-fs: setuid/setgid bits stripped"
            );
        }
        allowed
    }

    fn refuse(&self, e: i32) -> io::Error {
        self.metrics.refused.fetch_add(1, Ordering::Relaxed);
        errno(e)
    }

    /// Counts a request the size limit cut short or refused.
    fn note_over_limit(&self) {
        self.metrics.over_limit.fetch_add(1, Ordering::Relaxed);
        crate::warn_limited!(
            limit = self.space.as_ref().map_or(0, |s| s.limit()),
            "virtio-fs: the share's size limit is reached"
        );
    }

    /// Counts an ENOSPC from the size limit on its way to the guest.
    fn over_limit(&self, e: io::Error) -> io::Error {
        if e.raw_os_error() == Some(libc::ENOSPC) {
            self.note_over_limit();
        }
        e
    }

    /// How many of the `size` bytes a WRITE at `offset` may write into the
    /// file `before` describes (all of them without a size limit).
    fn fit_write(&self, before: &stat64, offset: u64, size: u32, append: bool) -> io::Result<u32> {
        let Some(space) = &self.space else {
            return Ok(size);
        };
        let fits = space
            .fit_write(before, offset, size, append)
            .map_err(|e| self.over_limit(e))?;
        if fits < size {
            self.note_over_limit();
        }
        Ok(fits)
    }

    /// Charges what an operation did to the file `before` described.
    fn account_after(&self, ctx: &Context, inode: Inode, handle: Option<Handle>, before: &stat64) {
        if let Some(space) = &self.space {
            if let Ok(after) = self.stat(ctx, inode, handle) {
                space.account(before, &after);
            }
        }
    }

    fn check_mknod(&self, mode: u32, rdev: u32) -> io::Result<()> {
        if !is_device_node(mode, rdev) {
            return Ok(());
        }
        crate::warn_limited!(mode, rdev, "virtio-fs: refusing to create a device node");
        Err(self.refuse(libc::EPERM))
    }

    fn check_xattr(&self, name: &CStr) -> io::Result<()> {
        if name.to_bytes() != CAPABILITY_XATTR {
            return Ok(());
        }
        crate::debug_limited!("virtio-fs: refusing to set security.capability");
        Err(self.refuse(libc::EPERM))
    }

    /// The size the file `before` describes has after FALLOCATE `mode` of
    /// [offset, offset + length), under a size limit: KEEP_SIZE allocations
    /// get EOPNOTSUPP, as they put blocks past the end, where the limit
    /// (apparent sizes) would not see them.
    fn fallocated_size(
        &self,
        before: &stat64,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<u64> {
        let mode = mode as i32;
        if mode & libc::FALLOC_FL_KEEP_SIZE != 0 && mode & libc::FALLOC_FL_PUNCH_HOLE == 0 {
            crate::debug_limited!(mode, "virtio-fs: fallocate KEEP_SIZE refused (size limit)");
            return Err(self.refuse(libc::EOPNOTSUPP));
        }
        let size = u64::try_from(before.st_size).unwrap_or(0);
        Ok(
            if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_COLLAPSE_RANGE) != 0 {
                size
            } else if mode & libc::FALLOC_FL_INSERT_RANGE != 0 {
                size.saturating_add(length)
            } else {
                size.max(offset.saturating_add(length))
            },
        )
    }

    fn stat(&self, ctx: &Context, inode: Inode, handle: Option<Handle>) -> io::Result<stat64> {
        self.inner.getattr(ctx, inode, handle).map(|(st, _)| st)
    }

    /// Clears setuid and setgid on the regular file `st` describes before
    /// the guest changes its content.
    fn kill_privs(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
        st: &stat64,
    ) -> io::Result<()> {
        if st.st_mode & libc::S_IFMT != libc::S_IFREG || st.st_mode & SUID_SGID == 0 {
            return Ok(());
        }
        let mut attr = *st;
        attr.st_mode &= !SUID_SGID;
        self.inner
            .setattr(ctx, inode, attr, handle, SetattrValid::MODE)?;
        self.metrics
            .mode_bits_stripped
            .fetch_add(1, Ordering::Relaxed);
        crate::debug_limited!(inode, "virtio-fs: setuid/setgid cleared before a change");
        Ok(())
    }

    /// The node and attributes of `name` in `parent`, if it exists; the
    /// caller owes the passthrough a `forget` of the node.
    fn peek(&self, ctx: &Context, parent: Inode, name: &CStr) -> Option<(Inode, stat64)> {
        let entry = self.inner.lookup(ctx, parent, name).ok()?;
        (entry.inode != 0).then_some((entry.inode, entry.attr))
    }

    /// Whether the passthrough still holds `node` (an O_PATH descriptor).
    /// Its own GETATTR would log an error for every node it no longer has.
    fn alive(&self, node: Inode) -> bool {
        self.inner.readlinkat_proc_file(node).is_ok()
    }

    /// Frees orphan `node`'s charge once nothing on the host holds it.
    fn settle(&self, space: &SpaceBudget, node: Inode) {
        if space.may_free(node) && !self.alive(node) {
            space.free(node);
        }
    }

    /// After `op` removed a name of `node` (looked up by `peek`): a node
    /// left without links becomes an orphan; then the peek is forgotten.
    fn after_unlink(&self, ctx: &Context, space: &SpaceBudget, node: Inode, removed: bool) {
        if removed {
            if let Ok(st) = self.stat(ctx, node, None) {
                if st.st_nlink == 0 {
                    space.unlinked(node, &st);
                }
            }
        }
        self.inner.forget(ctx, node, 1);
        self.settle(space, node);
    }
}
