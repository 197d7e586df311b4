//! The VMM's allowlists: what a vCPU thread, the device thread and the
//! control thread may call, and what building a VM needs from the runtime
//! thread that does it. README.md ("Seccomp") lists them for operators;
//! change both together.
//!
//! Every list starts from `base`: memory, locks, time, logging and the
//! calls the SIGSYS report makes, which any husk thread may need at any
//! moment. Calls that take an fd or a request are narrowed by argument
//! where the argument is a plain value (ioctl requests, socket domains).

use seccompiler::SeccompCmpOp;
use syscalls::Sysno::{self, *};

use super::allowlist::Allowlist;
use super::ioctls;

/// What every husk thread may call.
#[rustfmt::skip]
pub fn base() -> Allowlist {
    let mut list = Allowlist::new();
    list.allow(&[
        // Memory: the allocator, guest memory and DAX mappings going away.
        brk, mmap, munmap, mremap, mprotect, madvise,
        // Locks, channels, sleeps, clocks (the vDSO's fallbacks).
        futex, sched_yield, nanosleep, clock_nanosleep, clock_gettime, gettimeofday,
        restart_syscall, getrandom,
        // Log lines, console output, eventfd signals; fds being dropped.
        write, writev, close,
        // Signal returns (the vCPU kick) and a thread's end.
        rt_sigreturn, rt_sigprocmask, sigaltstack, exit, exit_group,
        // The SIGSYS report: who am I.
        getpid, gettid,
    ]);
    // The report's re-raised SIGSYS, the vCPU kick and abort() signal this
    // process only.
    list.allow_arg(tgkill, 0, &[u64::from(std::process::id())]);
    // The report reads the thread's name and makes the process non-dumpable
    // (a core of guest memory helps no one).
    list.allow_arg(prctl, 0, &[libc::PR_GET_NAME as u64]);
    // std's debug builds check an fd is open (F_GETFD) before closing it.
    list.allow_arg(fcntl, 1, &[libc::F_GETFD as u64]);
    list.allow_when(
        prctl,
        &[
            (0, SeccompCmpOp::Eq, libc::PR_SET_DUMPABLE as u64),
            (1, SeccompCmpOp::Eq, 0),
        ],
    );
    list
}

/// A vCPU thread: KVM_RUN and the vCPU ioctls around it, port and MMIO
/// accesses (console writes, eventfd signals), and what a guest's virtio
/// driver makes a device do on the vCPU thread when it writes a device's
/// status: the net device tells its tap the offloads the guest took
/// (TUNSETOFFLOAD) and a vsock reset drops its connections from the
/// muxer's epoll. No open, no socket, no exec.
#[rustfmt::skip]
pub fn vcpu_allowlist() -> Allowlist {
    let mut list = base();
    let mut requests = ioctls::vcpu_requests();
    requests.push(u64::from(libc::TUNSETOFFLOAD as u32));
    list.allow_arg(ioctl, 1, &requests);
    list.allow(&[epoll_ctl]);
    list
}

/// The device thread: the event loop, the vsock muxer (host Unix sockets),
/// virtio-fs (fuse-backend-rs's passthrough over the shared directory: the
/// file calls a FUSE server makes, switching credentials per request,
/// CAP_FSETID around writes), virtio-pmem flushes and the tap. No mount,
/// no exec, no namespaces, no KVM.
#[rustfmt::skip]
pub fn devices_allowlist() -> Allowlist {
    let mut list = base();
    list.allow(&[
        // The event loop and queue notifications.
        epoll_wait, epoll_pwait, epoll_ctl, read, readv, pread64, preadv, preadv2, pwrite64,
        pwritev, pwritev2, lseek,
        // vsock: host connections in and out.
        accept4, connect, recvfrom, sendto, recvmsg, sendmsg, shutdown, getsockopt, fcntl,
        unlink,
        // virtio-fs: the passthrough filesystem (openat2 for a confined
        // lookup, should the backend use it).
        openat, openat2, open_by_handle_at, name_to_handle_at, newfstatat, fstat, statx,
        statfs, fstatfs, getdents64, linkat, symlinkat, unlinkat, mkdirat, mknodat,
        renameat2, readlinkat, fchmod, fchmodat, fchown, fchownat, utimensat, fallocate,
        ftruncate, fsync, fdatasync, dup, umask, getuid, geteuid, getgid, getegid,
        setresuid, setresgid, capget, capset, getxattr, lgetxattr, fgetxattr, setxattr,
        lsetxattr, fsetxattr, listxattr, llistxattr, flistxattr, removexattr, lremovexattr,
        fremovexattr,
        // virtio-pmem: a guest flush of a writable image.
        msync,
    ]);
    list.allow_arg(socket, 0, &[libc::AF_UNIX as u64]);
    list.allow_arg(ioctl, 1, &[libc::FIONBIO]);
    list
}

