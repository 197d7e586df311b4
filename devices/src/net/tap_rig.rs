//! A real tap for tests, in a network namespace the test makes itself.
//!
//! `TapRig::new` makes a fresh network namespace (a short-lived thread
//! unshares it; the rig keeps it alive through an fd), turns IPv6 off there
//! so the kernel sends nothing of its own, opens a uniquely named tap inside
//! it with `Tap::open_in_netns` (the runtime's path), sets the link up and
//! binds a packet socket to it. The packet socket is the wire: what the
//! device writes to the tap arrives on it, and what the test sends on it
//! comes out of the tap for the device to read. Nothing has an address, and
//! the namespace has no other interface, so no frame can leave the host.
//! The namespace, the tap and the socket go when the rig and the device drop.
//!
//! Tests that need the rig call `tap_or_skip` first: without /dev/net/tun or
//! the right to make a network namespace (root, CAP_SYS_ADMIN) they say why
//! and skip; on this project's machines they run.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use super::Tap;

/// Whether this host can run tests that need a real tap, or why not.
pub fn tap_or_skip(test: &str) -> bool {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        eprintln!("SKIP {test}: needs read/write access to /dev/net/tun ({e})");
        return false;
    }
    if let Err(e) = new_netns() {
        eprintln!("SKIP {test}: needs to make a network namespace (root or CAP_SYS_ADMIN): {e}");
        return false;
    }
    true
}

pub struct TapRig {
    pub name: String,
    netns: File,
    sock: OwnedFd,
    /// A second packet socket that sends with a virtio_net_hdr in front
    /// (PACKET_VNET_HDR), so the test can send GSO frames out of the tap.
    vnet_sock: OwnedFd,
}

/// `<linux/if_packet.h>` PACKET_VNET_HDR (not in libc).
const PACKET_VNET_HDR: libc::c_int = 15;

impl TapRig {
    /// A namespace with one tap, up; returns the rig and the tap for the device.
    pub fn new() -> (Self, Tap) {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("hk{}t{n}", std::process::id());
        let netns = new_netns().expect("a private network namespace");
        let path = PathBuf::from(format!("/proc/self/fd/{}", netns.as_raw_fd()));
        let tap = Tap::open_in_netns(&path, &name).expect("a tap in the namespace");
        let rig = in_netns(&netns, || -> io::Result<Self> {
            set_link(&name, true)?;
            let sock = packet_socket(&name)?;
            let vnet_sock = packet_socket(&name)?;
            let on: libc::c_int = 1;
            // SAFETY: PACKET_VNET_HDR reads one int.
            let ret = unsafe {
                libc::setsockopt(
                    vnet_sock.as_raw_fd(),
                    libc::SOL_PACKET,
                    PACKET_VNET_HDR,
                    (&raw const on).cast(),
                    4,
                )
            };
            if ret < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Self {
                name: name.clone(),
                netns: netns.try_clone()?,
                sock,
                vnet_sock,
            })
        })
        .expect("the tap up with a packet socket on it");
        (rig, tap)
    }

    /// Sends `frame` out of the tap: the device reads it.
    pub fn inject(&self, frame: &[u8]) {
        // SAFETY: `frame` is valid for reads of its length.
        let n = unsafe { libc::send(self.sock.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        assert_eq!(
            n,
            frame.len() as isize,
            "inject: {}",
            io::Error::last_os_error()
        );
    }

    /// Sends `frame` out of the tap behind a 10-byte virtio_net_hdr (e.g. a
    /// GSO frame): the kernel segments it unless the tap takes the offload.
    pub fn inject_with_vnet_hdr(&self, hdr: &[u8], frame: &[u8]) {
        let bytes = [&hdr[..10], frame].concat();
        let fd = self.vnet_sock.as_raw_fd();
        // SAFETY: `bytes` is valid for reads of its length.
        let n = unsafe { libc::send(fd, bytes.as_ptr().cast(), bytes.len(), 0) };
        assert_eq!(
            n,
            bytes.len() as isize,
            "inject: {}",
            io::Error::last_os_error()
        );
    }

    /// The next frame the device wrote to the tap, waiting up to `timeout`.
    pub fn recv(&self, timeout: Duration) -> Option<Vec<u8>> {
        let end = std::time::Instant::now() + timeout;
        let mut buf = vec![0u8; 128 * 1024];
        loop {
            let left = end.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            if unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) } <= 0 {
                return None;
            }
            // SAFETY: `buf` is valid for writes of its length.
            let n =
                unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n >= 0 {
                buf.truncate(n as usize);
                return Some(buf);
            }
            let e = io::Error::last_os_error();
            // A link that went down leaves ENETDOWN on the socket, once.
            assert_eq!(e.raw_os_error(), Some(libc::ENETDOWN), "recv: {e}");
        }
    }

    /// Sets the tap's link up or down.
    pub fn set_link(&self, up: bool) {
        in_netns(&self.netns, || set_link(&self.name, up)).expect("link state set");
    }

    /// Gives the tap's interface the IPv4 address `addr`/`prefix` (from
    /// 198.18.0.0/15 in tests), so the namespace's own stack answers a guest.
    pub fn set_ipv4(&self, addr: [u8; 4], prefix: u8) {
        in_netns(&self.netns, || {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            set_inet(&self.name, libc::SIOCSIFADDR, addr)?;
            set_inet(&self.name, libc::SIOCSIFNETMASK, mask.to_be_bytes())
        })
        .expect("address set");
    }

    /// A TCP listener inside the namespace.
    pub fn tcp_listener(&self, addr: std::net::SocketAddrV4) -> std::net::TcpListener {
        in_netns(&self.netns, || std::net::TcpListener::bind(addr)).expect("a listener")
    }

    /// Deletes the tap's interface, as `ip link del` would, under the device.
    pub fn delete_link(&self) {
        in_netns(&self.netns, || delete_link(&self.name)).expect("link deleted");
    }
}

