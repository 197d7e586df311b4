//! A scripted guest for the virtio-fs device: FUSE requests encoded the way
//! the Linux driver sends them, carried by `GuestDriver` over mock guest
//! memory to a real `FsDevice` over a temporary host directory, with the
//! real event-manager loop in between. Shared by the device's tests and,
//! with the `test-harness` feature, benches and other crates.
//!
//! The message layouts are fuse-backend-rs's ABI structs; this file only
//! frames them (header, arguments, names) and parses replies.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, SubscriberOps};
pub use fuse_backend_rs::abi::fuse_abi::{
    Attr, AttrOut, CreateIn, Dirent, Direntplus, EntryOut, FallocateIn, FlushIn, ForgetIn, FsyncIn,
    GetattrIn, InHeader, InitIn, InitOut, LinkIn, MkdirIn, MknodIn, Opcode, OpenIn, OpenOut,
    OutHeader, ReadIn, ReleaseIn, RenameIn, SetattrIn, SetattrValid, SetxattrIn, StatfsOut,
    WriteIn, WriteOut,
};
pub use fuse_backend_rs::abi::virtio_fs::{
    RemovemappingIn, RemovemappingOne, SetupmappingFlags, SetupmappingIn,
};
use vm_memory::ByteValued;
use vmm_sys_util::tempdir::TempDir;

use super::{CacheMode, FsConfig, FsDevice, FsMetrics};
use crate::virtio::device_loop::DeviceLoop;
use crate::virtio::test_utils::{temp_dir, GuestDriver, BUF_SIZE};

pub const HIPRIO_QUEUE: usize = 0;
pub const REQUEST_QUEUE: usize = 1;
/// The root directory's FUSE node id.
pub const ROOT: u64 = 1;
pub const OUT_HEADER_LEN: usize = std::mem::size_of::<OutHeader>();
/// The FUSE version the harness speaks (Linux 6.1 sends 7.36+).
const KERNEL_MINOR: u32 = 36;

/// What came back for one chain.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Used length the device returned; 0 for a dropped chain or no reply.
    pub used_len: u32,
    pub header: OutHeader,
    /// The reply after the out header.
    pub body: Vec<u8>,
}

impl Reply {
    /// The reply's errno (positive), 0 on success.
    pub fn errno(&self) -> i32 {
        -self.header.error
    }

    /// The raw body, or the errno the device answered with (-1: no reply).
    pub fn bytes(&self) -> Result<Vec<u8>, i32> {
        match (self.used_len, self.header.error) {
            (0, _) => Err(-1),
            (_, 0) => Ok(self.body.clone()),
            _ => Err(self.errno()),
        }
    }

    /// The body as `T`, or the errno the device answered with.
    pub fn ok<T: ByteValued>(&self) -> Result<T, i32> {
        let body = self.bytes()?;
        let bytes = body
            .get(..std::mem::size_of::<T>())
            .expect("reply body shorter than its type");
        Ok(*T::from_slice(bytes).unwrap())
    }
}

/// Encodes a request: header (len filled in) followed by `args`.
pub fn request(opcode: Opcode, nodeid: u64, unique: u64, args: &[&[u8]]) -> Vec<u8> {
    let body: Vec<u8> = args.concat();
    let header = InHeader {
        len: (std::mem::size_of::<InHeader>() + body.len()) as u32,
        opcode: opcode as u32,
        unique,
        nodeid,
        pid: 1,
        ..Default::default()
    };
    [header.as_slice(), &body].concat()
}

/// A NUL-terminated name as FUSE sends it.
pub fn name(s: &str) -> Vec<u8> {
    CString::new(s).unwrap().into_bytes_with_nul()
}

/// One entry of a READDIR or READDIRPLUS reply.
#[derive(Debug, Clone)]
pub struct DirEntry {
    pub name: String,
    pub ino: u64,
    /// The entry's lookup result, for READDIRPLUS.
    pub entry: Option<EntryOut>,
}

