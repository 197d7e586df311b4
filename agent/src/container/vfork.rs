//! Creating processes that share the agent's memory until they exec
//! (`CLONE_VM | CLONE_VFORK`, as posix_spawn does).
//!
//! Why not fork: in a guest whose kernel is emulated (software KVM), copying
//! the agent's address space, the copy-on-write faults after it and tearing
//! the copy down again at exec made up about 40 % of a container's start
//! (measured: an idle container ran 4.9 s after the VM started from its
//! template, against 8.0 s with fork).
//!
//! Why it is safe: the cloning thread is suspended until its child execs or
//! exits, so the child runs as that thread would, on its own stack: its
//! thread-local state and malloc cache are the suspended thread's, and a lock
//! another agent thread holds is released as usual (a forked child would
//! keep a frozen copy of it). The descriptor table, signal dispositions and
//! namespaces are still the child's own (no CLONE_FILES, CLONE_SIGHAND or
//! CLONE_FS). Two rules for code that runs in such a child:
//! - no glibc call that acts on "all threads of the process": glibc sees the
//!   agent's threads as the child's. Its set*id wrappers signal every thread
//!   (SIGSETXID) and wait for each; in the guest the agent's main thread has
//!   tid 1, which in the child's new PID namespace is the child itself, so
//!   that wait never ended. Use the raw system calls.
//! - memory the child allocates and does not free before exec stays
//!   allocated in the agent: allocate before the clone where it matters.

use std::ffi::c_void;

/// A child's stack: an anonymous mapping with a guard page, unmapped on drop.
/// Only the pages the child touches are ever allocated.
pub struct Stack {
    base: *mut c_void,
    len: usize,
}

// SAFETY: the mapping is plain memory owned by this value; moving the owner
// to another thread moves nothing the kernel ties to a thread.
unsafe impl Send for Stack {}

impl Stack {
    /// Maps `len` bytes (a multiple of the page size) above a guard page.
    pub fn new(len: usize) -> std::io::Result<Self> {
        let page = 4096;
        let total = len + page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                total,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: the lowest page of the mapping just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            let e = std::io::Error::last_os_error();
            // SAFETY: unmapping the mapping just made.
            unsafe { libc::munmap(base, total) };
            return Err(e);
        }
        Ok(Stack { base, len: total })
    }

    /// The initial stack pointer (stacks grow down; the end is page aligned).
    fn top(&self) -> *mut c_void {
        // SAFETY: one past the end of the mapping, which is what clone wants.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; its owner drops it only after
        // the child that ran on it exec'd or exited.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// The function a child runs; it must exec or `_exit`, never return.
pub type Entry = extern "C" fn(*mut c_void) -> libc::c_int;

/// Clones a child that shares this process's memory and runs `entry(arg)`
/// on `stack`; returns its pid (as this process sees it) once the child has
/// exec'd or exited: the calling thread is suspended until then.
/// `extra` adds flags (CLONE_PARENT; CLONE_PARENT_SETTID with `parent_tid`).
///
/// # Safety
/// `arg` and `parent_tid` must stay valid until this returns, `stack` must not
/// be in use by another child, and `entry` must follow the rules in the module
/// comment and never return.
pub unsafe fn clone_vm(
    entry: Entry,
    stack: &Stack,
    extra: libc::c_int,
    arg: *mut c_void,
    parent_tid: *mut libc::pid_t,
) -> std::io::Result<libc::pid_t> {
    let flags = libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD | extra;
    // SAFETY: as the caller promises; glibc's wrapper runs `entry` on the
    // new stack in the child.
    let pid = unsafe { libc::clone(entry, stack.top(), flags, arg, parent_tid) };
    if pid < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" fn write_and_exit(arg: *mut c_void) -> libc::c_int {
        // SAFETY: the test passes a pointer to a live u32 and is suspended
        // until this child exits.
        unsafe { *arg.cast::<u32>() = 42 };
        // SAFETY: ending the child without running this process's atexit.
        unsafe { libc::_exit(7) }
    }

    #[test]
    fn the_child_shares_memory_and_the_caller_waits_for_it() {
        let stack = Stack::new(64 * 1024).unwrap();
        let mut value = 0u32;
        let mut tid: libc::pid_t = 0;
        // SAFETY: `value` and `tid` outlive the call, which returns only
        // after the child exited.
        let pid = unsafe {
            clone_vm(
                write_and_exit,
                &stack,
                libc::CLONE_PARENT_SETTID,
                (&mut value as *mut u32).cast(),
                &mut tid,
            )
        }
        .unwrap();
        assert_eq!(value, 42, "the child's write is visible: memory is shared");
        assert_eq!(tid, pid, "CLONE_PARENT_SETTID stored the child's pid");
        let status = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid), None).unwrap();
        assert_eq!(
            status,
            nix::sys::wait::WaitStatus::Exited(nix::unistd::Pid::from_raw(pid), 7)
        );
    }
}
