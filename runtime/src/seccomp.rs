//! The runtime's seccomp allowlist, for the threads that are neither a
//! vCPU, the device thread nor the VM's control thread: the shim's main
//! thread and ttrpc threads, `husk run`'s and `husk vm`'s main thread, and
//! every helper they start (stdio copiers, the OOM watcher, the netns
//! threads, the event publisher, the agent client's threads).
//!
//! The first thread installs it before it serves anything (the shim before
//! its Task API server starts, `husk run` before it boots the sandbox), so
//! every thread of the process inherits it; the VMM's own threads then add
//! their narrower lists (`husk_vmm::seccomp`). As those threads inherit this
//! filter too, and every filter must allow a call, this list holds all of
//! the VMM's lists (`vmm_allowlist`: what building a VM needs and what its
//! vCPU, device and control threads call), plus the sandbox's host side: mounting and unmounting
//! the container's rootfs and binds, joining the pod's cgroup, the pod
//! network over netlink in the pod's network namespace, containerd's FIFOs
//! and sockets, the template lock. Left out, among others: running
//! programs (execve: husk runs none once it serves), ptrace, kernel
//! modules, device nodes (mknod), sockets other than Unix and netlink.

use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};

use husk_vmm::seccomp::{vmm_allowlist, Allowlist, SeccompError, ThreadFilter, ThreadKind};
use syscalls::Sysno::*;

/// What the runtime's threads may call (README.md, "Seccomp").
#[rustfmt::skip]
pub fn runtime_allowlist() -> Allowlist {
    let mut list = vmm_allowlist();
    list.allow(&[
        // Files: bundles, the sandbox directory, configs, templates, cgroups.
        readv, pwrite64, dup2, dup3, flock, statfs, readlinkat, mkdir, mkdirat, rmdir,
        unlinkat, rename, renameat, renameat2, symlink, symlinkat, chmod, fchmod, fchmodat,
        ftruncate, fallocate, fsync, fdatasync, access, faccessat, faccessat2, umask,
        utimensat, copy_file_range, sendfile,
        // The container's rootfs and bind mounts.
        mount, umount2,
        // containerd's and the agent's sockets, netlink, waiting on them.
        socketpair, accept, accept4, getsockname, getpeername, getsockopt, setsockopt,
        sendto, recvfrom, sendmsg, recvmsg, shutdown, poll, ppoll, pipe2,
        // Signals (husk run forwards them; the shim waits on none).
        rt_sigtimedwait,
        // Who and where the process is.
        getuid, geteuid, getgid, getegid, getppid, uname, sysinfo, getrusage, clock_getres,
    ]);
    list.allow_arg(socket, 0, &[libc::AF_NETLINK as u64]);
    list
}

static CONFINED: AtomicBool = AtomicBool::new(false);

/// Confines the calling thread, and every thread it starts from now on,
/// with the runtime's list; with `on` false, logs that seccomp is off.
/// `origin` says who decided (a flag, a config file).
pub fn confine_runtime(on: bool, origin: &str) -> Result<(), SeccompError> {
    if !on {
        tracing::warn!(
            "seccomp is off ({origin}): husk's threads run without system-call allowlists"
        );
        return Ok(());
    }
    ThreadFilter::compile(ThreadKind::Runtime, runtime_allowlist())?.install()?;
    CONFINED.store(true, Ordering::Release);
    tracing::debug!("seccomp: runtime allowlist installed ({origin})");
    Ok(())
}

/// Whether `confine_runtime` confined this process's runtime threads.
pub fn runtime_confined() -> bool {
    CONFINED.load(Ordering::Acquire)
}

/// `on` or `off` (also `true` or `false`), for `--seccomp` and the config.
pub fn parse_switch(text: &str) -> Result<bool, String> {
    match text {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        other => Err(format!("expected \"on\" or \"off\", not {other:?}")),
    }
}

/// The `--seccomp on|off` flag's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Switch(pub bool);

impl FromStr for Switch {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        parse_switch(s).map(Switch)
    }
}

impl Default for Switch {
    fn default() -> Self {
        Switch(true)
    }
}

impl std::fmt::Display for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0 { "on" } else { "off" })
    }
}

#[cfg(test)]
mod tests {
    use syscalls::Sysno;

    use super::*;

    #[test]
    fn the_runtime_list_compiles_and_runs_no_programs() {
        ThreadFilter::compile(ThreadKind::Runtime, runtime_allowlist()).unwrap();
        let list = runtime_allowlist();
        let never = husk_vmm::seccomp::NEVER.iter().copied();
        for call in never.chain([Sysno::mknod, Sysno::unshare]) {
            assert!(
                !list.mentions(call),
                "the runtime list allows {}",
                call.name()
            );
        }
        assert!(!list.allows_any_args(Sysno::socket));
        assert!(!list.allows_any_args(Sysno::ioctl));
        assert!(list.mentions(Sysno::mount) && list.mentions(Sysno::setns));
    }

    #[test]
    fn switches_read_on_and_off() {
        assert_eq!("on".parse(), Ok(Switch(true)));
        assert_eq!("off".parse(), Ok(Switch(false)));
        assert!("maybe".parse::<Switch>().is_err());
    }
}