/// Parses a READDIR (`plus` false) or READDIRPLUS reply body.
pub fn parse_dirents(mut body: &[u8], plus: bool) -> Vec<DirEntry> {
    let mut out = Vec::new();
    let fixed = if plus {
        std::mem::size_of::<Direntplus>()
    } else {
        std::mem::size_of::<Dirent>()
    };
    while body.len() >= fixed {
        let (entry, dirent) = if plus {
            let d = *Direntplus::from_slice(&body[..fixed]).unwrap();
            (Some(d.entry_out), d.dirent)
        } else {
            (None, *Dirent::from_slice(&body[..fixed]).unwrap())
        };
        let namelen = dirent.namelen as usize;
        let name = String::from_utf8_lossy(&body[fixed..fixed + namelen]).into_owned();
        out.push(DirEntry {
            name,
            ino: dirent.ino,
            entry,
        });
        let record = (fixed + namelen).next_multiple_of(8);
        body = &body[record.min(body.len())..];
    }
    out
}

pub struct FsHarness {
    pub drv: GuestDriver,
    em: DeviceLoop<Arc<Mutex<FsDevice>>>,
    pub dev: Arc<Mutex<FsDevice>>,
    /// The shared directory.
    pub dir: TempDir,
    unique: u64,
    /// The flags the device answered FUSE INIT with.
    pub init_flags: u32,
}

impl Default for FsHarness {
    fn default() -> Self {
        Self::new()
    }
}

impl FsHarness {
    /// A device over a fresh temp directory, driver initialized, FUSE INIT done.
    pub fn new() -> Self {
        Self::with_config(|_| {})
    }

    /// As `new`, after `tweak` edits the default configuration.
    pub fn with_config(tweak: impl FnOnce(&mut FsConfig)) -> Self {
        let dir = temp_dir("husk-fs-");
        let mut config = FsConfig {
            tag: "husk".into(),
            shared_dir: dir.as_path().join("share"),
            cache: CacheMode::None,
            xattr: true,
            dax_window: None,
            request_queues: 1,
            size_limit: None,
        };
        std::fs::create_dir(&config.shared_dir).unwrap();
        tweak(&mut config);
        let dev = Arc::new(Mutex::new(FsDevice::new(&config).unwrap()));
        let mut em = EventManager::new().unwrap();
        em.add_subscriber(dev.clone());
        let mut drv = GuestDriver::new(dev.clone(), 64);
        drv.init();
        let mut h = Self {
            drv,
            em: DeviceLoop::new(em),
            dev,
            dir,
            unique: 0,
            init_flags: 0,
        };
        h.pump();
        let init = h.init();
        assert_eq!(init.major, 7, "FUSE INIT failed");
        h.init_flags = init.flags;
        h
    }

    /// The shared directory (the guest's root) on the host.
    pub fn root(&self) -> PathBuf {
        self.dir.as_path().join("share")
    }

    /// A host path next to (outside) the shared directory.
    pub fn outside(&self, rel: &str) -> PathBuf {
        self.dir.as_path().join(rel)
    }

    pub fn host(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root().join(rel)
    }

    pub fn metric(&self, f: impl Fn(&FsMetrics) -> &AtomicU64) -> u64 {
        f(&self.dev.lock().unwrap().metrics()).load(Ordering::Relaxed)
    }

    /// Runs the event loop until nothing is ready (nothing once the device
    /// runs on its own thread).
    pub fn pump(&mut self) {
        self.em.pump();
    }

    /// Runs the device's event loop on a thread of its own, after `confine`
    /// has run there: requests then only post, kick and poll the used ring.
    pub fn run_device_on_thread(&mut self, confine: impl FnOnce() + Send + 'static) {
        self.em.move_to_thread(confine);
    }

    pub fn next_unique(&mut self) -> u64 {
        self.unique += 2;
        self.unique
    }

