//! The tap the guest's virtio-net device sends and receives through.
//!
//! Created with `TUNSETIFF` on an fd of `/dev/net/tun` opened inside the
//! pod's network namespace (a tun device lives in the namespace its fd was
//! opened in), with `IFF_TAP | IFF_NO_PI | IFF_VNET_HDR` and without
//! `TUNSETPERSIST`: the device exists while an fd of it is open. The runtime
//! hands that fd to the in-process VMM, so the tap lives as long as the pod's
//! process holds it, and a `kill -9` of that process removes it with the
//! process's fds; a normal teardown also deletes it explicitly.
//!
//! The fd is opened `O_NONBLOCK` (for the VMM's event loop) and reads and
//! writes carry a `struct virtio_net_hdr` before each frame: 10 bytes until
//! the device sets `TUNSETVNETHDRSZ` (12 with `VIRTIO_NET_F_MRG_RXBUF` or
//! VIRTIO 1.0) and its offloads with `TUNSETOFFLOAD`, which are the
//! device's choices and left to it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

/// Longest interface name the kernel takes (IFNAMSIZ less the NUL).
pub const MAX_NAME_LEN: usize = 15;

// <linux/if_tun.h>: TUNSETIFF is _IOW('T', 202, int); its argument is a struct ifreq.
nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(b'T', 202, std::mem::size_of::<libc::c_int>()),
    libc::ifreq
);

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Fail rather than attach when a device of that name exists already.
const IFF_TUN_EXCL: libc::c_short = 0x8000u16 as libc::c_short;

/// Whether `name` can be a Linux interface name.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'/' && b != b':')
}

/// Creates tap `name` in the calling thread's network namespace and returns
/// its fd (the device goes away when every copy of the fd is closed). Fails
/// with EBUSY if a device of that name exists, rather than attaching to it.
pub fn create(name: &str) -> io::Result<File> {
    if !valid_name(name) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{name:?} is not a valid interface name (1-{MAX_NAME_LEN} printable bytes, no '/' or ':')"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_TUN_EXCL;
    // SAFETY: TUNSETIFF reads (and may update) one ifreq, which lives on
    // this stack frame for the whole call; the name is NUL-terminated
    // because it is at most 15 bytes of a zeroed 16-byte array.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    Ok(tun)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_are_checked_before_the_kernel_sees_them() {
        for bad in [
            "",
            ".",
            "..",
            "a/b",
            "a b",
            "a:1",
            "tap0_husk_toolong",
            "t\u{e9}",
        ] {
            assert!(!valid_name(bad), "{bad:?}");
            let err = create(bad).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
        }
        assert!(valid_name("tap0_husk"));
        assert!(valid_name("eth0"));
    }

    #[test]
    fn an_existing_device_is_not_taken_over() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIP an_existing_device_is_not_taken_over: network namespaces need root");
            return;
        }
        let ns = format!("husk-{}-tapexcl", std::process::id());
        let ip = |args: &[&str]| {
            std::process::Command::new("ip")
                .args(args)
                .status()
                .is_ok_and(|s| s.success())
        };
        assert!(ip(&["netns", "add", &ns]), "ip netns add {ns}");
        // A persistent tap with the same flags, which TUNSETIFF would attach to.
        let made = ip(&[
            "-n", &ns, "tuntap", "add", "dev", "t0", "mode", "tap", "vnet_hdr",
        ]);
        let path = std::path::Path::new("/var/run/netns").join(&ns);
        let result = super::super::netns::in_netns(&path, || create("t0").map(drop));
        ip(&["netns", "del", &ns]);
        assert!(made, "ip tuntap add");
        let err = result.unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EBUSY), "{err}");
    }
}
