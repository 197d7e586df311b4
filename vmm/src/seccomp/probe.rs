//! A debugging hook, always compiled in: with `HUSK_SECCOMP_PROBE=KIND`
//! in its environment (vcpu, devices, vmm or runtime), every thread of that
//! kind calls a system call its list leaves out right after installing the
//! list, so tests and operators can see what a violation does. Without the
//! variable, or with seccomp off, nothing happens. Each probe is a call the
//! runtime's list allows (so only the thread's own list can refuse it) with
//! arguments that make it fail harmlessly if a filter were missing:
//!
//! - vcpu: `openat` of /dev/null (a vCPU thread never opens files);
//! - devices: `mount` with null arguments (the device thread never mounts);
//! - vmm: `socket(AF_UNIX)` (the control thread never makes sockets);
//! - runtime: `execve` of a null path (no husk thread runs programs).

use super::ThreadKind;

pub const PROBE_ENV: &str = "HUSK_SECCOMP_PROBE";

/// Whether the environment asks threads of `kind` to break their list.
pub(super) fn requested(kind: ThreadKind) -> bool {
    std::env::var_os(PROBE_ENV).is_some_and(|v| v == kind.name())
}

/// Makes the call `kind`'s list refuses. With the filter in place this
/// does not return (the process dies by SIGSYS); if it returns, the call
/// went through, which is logged as the error it is.
pub(super) fn break_the_list(kind: ThreadKind) {
    let (call, result) = match kind {
        // SAFETY: a valid NUL-terminated path; the fd, if any, is closed.
        ThreadKind::Vcpu => ("openat", unsafe {
            let fd = libc::openat(libc::AT_FDCWD, c"/dev/null".as_ptr(), libc::O_RDONLY);
            close_if_open(fd)
        }),
        // SAFETY: null arguments: mount fails with EFAULT if it runs at all.
        ThreadKind::Devices => ("mount", unsafe {
            libc::mount(
                std::ptr::null(),
                std::ptr::null(),
                std::ptr::null(),
                0,
                std::ptr::null(),
            )
        }),
        // SAFETY: no pointers; the fd, if any, is closed.
        ThreadKind::VmmControl => ("socket", unsafe {
            close_if_open(libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0))
        }),
        // SAFETY: a null path: execve fails with EFAULT if it runs at all.
        ThreadKind::Runtime => ("execve", unsafe {
            libc::execve(std::ptr::null(), std::ptr::null(), std::ptr::null()) as libc::c_int
        }),
    };
    tracing::error!(
        result,
        "{PROBE_ENV}: {call} went through on a {} thread: its seccomp filter does not hold",
        kind.name()
    );
}

/// Closes `fd` if the call made one; returns the call's result.
///
/// # Safety
/// `fd` must be the fresh result of a call that returns an fd or -1.
unsafe fn close_if_open(fd: libc::c_int) -> libc::c_int {
    if fd >= 0 {
        // SAFETY: the caller just got `fd` and owns it.
        unsafe { libc::close(fd) };
    }
    fd
}