    /// Posts one chain on queue `q` and returns what the device did with it.
    pub fn send_on(&mut self, q: usize, parts: &[&[u8]], lens: &[u32]) -> Reply {
        let descs = self.drv.add_chain(q, parts, lens).expect("queue full");
        self.drv.kick(q);
        let used = self.em.take_used_until(&mut self.drv, q, descs[0]);
        let used_len = used
            .iter()
            .find(|&&(head, _)| head == descs[0])
            .map(|&(_, len)| len)
            .expect("the device did not return the chain");
        let writable = &descs[parts.len()..];
        let bytes = self.drv.read_chain(q, writable, lens, used_len as usize);
        let header = match bytes.get(..OUT_HEADER_LEN) {
            Some(h) => *OutHeader::from_slice(h).unwrap(),
            None => OutHeader::default(),
        };
        let body = bytes.get(OUT_HEADER_LEN..).unwrap_or_default().to_vec();
        Reply {
            used_len,
            header,
            body,
        }
    }

    /// Posts raw descriptors (addr, len, flags, next) in the next free slot of
    /// queue `q`; returns the used length the device gave the chain.
    pub fn send_raw(&mut self, q: usize, descs: &[(u64, u32, u16, u16)]) -> u32 {
        let head = self.drv.add_raw(q, descs).expect("queue full");
        self.drv.kick(q);
        let used = self.em.take_used_until(&mut self.drv, q, head);
        let found = used.iter().find(|&&(id, _)| id == head);
        found.expect("the device did not return the chain").1
    }

    /// Sends a request on the request queue with `reply_len` bytes of
    /// writable buffers (split into `BUF_SIZE` descriptors).
    pub fn call_with(&mut self, op: Opcode, node: u64, args: &[&[u8]], reply_len: usize) -> Reply {
        let unique = self.next_unique();
        let req = request(op, node, unique, args);
        let parts: Vec<&[u8]> = req.chunks(BUF_SIZE as usize).collect();
        let lens = writable_lens(reply_len);
        let reply = self.send_on(REQUEST_QUEUE, &parts, &lens);
        if reply.used_len > 0 {
            assert_eq!(reply.header.unique, unique, "reply to another request");
            assert_eq!(reply.header.len, reply.used_len, "out header len");
        }
        reply
    }

    pub fn call(&mut self, op: Opcode, node: u64, args: &[&[u8]]) -> Reply {
        self.call_with(op, node, args, 4096)
    }
}

fn writable_lens(total: usize) -> Vec<u32> {
    let mut lens = Vec::new();
    let mut left = total;
    while left > 0 {
        let len = left.min(BUF_SIZE as usize);
        lens.push(len as u32);
        left -= len;
    }
    lens
}

/// One method per FUSE operation, as the guest kernel would send it.
impl FsHarness {
    pub fn init(&mut self) -> InitOut {
        let args = InitIn {
            major: 7,
            minor: KERNEL_MINOR,
            max_readahead: 128 << 10,
            // What a Linux guest offers among the flags the device answers.
            flags: fuse_backend_rs::abi::fuse_abi::FsOptions::AUTO_INVAL_DATA.bits() as u32,
        };
        let more = [0u8; 48]; // InitIn2 (flags2 + unused) for minor >= 36
        self.call(Opcode::Init, 0, &[args.as_slice(), &more])
            .ok()
            .unwrap()
    }

    /// LOOKUP as the kernel takes it: a negative entry (node 0) is ENOENT.
    pub fn lookup(&mut self, parent: u64, n: &str) -> Result<EntryOut, i32> {
        match self.lookup_reply(parent, n)? {
            entry if entry.nodeid == 0 => Err(libc::ENOENT),
            entry => Ok(entry),
        }
    }

    /// LOOKUP's reply as the device sent it (negative entries included).
    pub fn lookup_reply(&mut self, parent: u64, n: &str) -> Result<EntryOut, i32> {
        self.call(Opcode::Lookup, parent, &[&name(n)]).ok()
    }

