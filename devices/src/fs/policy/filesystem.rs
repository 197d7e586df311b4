//! `FileSystem` for `PolicyFs`: every operation goes to the passthrough
//! filesystem; those the policy cares about (see the module above) check,
//! strip or account on the way.

use std::ffi::CStr;
use std::io;
use std::time::Duration;

use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64, CreateIn, FsOptions, OpenOptions};
use fuse_backend_rs::abi::virtio_fs::{RemovemappingOne, SetupmappingFlags};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileLock, FileSystem, GetxattrReply, IoctlData, ListxattrReply,
    SetattrValid, ZeroCopyReader, ZeroCopyWriter,
};
use fuse_backend_rs::transport::FsCacheReqHandler;

use super::{dir_buffer_len, is_dir, xattr_buffer_len, Handle, Inode, PolicyFs};

impl FileSystem for PolicyFs {
    type Inode = Inode;
    type Handle = Handle;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let mut options = self.inner.init(capable)?;
        // The guest keeps file pages across opens (KEEP_CACHE) and drops
        // them when it sees the host changed the file's mtime or size.
        if capable.contains(FsOptions::AUTO_INVAL_DATA) {
            options |= FsOptions::AUTO_INVAL_DATA;
        }
        Ok(options)
    }

    fn destroy(&self) {
        self.inner.destroy()
    }

    /// A missing name is a negative entry the guest keeps for the cache's
    /// entry timeout, as libfuse's passthrough answers: an ENOENT reply is
    /// stale at once, so every concurrent lookup of the same missing name
    /// (100 execs searching PATH) went to the host again, one at a time.
    fn lookup(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<Entry> {
        match self.inner.lookup(ctx, parent, name) {
            Err(e)
                if e.raw_os_error() == Some(libc::ENOENT) && !self.negative_timeout.is_zero() =>
            {
                Ok(Entry {
                    entry_timeout: self.negative_timeout,
                    ..Entry::default()
                })
            }
            other => other,
        }
    }

    fn forget(&self, ctx: &Context, inode: Inode, count: u64) {
        self.inner.forget(ctx, inode, count);
        if let Some(space) = &self.space {
            self.settle(space, inode);
        }
    }

    fn batch_forget(&self, ctx: &Context, requests: Vec<(Inode, u64)>) {
        let nodes: Vec<Inode> = match &self.space {
            Some(_) => requests.iter().map(|&(node, _)| node).collect(),
            None => Vec::new(),
        };
        self.inner.batch_forget(ctx, requests);
        if let Some(space) = &self.space {
            nodes.into_iter().for_each(|node| self.settle(space, node));
        }
    }

    fn getattr(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Option<Handle>,
    ) -> io::Result<(stat64, Duration)> {
        self.inner.getattr(ctx, inode, handle)
    }

    fn setattr(
        &self,
        ctx: &Context,
        inode: Inode,
        mut attr: stat64,
        handle: Option<Handle>,
        valid: SetattrValid,
    ) -> io::Result<(stat64, Duration)> {
        if !valid.intersects(SetattrValid::MODE | SetattrValid::SIZE) {
            return self.inner.setattr(ctx, inode, attr, handle, valid);
        }
        // The guest's idea of the file's type is not trusted: ask the host.
        let before = self.stat(ctx, inode, handle)?;
        if valid.contains(SetattrValid::MODE) {
            attr.st_mode = self.strip(attr.st_mode, is_dir(&before), "setattr");
        }
        let resize = valid.contains(SetattrValid::SIZE);
        if resize {
            if let (Some(space), Ok(size)) = (&self.space, u64::try_from(attr.st_size)) {
                space
                    .check_size(&before, size)
                    .map_err(|e| self.over_limit(e))?;
            }
            self.kill_privs(ctx, inode, handle, &before)?;
        }
        let (after, timeout) = self.inner.setattr(ctx, inode, attr, handle, valid)?;
        if let (true, Some(space)) = (resize, &self.space) {
            space.account(&before, &after);
        }
        Ok((after, timeout))
    }

    fn readlink(&self, ctx: &Context, inode: Inode) -> io::Result<Vec<u8>> {
        self.inner.readlink(ctx, inode)
    }

    fn symlink(
        &self,
        ctx: &Context,
        linkname: &CStr,
        parent: Inode,
        name: &CStr,
    ) -> io::Result<Entry> {
        self.inner.symlink(ctx, linkname, parent, name)
    }

    fn mknod(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        mode: u32,
        rdev: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        self.check_mknod(mode, rdev)?;
        let mode = self.strip(mode, false, "mknod");
        self.inner.mknod(ctx, inode, name, mode, rdev, umask)
    }

    fn mkdir(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mode: u32,
        umask: u32,
    ) -> io::Result<Entry> {
        let mode = self.strip(mode, true, "mkdir");
        self.inner.mkdir(ctx, parent, name, mode, umask)
    }

    fn unlink(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        let Some(space) = &self.space else {
            return self.inner.unlink(ctx, parent, name);
        };
        let target = self.peek(ctx, parent, name);
        let res = self.inner.unlink(ctx, parent, name);
        if let Some((node, _)) = target {
            self.after_unlink(ctx, space, node, res.is_ok());
        }
        res
    }

    fn rmdir(&self, ctx: &Context, parent: Inode, name: &CStr) -> io::Result<()> {
        self.inner.rmdir(ctx, parent, name)
    }

    fn rename(
        &self,
        ctx: &Context,
        olddir: Inode,
        oldname: &CStr,
        newdir: Inode,
        newname: &CStr,
        flags: u32,
    ) -> io::Result<()> {
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let Some(space) = self.space.as_ref().filter(|_| !exchange) else {
            return self
                .inner
                .rename(ctx, olddir, oldname, newdir, newname, flags);
        };
        // The file a rename replaces loses a link, as with unlink.
        let target = self.peek(ctx, newdir, newname);
        let res = self
            .inner
            .rename(ctx, olddir, oldname, newdir, newname, flags);
        if let Some((node, _)) = target {
            self.after_unlink(ctx, space, node, res.is_ok());
        }
        res
    }

    fn link(
        &self,
        ctx: &Context,
        inode: Inode,
        newparent: Inode,
        newname: &CStr,
    ) -> io::Result<Entry> {
        self.inner.link(ctx, inode, newparent, newname)
    }

    fn open(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions, Option<u32>)> {
        let Some(space) = &self.space else {
            return self.inner.open(ctx, inode, flags, fuse_flags);
        };
        let truncates = flags as i32 & libc::O_TRUNC != 0;
        let before = if truncates {
            Some(self.stat(ctx, inode, None)?)
        } else {
            None
        };
        let opened = self.inner.open(ctx, inode, flags, fuse_flags)?;
        if opened.0.is_some() {
            space.opened(inode);
        }
        if let Some(before) = before {
            self.account_after(ctx, inode, None, &before);
        }
        Ok(opened)
    }

    fn create(
        &self,
        ctx: &Context,
        parent: Inode,
        name: &CStr,
        mut args: CreateIn,
    ) -> io::Result<(Entry, Option<Handle>, OpenOptions, Option<u32>)> {
        args.mode = self.strip(args.mode, false, "create");
        let Some(space) = &self.space else {
            return self.inner.create(ctx, parent, name, args);
        };
        // CREATE without O_EXCL opens an existing file, and O_TRUNC empties it.
        let existing = if args.flags as i32 & libc::O_TRUNC != 0 {
            self.peek(ctx, parent, name)
        } else {
            None
        };
        let res = self.inner.create(ctx, parent, name, args);
        if let Ok((entry, handle, ..)) = &res {
            if handle.is_some() {
                space.opened(entry.inode);
            }
            // The passthrough's entry predates the truncation: stat again.
            let after = existing
                .as_ref()
                .and_then(|_| self.stat(ctx, entry.inode, *handle).ok());
            if let (Some((_, before)), Some(after)) = (&existing, after) {
                space.account(before, &after);
            }
        }
        if let Some((node, _)) = existing {
            self.inner.forget(ctx, node, 1);
        }
        res
    }

    fn read(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        flags: u32,
    ) -> io::Result<usize> {
        self.inner
            .read(ctx, inode, handle, w, size, offset, lock_owner, flags)
    }

    fn write(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        r: &mut dyn ZeroCopyReader,
        size: u32,
        offset: u64,
        lock_owner: Option<u64>,
        delayed_write: bool,
        flags: u32,
        fuse_flags: u32,
    ) -> io::Result<usize> {
        let before = self.stat(ctx, inode, Some(handle))?;
        self.kill_privs(ctx, inode, Some(handle), &before)?;
        // The passthrough sets the handle's file status flags to `flags`
        // before writing, so O_APPEND here is what the write will do.
        let append = flags as i32 & libc::O_APPEND != 0;
        let fits = self.fit_write(&before, offset, size, append)?;
        let written = self.inner.write(
            ctx,
            inode,
            handle,
            r,
            fits,
            offset,
            lock_owner,
            delayed_write,
            flags,
            fuse_flags,
        );
        self.account_after(ctx, inode, Some(handle), &before);
        written
    }

    fn flush(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        lock_owner: u64,
    ) -> io::Result<()> {
        self.inner.flush(ctx, inode, handle, lock_owner)
    }

    fn fsync(&self, ctx: &Context, inode: Inode, datasync: bool, handle: Handle) -> io::Result<()> {
        self.inner.fsync(ctx, inode, datasync, handle)
    }

    fn fallocate(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        mode: u32,
        offset: u64,
        length: u64,
    ) -> io::Result<()> {
        let before = self.stat(ctx, inode, Some(handle))?;
        if let Some(space) = &self.space {
            let new_size = self.fallocated_size(&before, mode, offset, length)?;
            space
                .check_size(&before, new_size)
                .map_err(|e| self.over_limit(e))?;
        }
        self.kill_privs(ctx, inode, Some(handle), &before)?;
        let res = self
            .inner
            .fallocate(ctx, inode, handle, mode, offset, length);
        self.account_after(ctx, inode, Some(handle), &before);
        res
    }

    #[allow(clippy::too_many_arguments)]
    fn release(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
        flush: bool,
        flock_release: bool,
        lock_owner: Option<u64>,
    ) -> io::Result<()> {
        self.inner
            .release(ctx, inode, flags, handle, flush, flock_release, lock_owner)?;
        if let Some(space) = &self.space {
            space.released(inode);
            self.settle(space, inode);
        }
        Ok(())
    }

    fn statfs(&self, ctx: &Context, inode: Inode) -> io::Result<statvfs64> {
        self.inner.statfs(ctx, inode)
    }

    fn setxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        value: &[u8],
        flags: u32,
    ) -> io::Result<()> {
        self.check_xattr(name)?;
        self.inner.setxattr(ctx, inode, name, value, flags)
    }

    fn getxattr(
        &self,
        ctx: &Context,
        inode: Inode,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        self.inner
            .getxattr(ctx, inode, name, xattr_buffer_len(size))
    }

    fn listxattr(&self, ctx: &Context, inode: Inode, size: u32) -> io::Result<ListxattrReply> {
        self.inner.listxattr(ctx, inode, xattr_buffer_len(size))
    }

    fn removexattr(&self, ctx: &Context, inode: Inode, name: &CStr) -> io::Result<()> {
        self.inner.removexattr(ctx, inode, name)
    }

    fn opendir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
    ) -> io::Result<(Option<Handle>, OpenOptions)> {
        self.inner.opendir(ctx, inode, flags)
    }

    fn readdir(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let size = dir_buffer_len(size);
        self.inner
            .readdir(ctx, inode, handle, size, offset, add_entry)
    }

    fn readdirplus(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        let size = dir_buffer_len(size);
        self.inner
            .readdirplus(ctx, inode, handle, size, offset, add_entry)
    }

    fn fsyncdir(
        &self,
        ctx: &Context,
        inode: Inode,
        datasync: bool,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.fsyncdir(ctx, inode, datasync, handle)
    }

    fn releasedir(
        &self,
        ctx: &Context,
        inode: Inode,
        flags: u32,
        handle: Handle,
    ) -> io::Result<()> {
        self.inner.releasedir(ctx, inode, flags, handle)
    }

    #[allow(clippy::too_many_arguments)]
    fn setupmapping(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        foffset: u64,
        len: u64,
        flags: u64,
        moffset: u64,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        // Stores through a writable mapping change the file unseen: clear
        // setuid and setgid now. They cannot move the file's end, so the
        // size limit (apparent sizes) has nothing to charge.
        if flags & SetupmappingFlags::WRITE.bits() != 0 {
            let st = self.stat(ctx, inode, None)?;
            self.kill_privs(ctx, inode, None, &st)?;
        }
        self.inner
            .setupmapping(ctx, inode, handle, foffset, len, flags, moffset, vu_req)
    }

    fn removemapping(
        &self,
        ctx: &Context,
        inode: Inode,
        requests: Vec<RemovemappingOne>,
        vu_req: &mut dyn FsCacheReqHandler,
    ) -> io::Result<()> {
        self.inner.removemapping(ctx, inode, requests, vu_req)
    }

    fn access(&self, ctx: &Context, inode: Inode, mask: u32) -> io::Result<()> {
        self.inner.access(ctx, inode, mask)
    }

    fn lseek(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        offset: u64,
        whence: u32,
    ) -> io::Result<u64> {
        self.inner.lseek(ctx, inode, handle, offset, whence)
    }

    fn getlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<FileLock> {
        self.inner.getlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlk(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlk(ctx, inode, handle, owner, lock, flags)
    }

    fn setlkw(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        owner: u64,
        lock: FileLock,
        flags: u32,
    ) -> io::Result<()> {
        self.inner.setlkw(ctx, inode, handle, owner, lock, flags)
    }

    #[allow(clippy::too_many_arguments)]
    fn ioctl(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        flags: u32,
        cmd: u32,
        data: IoctlData,
        out_size: u32,
    ) -> io::Result<IoctlData<'_>> {
        self.inner
            .ioctl(ctx, inode, handle, flags, cmd, data, out_size)
    }

    fn bmap(&self, ctx: &Context, inode: Inode, block: u64, blocksize: u32) -> io::Result<u64> {
        self.inner.bmap(ctx, inode, block, blocksize)
    }

    fn poll(
        &self,
        ctx: &Context,
        inode: Inode,
        handle: Handle,
        khandle: Handle,
        flags: u32,
        events: u32,
    ) -> io::Result<u32> {
        self.inner.poll(ctx, inode, handle, khandle, flags, events)
    }

    fn notify_reply(&self) -> io::Result<()> {
        self.inner.notify_reply()
    }

    #[inline]
    fn id_remap(&self, ctx: &mut Context) -> io::Result<()> {
        self.inner.id_remap(ctx)
    }
}
