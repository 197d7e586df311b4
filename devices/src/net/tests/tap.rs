//! The tap backend on its own: opened by name, in another namespace, or
//! taken over from an fd the runtime opened; refused when it is not a tap
//! the device can use.

use std::fs::OpenOptions;
use std::os::fd::OwnedFd;
use std::path::Path;

use super::*;
use crate::net::{Tap, TapError};

/// An fd of /dev/net/tun attached to a new interface `name` with `flags`.
fn raw_tun(name: &str, flags: i32) -> std::io::Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    // SAFETY: all-zero bytes are a valid ifreq.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, &b) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
        *d = b as libc::c_char;
    }
    req.ifr_ifru.ifru_flags = flags as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes an ifreq.
    if unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&file),
            libc::TUNSETIFF,
            &mut req,
        )
    } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(file.into())
}

#[test]
fn a_tap_fd_opened_elsewhere_is_taken_over() {
    if !tap_or_skip("a_tap_fd_opened_elsewhere_is_taken_over") {
        return;
    }
    let flags = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    let tap = in_private_netns(|| Tap::from_fd(raw_tun("hkfd0", flags).unwrap()));
    let tap = tap.expect("a tap with the right flags");
    assert_eq!(tap.name(), "hkfd0");
    assert!(tap.supports_offloads());
    let mut buf = [0u8; 64];
    let err = tap.read_frame(&mut buf).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::WouldBlock, "non-blocking");
}

#[test]
fn fds_that_are_not_a_usable_tap_are_refused() {
    if !tap_or_skip("fds_that_are_not_a_usable_tap_are_refused") {
        return;
    }
    let no_vnet = libc::IFF_TAP | libc::IFF_NO_PI;
    let err = in_private_netns(|| Tap::from_fd(raw_tun("hkfd1", no_vnet).unwrap())).unwrap_err();
    assert!(
        matches!(&err, TapError::WrongFlags { name, .. } if name == "hkfd1"),
        "{err}"
    );
    let tun = libc::IFF_TUN | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
    let err = in_private_netns(|| Tap::from_fd(raw_tun("hkfd2", tun).unwrap())).unwrap_err();
    assert!(matches!(err, TapError::WrongFlags { .. }), "{err}");
    let null = OpenOptions::new().read(true).open("/dev/null").unwrap();
    let err = Tap::from_fd(null.into()).unwrap_err();
    assert!(matches!(err, TapError::NotATap(_)), "{err}");
}

#[test]
fn bad_names_and_namespaces_are_refused() {
    for name in ["", "a-name-far-too-long", "nul\0in"] {
        let err = Tap::open_named(name).unwrap_err();
        assert!(matches!(err, TapError::BadName(_)), "{name:?}: {err}");
    }
    let err = Tap::open_in_netns(Path::new("/nonexistent/netns"), "hk0").unwrap_err();
    assert!(matches!(err, TapError::OpenNetns { .. }), "{err}");
    let err = Tap::open_in_netns(Path::new("/dev/null"), "hk0").unwrap_err();
    assert!(matches!(err, TapError::EnterNetns { .. }), "{err}");
}