    /// Looks up a path relative to the root, one component at a time.
    pub fn walk(&mut self, path: &str) -> Result<EntryOut, i32> {
        let mut entry = EntryOut {
            nodeid: ROOT,
            ..Default::default()
        };
        for part in path.split('/').filter(|p| !p.is_empty()) {
            entry = self.lookup(entry.nodeid, part)?;
        }
        Ok(entry)
    }

    pub fn forget(&mut self, node: u64, nlookup: u64) -> Reply {
        let unique = self.next_unique();
        let req = request(
            Opcode::Forget,
            node,
            unique,
            &[ForgetIn { nlookup }.as_slice()],
        );
        self.send_on(HIPRIO_QUEUE, &[&req], &[])
    }

    pub fn getattr(&mut self, node: u64) -> Result<Attr, i32> {
        let args = GetattrIn::default();
        let out: AttrOut = self.call(Opcode::Getattr, node, &[args.as_slice()]).ok()?;
        Ok(out.attr)
    }

    pub fn setattr(&mut self, node: u64, args: SetattrIn) -> Result<Attr, i32> {
        let out: AttrOut = self.call(Opcode::Setattr, node, &[args.as_slice()]).ok()?;
        Ok(out.attr)
    }

    pub fn mkdir(&mut self, parent: u64, n: &str, mode: u32) -> Result<EntryOut, i32> {
        let args = MkdirIn { mode, umask: 0 };
        self.call(Opcode::Mkdir, parent, &[args.as_slice(), &name(n)])
            .ok()
    }

    pub fn mknod(&mut self, parent: u64, n: &str, mode: u32, rdev: u32) -> Result<EntryOut, i32> {
        let args = MknodIn {
            mode,
            rdev,
            ..Default::default()
        };
        self.call(Opcode::Mknod, parent, &[args.as_slice(), &name(n)])
            .ok()
    }

    /// CREATE: returns the new entry and the open file handle.
    pub fn create(&mut self, parent: u64, n: &str, mode: u32) -> Result<(EntryOut, u64), i32> {
        self.create_with(parent, n, mode, libc::O_RDWR | libc::O_CREAT)
    }

    /// CREATE with open `flags` of the guest's choosing.
    pub fn create_with(
        &mut self,
        parent: u64,
        n: &str,
        mode: u32,
        flags: i32,
    ) -> Result<(EntryOut, u64), i32> {
        let args = CreateIn {
            flags: flags as u32,
            mode,
            ..Default::default()
        };
        let reply = self.call(Opcode::Create, parent, &[args.as_slice(), &name(n)]);
        let entry: EntryOut = reply.ok()?;
        let open = OpenOut::from_slice(&reply.body[std::mem::size_of::<EntryOut>()..][..16]);
        Ok((entry, open.unwrap().fh))
    }

    pub fn open(&mut self, node: u64, flags: i32) -> Result<u64, i32> {
        self.open_out(node, flags).map(|out| out.fh)
    }

    /// OPEN's whole reply: the handle and the open flags (cache, direct IO).
    pub fn open_out(&mut self, node: u64, flags: i32) -> Result<OpenOut, i32> {
        let args = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        self.call(Opcode::Open, node, &[args.as_slice()]).ok()
    }

    pub fn read(&mut self, node: u64, fh: u64, offset: u64, size: u32) -> Result<Vec<u8>, i32> {
        let args = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        let reply = self.call_with(
            Opcode::Read,
            node,
            &[args.as_slice()],
            OUT_HEADER_LEN + size as usize,
        );
        reply.bytes()
    }

    pub fn write(&mut self, node: u64, fh: u64, offset: u64, data: &[u8]) -> Result<u32, i32> {
        self.write_with(node, fh, offset, data, libc::O_RDWR)
    }

