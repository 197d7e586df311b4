//! The tap backend: a Linux tap interface that carries the guest's frames.
//!
//! The fd is opened as IFF_TAP | IFF_NO_PI | IFF_VNET_HDR with a 12-byte
//! vnet header (TUNSETVNETHDRSZ), which is exactly virtio 1.x's
//! `virtio_net_hdr_v1` (num_buffers included). So a guest TX chain goes to
//! the tap as it is (header + frame, one writev), and a frame read from the
//! tap already starts with the header the guest expects; the kernel handles
//! checksum offload and GSO on both sides. TUNSETOFFLOAD says which offloaded
//! frames the guest accepts, so the kernel never hands us a frame the guest
//! did not negotiate.
//!
//! The runtime opens the tap inside a pod's network namespace (`open_in_netns`
//! runs the open on a thread of its own that enters that namespace; an fd of
//! a tap opened elsewhere can be handed over with `from_fd`). A tap fd works
//! from any namespace once open. The fd is non-blocking: reads end at EAGAIN,
//! and the device's event loop waits on it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ref, ioctl_with_val};

use super::NET_HDR_LEN;

/// The flags a tap must have for this device.
const TAP_FLAGS: libc::c_int = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
/// Every offload this device can negotiate with a guest.
pub const TUN_OFFLOADS: u32 = libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error("tap name {0:?} is empty, longer than 15 bytes or holds a NUL")]
    BadName(String),
    #[error("cannot open /dev/net/tun: {0}")]
    OpenTun(#[source] io::Error),
    #[error("cannot create or attach tap {name}: {source}")]
    SetIff {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("the fd is not an attached tun/tap device: {0}")]
    NotATap(#[source] io::Error),
    #[error(
        "tap {name} has flags {flags:#x}; it needs IFF_TAP | IFF_NO_PI | IFF_VNET_HDR \
         (open it with those flags, or let husk open it by name)"
    )]
    WrongFlags { name: String, flags: i32 },
    #[error("tap {name}: cannot set the vnet header size to {NET_HDR_LEN}: {source}")]
    VnetHdrSize {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("tap {name}: cannot make the fd non-blocking: {source}")]
    NonBlocking {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the network namespace {path}: {source}")]
    OpenNetns {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("cannot enter the network namespace {path}: {source}")]
    EnterNetns {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("the thread that opens the tap in {0} failed")]
    NetnsThread(String),
}

/// An open tap interface, ready for the net device.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
    /// Whether TUNSETOFFLOAD took every offload the device can offer.
    offloads: bool,
}