/// The control thread, once the vCPU threads run: its epoll over the VM's
/// eventfds, kicking and joining vCPU threads, writing a snapshot (the VM
/// state ioctls, `memory.bin` with the pages the guest touched, the JSON
/// files, digests of the kernel and images) and tearing the VM down (the
/// vsock socket file goes with its device). No socket, no mount, no exec.
#[rustfmt::skip]
pub fn control_allowlist() -> Allowlist {
    let mut list = base();
    list.allow(&[
        epoll_create1, epoll_ctl, epoll_wait, epoll_pwait, read,
        openat, lseek, pread64, pwrite64, ftruncate, fsync, fdatasync, mincore, rename,
        renameat, newfstatat, fstat, statx, unlink,
    ]);
    list.allow_arg(ioctl, 1, &ioctls::control_requests());
    list
}

/// What building and starting a VM asks of the calling thread, which is
/// a runtime thread (the runtime's list includes this): reading the
/// kernel, initrd, images and a template; /dev/kvm and every KVM ioctl
/// that sets a VM up or restores one; guest memory and pmem mappings;
/// eventfds and epolls; the vsock device's listening socket; opening a
/// tap (in a network namespace, for a pod); starting the device, control
/// and vCPU threads, which name themselves and install their own filters;
/// the vCPU kick and SIGSYS handlers.
#[rustfmt::skip]
pub fn vm_builder_allowlist() -> Allowlist {
    let mut list = base();
    list.allow(&[
        openat, read, pread64, lseek, newfstatat, fstat, statx, fstatfs, readlink, getcwd,
        getdents64, fcntl, dup, eventfd2, epoll_create1, epoll_ctl, epoll_wait, epoll_pwait,
        bind, listen, connect, unlink, mincore,
        clone, clone3, set_robust_list, rseq, sched_getaffinity, prlimit64, rt_sigaction,
    ]);
    list.allow_masked(ioctl, 1, ioctls::TYPE_MASK, &[ioctls::KVM_TYPE, ioctls::TTY_TUN_TYPE]);
    list.allow_arg(socket, 0, &[libc::AF_UNIX as u64]);
    list.allow_arg(setns, 1, &[libc::CLONE_NEWNET as u64]);
    list.allow_arg(
        prctl,
        0,
        &[libc::PR_SET_NAME as u64, libc::PR_SET_NO_NEW_PRIVS as u64],
    );
    list.allow_arg(seccomp, 0, &[u64::from(libc::SECCOMP_SET_MODE_FILTER)]);
    list
}

/// Everything a VMM thread may call, and what building a VM needs: the
/// least the list of the thread that builds a VM must allow, because every
/// filter a thread inherits must allow each call it makes (the VM's
/// threads are started by that thread and inherit its filter).
pub fn vmm_allowlist() -> Allowlist {
    let mut list = vm_builder_allowlist();
    list.extend(&vcpu_allowlist())
        .extend(&devices_allowlist())
        .extend(&control_allowlist());
    list
}

/// Calls no husk thread needs and no list may allow, whatever is added to
/// them: running programs, tracing or reading other processes, loading
/// kernel code, rebooting (tests check the lists against this).
#[rustfmt::skip]
pub const NEVER: &[Sysno] = &[
    execve, execveat, fork, vfork, ptrace, process_vm_readv, process_vm_writev, kexec_load,
    kexec_file_load, init_module, finit_module, delete_module, reboot, bpf, perf_event_open,
    swapon, swapoff, pivot_root, chroot, acct, settimeofday, clock_settime, iopl, ioperm,
    keyctl, add_key, request_key,
];