    /// WRITE with the file status `flags` the guest's file has (O_APPEND...).
    pub fn write_with(
        &mut self,
        node: u64,
        fh: u64,
        offset: u64,
        data: &[u8],
        flags: i32,
    ) -> Result<u32, i32> {
        let args = WriteIn {
            fh,
            offset,
            size: data.len() as u32,
            flags: flags as u32,
            ..Default::default()
        };
        let out: WriteOut = self
            .call(Opcode::Write, node, &[args.as_slice(), data])
            .ok()?;
        Ok(out.size)
    }

    /// A request whose reply is a bare header: its errno (0 for success).
    pub fn status(&mut self, op: Opcode, node: u64, args: &[&[u8]]) -> i32 {
        let reply = self.call(op, node, args);
        assert_ne!(reply.used_len, 0, "{op:?} got no reply");
        reply.errno()
    }

    pub fn release(&mut self, node: u64, fh: u64) -> i32 {
        let args = ReleaseIn {
            fh,
            ..Default::default()
        };
        self.status(Opcode::Release, node, &[args.as_slice()])
    }

    pub fn setxattr(&mut self, node: u64, n: &str, value: &[u8]) -> i32 {
        let args = SetxattrIn {
            size: value.len() as u32,
            flags: 0,
        };
        self.status(Opcode::Setxattr, node, &[args.as_slice(), &name(n), value])
    }

    pub fn fallocate(&mut self, node: u64, fh: u64, mode: i32, offset: u64, length: u64) -> i32 {
        let args = FallocateIn {
            fh,
            offset,
            length,
            mode: mode as u32,
            padding: 0,
        };
        self.status(Opcode::Fallocate, node, &[args.as_slice()])
    }

    pub fn unlink(&mut self, parent: u64, n: &str) -> i32 {
        self.status(Opcode::Unlink, parent, &[&name(n)])
    }

    pub fn rename(&mut self, parent: u64, old: &str, newdir: u64, new: &str) -> i32 {
        let args = RenameIn { newdir };
        self.status(
            Opcode::Rename,
            parent,
            &[args.as_slice(), &name(old), &name(new)],
        )
    }

    pub fn link(&mut self, node: u64, newparent: u64, n: &str) -> Result<EntryOut, i32> {
        let args = LinkIn { oldnodeid: node };
        self.call(Opcode::Link, newparent, &[args.as_slice(), &name(n)])
            .ok()
    }

    pub fn symlink(&mut self, parent: u64, n: &str, target: &str) -> Result<EntryOut, i32> {
        self.call(Opcode::Symlink, parent, &[&name(n), &name(target)])
            .ok()
    }

    pub fn readlink(&mut self, node: u64) -> Result<Vec<u8>, i32> {
        self.call(Opcode::Readlink, node, &[]).bytes()
    }

    /// OPENDIR, READDIR or READDIRPLUS from offset 0, RELEASEDIR.
    pub fn readdir(&mut self, node: u64, plus: bool) -> Result<Vec<DirEntry>, i32> {
        let fh = self
            .call(Opcode::Opendir, node, &[OpenIn::default().as_slice()])
            .ok::<OpenOut>()?
            .fh;
        let op = if plus {
            Opcode::Readdirplus
        } else {
            Opcode::Readdir
        };
        let args = ReadIn {
            fh,
            size: 16 << 10,
            ..Default::default()
        };
        let reply = self.call_with(op, node, &[args.as_slice()], 32 << 10);
        let released = self.status(
            Opcode::Releasedir,
            node,
            &[ReleaseIn {
                fh,
                ..Default::default()
            }
            .as_slice()],
        );
        assert_eq!(released, 0, "RELEASEDIR");
        if reply.errno() != 0 {
            return Err(reply.errno());
        }
        Ok(parse_dirents(&reply.body, plus))
    }

    pub fn statfs(&mut self) -> Result<StatfsOut, i32> {
        self.call(Opcode::Statfs, ROOT, &[]).ok()
    }
}