impl Tap {
    /// Opens tap `name` in the calling thread's network namespace, creating
    /// it when it does not exist (it then lives as long as its fds).
    pub fn open_named(name: &str) -> Result<Self, TapError> {
        let mut req = ifreq_named(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(TapError::OpenTun)?;
        req.ifr_ifru.ifru_flags = TAP_FLAGS as libc::c_short;
        // SAFETY: TUNSETIFF reads a struct ifreq, which `req` is, and
        // writes the chosen name back into it; `file` is a tun fd.
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNSETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::SetIff {
                name: name.into(),
                source: io::Error::last_os_error(),
            });
        }
        Self::configure(file)
    }

    /// Opens tap `name` inside the network namespace at `netns` (a path such
    /// as `/var/run/netns/NAME` or `/proc/PID/ns/net`): a short-lived thread
    /// enters the namespace, opens the tap and ends; the caller's threads
    /// never change namespace.
    pub fn open_in_netns(netns: &Path, name: &str) -> Result<Self, TapError> {
        let path = netns.display().to_string();
        let ns = File::open(netns).map_err(|source| TapError::OpenNetns {
            path: path.clone(),
            source,
        })?;
        let name = name.to_string();
        let thread_path = path.clone();
        std::thread::Builder::new()
            .name("husk-tap-open".into())
            .spawn(move || {
                // SAFETY: setns with an fd we own and CLONE_NEWNET only
                // moves this thread, which ends right after the open.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                    return Err(TapError::EnterNetns {
                        path: thread_path,
                        source: io::Error::last_os_error(),
                    });
                }
                Self::open_named(&name)
            })
            .map_err(|_| TapError::NetnsThread(path.clone()))?
            .join()
            .map_err(|_| TapError::NetnsThread(path))?
    }

    /// Takes over an fd of a tap that is already attached (TUNSETIFF done)
    /// with IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, e.g. opened by the runtime
    /// inside a pod's network namespace.
    pub fn from_fd(fd: OwnedFd) -> Result<Self, TapError> {
        Self::configure(File::from(fd))
    }

    // Checks the flags, sets the header size and non-blocking mode, and
    // probes the offloads.
    fn configure(file: File) -> Result<Self, TapError> {
        // SAFETY: all-zero bytes are a valid ifreq (a C struct of integers,
        // arrays and pointers that the kernel overwrites).
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        // SAFETY: TUNGETIFF writes a struct ifreq into `req`.
        let ret = unsafe { ioctl_with_mut_ref(&file, libc::TUNGETIFF, &mut req) };
        if ret < 0 {
            return Err(TapError::NotATap(io::Error::last_os_error()));
        }
        let name = ifreq_name(&req);
        // SAFETY: TUNGETIFF set the flags member of the union.
        let flags = i32::from(unsafe { req.ifr_ifru.ifru_flags } as u16);
        if flags & TAP_FLAGS != TAP_FLAGS || flags & libc::IFF_TUN != 0 {
            return Err(TapError::WrongFlags { name, flags });
        }
        let size = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int.
        if unsafe { ioctl_with_ref(&file, libc::TUNSETVNETHDRSZ, &size) } < 0 {
            return Err(TapError::VnetHdrSize {
                name,
                source: io::Error::last_os_error(),
            });
        }
        set_nonblocking(&file).map_err(|source| TapError::NonBlocking {
            name: name.clone(),
            source,
        })?;
        let mut tap = Self {
            file,
            name,
            offloads: false,
        };
        tap.offloads = tap.set_offload(TUN_OFFLOADS).is_ok();
        if !tap.offloads {
            tracing::warn!(tap = tap.name, "tap takes no offloads; the guest gets none");
        }
        // Plain frames only until a guest says what it takes.
        if let Err(e) = tap.set_offload(0) {
            tracing::warn!(tap = tap.name, "cannot turn the tap's offloads off: {e}");
        }
        Ok(tap)
    }

    /// The interface's name in its namespace.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the tap takes checksum and TSO offloads (every Linux tap
    /// with a vnet header does).
    pub fn supports_offloads(&self) -> bool {
        self.offloads
    }

    /// TUNSETOFFLOAD: which offloaded frames (TUN_F_*) the kernel may hand us.
    pub fn set_offload(&self, flags: u32) -> io::Result<()> {
        // SAFETY: TUNSETOFFLOAD takes its argument by value.
        let ret = unsafe { ioctl_with_val(&self.file, libc::TUNSETOFFLOAD, flags.into()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads one frame (vnet header first); EAGAIN when none is queued.
    pub fn read_frame(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Writes one frame (vnet header first) gathered from `iov`.
    ///
    /// # Safety
    /// Each iovec must point at memory valid for reads of its length for
    /// the duration of the call.
    pub unsafe fn writev_frame(&self, iov: &[libc::iovec]) -> io::Result<usize> {
        let count = libc::c_int::try_from(iov.len())
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the caller guarantees every iovec is readable; the
        // kernel reads `count` of them.
        let n = unsafe { libc::writev(self.fd(), iov.as_ptr(), count) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.fd()
    }
}

/// Whether a tap read or write error means the interface is gone for good
/// (deleted, or its namespace torn down: the kernel detached the fd and
/// answers EBADFD), rather than this one frame failing. EIO is not among
/// them: a tap whose link is down answers writes with EIO, and comes back
/// when the link is set up again.
pub fn is_gone(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EBADFD | libc::EBADF | libc::ENODEV | libc::ENXIO)
    )
}

// A struct ifreq carrying `name`.
fn ifreq_named(name: &str) -> Result<libc::ifreq, TapError> {
    let bytes = name.as_bytes();
    if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
        return Err(TapError::BadName(name.into()));
    }
    // SAFETY: all-zero bytes are a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req.ifr_name.iter_mut().zip(bytes) {
        *dst = b as libc::c_char;
    }
    Ok(req)
}

fn ifreq_name(req: &libc::ifreq) -> String {
    let bytes: Vec<u8> = req
        .ifr_name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn set_nonblocking(file: &File) -> io::Result<()> {
    // SAFETY: F_GETFL on an fd we own has no memory effects.
    let flags = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: F_SETFL on an fd we own has no memory effects.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