/// Runs `f` on a thread of its own in a new network namespace, which lives
/// on only through what `f` keeps open (a tap fd, a socket).
pub fn in_private_netns<T: Send>(f: impl FnOnce() -> T + Send) -> T {
    let ns = new_netns().expect("a private network namespace");
    in_netns(&ns, || Ok(f())).expect("a thread in the namespace")
}

// A new network namespace with IPv6 off; the fd keeps it alive.
fn new_netns() -> io::Result<File> {
    std::thread::spawn(|| {
        // SAFETY: unshare(CLONE_NEWNET) moves only this thread, which ends
        // once the namespace's fd is open.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
            return Err(io::Error::last_os_error());
        }
        for conf in ["all", "default"] {
            // Without IPv6 (absent or off) the kernel sends no router
            // solicitations or MLD reports of its own through the tap.
            let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{conf}/disable_ipv6"), "1");
        }
        File::open("/proc/thread-self/ns/net")
    })
    .join()
    .map_err(|_| io::Error::other("the namespace thread panicked"))?
}

// Runs `f` on a thread inside the namespace.
fn in_netns<T: Send>(ns: &File, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns moves only this scoped thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .map_err(|_| io::Error::other("the namespace thread panicked"))?
    })
}

fn socket(domain: i32, ty: i32, proto: i32) -> io::Result<OwnedFd> {
    // SAFETY: socket() takes no pointers.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new fd nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: all-zero bytes are a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, &b) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *dst = b as libc::c_char;
    }
    req
}

fn set_link(name: &str, up: bool) -> io::Result<()> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut req = ifreq(name);
    // SAFETY: SIOCGIFFLAGS fills the flags of an ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS set the flags member.
    let mut flags = unsafe { req.ifr_ifru.ifru_flags };
    let bit = libc::IFF_UP as libc::c_short;
    flags = if up { flags | bit } else { flags & !bit };
    req.ifr_ifru.ifru_flags = flags;
    // SAFETY: SIOCSIFFLAGS reads an ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

// SIOCSIFADDR or SIOCSIFNETMASK with an AF_INET address.
fn set_inet(name: &str, request: libc::c_ulong, addr: [u8; 4]) -> io::Result<()> {
    let s = socket(libc::AF_INET, libc::SOCK_DGRAM, 0)?;
    let mut req = ifreq(name);
    // SAFETY: all-zero bytes are a valid sockaddr_in.
    let mut sin: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sin.sin_family = libc::AF_INET as libc::sa_family_t;
    sin.sin_addr.s_addr = u32::from_ne_bytes(addr);
    // SAFETY: a sockaddr_in fits the union's sockaddr (both 16 bytes).
    req.ifr_ifru.ifru_addr =
        unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) };
    // SAFETY: the request reads an ifreq.
    if unsafe { libc::ioctl(s.as_raw_fd(), request, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name).map_err(io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

// A raw packet socket bound to the tap, with room for 64 KiB frames.
fn packet_socket(name: &str) -> io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    let s = socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(proto))?;
    // SAFETY: all-zero bytes are a valid sockaddr_ll.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = proto;
    addr.sll_ifindex = ifindex(name)? as i32;
    let len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
    // SAFETY: `addr` is a sockaddr_ll of `len` bytes.
    if unsafe { libc::bind(s.as_raw_fd(), (&raw const addr).cast(), len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let size: libc::c_int = 4 << 20;
    // SAFETY: SO_RCVBUFFORCE reads one int.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const size).cast(),
            4,
        )
    };
    Ok(s)
}

// RTM_DELLINK for the interface, over rtnetlink, waiting for the ack.
fn delete_link(name: &str) -> io::Result<()> {
    let index = ifindex(name)?;
    let s = socket(libc::AF_NETLINK, libc::SOCK_RAW, libc::NETLINK_ROUTE)?;
    let mut msg = Vec::with_capacity(32);
    msg.extend(32u32.to_ne_bytes()); // nlmsghdr: length,
    msg.extend(libc::RTM_DELLINK.to_ne_bytes()); // type,
    let flags = (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16;
    msg.extend(flags.to_ne_bytes()); // flags,
    msg.extend(1u32.to_ne_bytes()); // sequence,
    msg.extend(0u32.to_ne_bytes()); // port (the kernel);
    msg.extend([libc::AF_UNSPEC as u8, 0]); // ifinfomsg: family, pad,
    msg.extend(0u16.to_ne_bytes()); // type,
    msg.extend((index as i32).to_ne_bytes()); // index,
    msg.extend([0u8; 8]); // flags, change.
                          // SAFETY: `msg` is valid for reads of its length.
    if unsafe { libc::send(s.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut ack = [0u8; 256];
    // SAFETY: `ack` is valid for writes of its length.
    let n = unsafe { libc::recv(s.as_raw_fd(), ack.as_mut_ptr().cast(), ack.len(), 0) };
    if n < 20 {
        return Err(io::Error::other("no netlink ack"));
    }
    // NLMSG_ERROR carries an errno (0: success) after its 16-byte header.
    let errno = i32::from_ne_bytes(ack[16..20].try_into().unwrap_or_default());
    if errno != 0 {
        return Err(io::Error::from_raw_os_error(-errno));
    }
    Ok(())
}
