//! Restored: what a VM started from a template needs before it serves as
//! itself. The wall clock jumps to the host's (the template's clock is as
//! old as the template), and host entropy is credited to the random pool,
//! then the kernel's CRNG is reseeded from it, so clones of one template
//! stop sharing a pool. Both change the whole guest, so only the guest's
//! PID 1 does them.

use husk_agent_protocol::agent;

use super::sandbox::GuestScope;
use super::status::RpcError;

/// At most this much entropy per call (the kernel caps a pool write too).
const MAX_ENTROPY: usize = 512;
/// Below this the reseed is not worth calling one.
const MIN_ENTROPY: usize = 32;

// <linux/random.h>: RNDADDENTROPY is _IOW('R', 0x03, int[2]),
// RNDRESEEDCRNG is _IO('R', 0x07).
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, 2 * std::mem::size_of::<libc::c_int>()),
    libc::c_int
);
nix::ioctl_none_bad!(rnd_reseed_crng, nix::request_code_none!(b'R', 0x07));

pub fn restored(scope: GuestScope, req: &agent::RestoredRequest) -> Result<(), RpcError> {
    if req.entropy.len() < MIN_ENTROPY || req.entropy.len() > MAX_ENTROPY {
        return Err(RpcError::InvalidArgument(format!(
            "entropy must be {MIN_ENTROPY} to {MAX_ENTROPY} bytes, got {}",
            req.entropy.len()
        )));
    }
    if req.wall_clock_ns <= 0 {
        return Err(RpcError::InvalidArgument(
            "wall_clock_ns must be positive".into(),
        ));
    }
    if scope == GuestScope::HostTest {
        tracing::info!("not PID 1: leaving the host's clock and random pool alone");
        return Ok(());
    }
    set_clock(req.wall_clock_ns)?;
    reseed(&req.entropy)?;
    tracing::debug!(
        entropy = req.entropy.len(),
        "restored: wall clock set, random pool reseeded"
    );
    Ok(())
}

fn set_clock(ns: i64) -> Result<(), RpcError> {
    let ts = libc::timespec {
        tv_sec: ns / 1_000_000_000,
        tv_nsec: ns % 1_000_000_000,
    };
    // SAFETY: clock_settime reads one timespec from a valid pointer.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &ts) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(RpcError::Internal(format!("setting the wall clock: {e}")));
    }
    Ok(())
}

/// RNDADDENTROPY takes a `struct rand_pool_info { int entropy_count; int
/// buf_size; u32 buf[]; }`, built here as ints followed by the bytes.
fn reseed(entropy: &[u8]) -> Result<(), RpcError> {
    let mut info: Vec<libc::c_int> = vec![
        (entropy.len() * 8) as libc::c_int,
        entropy.len() as libc::c_int,
    ];
    info.resize(2 + entropy.len().div_ceil(4), 0);
    // SAFETY: `info` has room for the two ints plus `entropy` rounded up to ints.
    unsafe {
        std::ptr::copy_nonoverlapping(
            entropy.as_ptr(),
            info.as_mut_ptr().add(2).cast(),
            entropy.len(),
        );
    }
    let urandom = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/urandom")
        .map_err(|e| RpcError::Internal(format!("opening /dev/urandom: {e}")))?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&urandom);
    // SAFETY: RNDADDENTROPY reads a rand_pool_info of the size it declares.
    unsafe { rnd_add_entropy(fd, info.as_ptr()) }
        .map_err(|e| RpcError::Internal(format!("crediting entropy: {e}")))?;
    // SAFETY: RNDRESEEDCRNG takes no argument.
    unsafe { rnd_reseed_crng(fd) }
        .map_err(|e| RpcError::Internal(format!("reseeding the CRNG: {e}")))?;
    Ok(())
}
