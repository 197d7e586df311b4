//! What happens when a thread calls outside its list: the filter answers
//! SECCOMP_RET_TRAP, the kernel skips the call and sends the thread
//! SIGSYS, and this handler writes one line to the report fd (stderr, or
//! the shim's log, which containerd copies into its own):
//!
//! `husk: seccomp: thread husk-vcpu0 (vcpu allowlist) called openat (system call 257), which its allowlist does not allow; killing the process`
//!
//! then makes the process non-dumpable and raises SIGSYS again with its
//! default action (SA_RESETHAND), so the process dies by SIGSYS as with
//! SECCOMP_RET_KILL_PROCESS. Everything here is async-signal-safe: a stack
//! buffer, raw write(2), no allocation, no locks; every call it makes is in
//! every list (`lists::base`).

use std::cell::Cell;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use super::ThreadKind;

static REPORT_FD: AtomicI32 = AtomicI32::new(libc::STDERR_FILENO);

thread_local! {
    /// The list this thread installed last (a thread that installed none
    /// runs under the runtime's, inherited).
    static KIND: Cell<Option<ThreadKind>> = const { Cell::new(None) };
}

/// Where violation reports go (default: stderr). The fd must stay open
/// for the life of the process.
pub fn set_report_fd(fd: i32) {
    REPORT_FD.store(fd, Ordering::Release);
}

pub(super) fn set_thread_kind(kind: ThreadKind) {
    KIND.with(|k| k.set(Some(kind)));
}

/// Installs the SIGSYS handler, once per process.
pub(super) fn install_handler() -> std::io::Result<()> {
    static INSTALLED: OnceLock<Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: a zeroed sigaction is valid; the handler has the
        // SA_SIGINFO signature and only makes async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigsys as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_ONSTACK;
            libc::sigemptyset(&mut action.sa_mask);
            if libc::sigaction(libc::SIGSYS, &action, std::ptr::null_mut()) != 0 {
                return Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0));
            }
        }
        Ok(())
    });
    result.map_err(std::io::Error::from_raw_os_error)
}

/// The SIGSYS part of siginfo_t (`_sigsys` in the kernel's union).
#[repr(C)]
struct SigsysInfo {
    signo: libc::c_int,
    errno: libc::c_int,
    code: libc::c_int,
    _pad: libc::c_int,
    call_addr: *mut libc::c_void,
    syscall: libc::c_int,
    arch: libc::c_uint,
}

/// si_code of a SIGSYS that a seccomp filter raised.
const SYS_SECCOMP: libc::c_int = 1;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: with SA_SIGINFO the kernel passes a valid siginfo_t, whose
    // first 32 bytes are SigsysInfo's fields for a SIGSYS.
    let info = unsafe { &*info.cast::<SigsysInfo>() };
    let mut line = Line::new();
    line.push(b"husk: seccomp: thread ");
    line.push(&thread_name());
    line.push(b" (");
    let kind = KIND.with(Cell::get).unwrap_or(ThreadKind::Runtime);
    line.push(kind.name().as_bytes());
    line.push(b" allowlist) called ");
    if info.code == SYS_SECCOMP {
        let name = usize::try_from(info.syscall)
            .ok()
            .and_then(syscalls::Sysno::new)
            .map_or("an unknown call", |s| s.name());
        line.push(name.as_bytes());
        line.push(b" (system call ");
        line.push_number(i64::from(info.syscall));
    } else {
        line.push(b"nothing: SIGSYS came from elsewhere (si_code ");
        line.push_number(i64::from(info.code));
    }
    line.push(b"), which its allowlist does not allow; killing the process\n");
    line.write_to(REPORT_FD.load(Ordering::Acquire));
    // SAFETY: prctl, getpid, gettid and tgkill take no pointers here; the
    // SIGSYS is pending until this handler returns, then (SA_RESETHAND)
    // takes its default action and ends the process.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
        libc::syscall(
            libc::SYS_tgkill,
            libc::getpid(),
            libc::gettid(),
            libc::SIGSYS,
        );
    }
}

/// The calling thread's name (comm), without its NUL.
fn thread_name() -> [u8; 16] {
    let mut name = [0u8; 16];
    // SAFETY: PR_GET_NAME writes at most 16 bytes, NUL included, into name.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr(), 0, 0, 0) };
    name
}

/// A fixed buffer for the report line.
struct Line {
    buf: [u8; 256],
    len: usize,
}

impl Line {
    fn new() -> Self {
        Self {
            buf: [0; 256],
            len: 0,
        }
    }

    /// Appends `bytes` up to a NUL, as far as the buffer goes.
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes.iter().take_while(|&&b| b != 0) {
            if self.len == self.buf.len() {
                return;
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
    }

    fn push_number(&mut self, n: i64) {
        if n < 0 {
            self.push(b"-");
        }
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut rest = n.unsigned_abs();
        loop {
            i -= 1;
            digits[i] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        self.push(&digits[i..]);
    }

    fn write_to(&self, fd: i32) {
        let mut done = 0;
        while done < self.len {
            // SAFETY: the pointer and length stay inside `buf`.
            let n = unsafe { libc::write(fd, self.buf[done..].as_ptr().cast(), self.len - done) };
            if n <= 0 {
                return;
            }
            done += n as usize;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_is_built_without_allocating() {
        let mut line = Line::new();
        line.push(b"husk\0ignored");
        line.push(b" ");
        line.push_number(257);
        line.push(b" ");
        line.push_number(-1);
        assert_eq!(&line.buf[..line.len], b"husk 257 -1");
        let mut long = Line::new();
        long.push(&[b'x'; 300]);
        assert_eq!(long.len, 256);
    }
}
