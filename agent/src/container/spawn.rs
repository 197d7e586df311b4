//! Creating a process inside a container.
//!
//! The agent is multi-threaded, so it never changes its own namespaces. A
//! spawner thread clones an intermediate process that enters or creates the
//! namespaces, and the intermediate clones the container process with
//! CLONE_PARENT: that makes the container process a direct child of the agent
//! (so the one reaper gets its exit status, PID 1 or not), and PID 1 of a new
//! PID namespace when one was unshared. Both clones share the agent's memory
//! until the container process execs (`vfork`: that is what keeps a container
//! start cheap in an emulated guest kernel), each suspending its parent. Then,
//! over the control channel:
//!
//! ```text
//! child -> agent         Pid(p)        (the kernel told the child its pid)
//! agent                  puts p into the cgroup
//! agent -> child         Go
//! child                  rootfs, hostname (init only), stdio, user, caps ...
//! child -> agent         Ready [+ pty master]
//! agent -> child         Start         (init only, at start())
//! child                  seccomp, execve; the agent reads EOF = exec done
//! ```
//!
//! Between clone and exec the children log nothing and read no std::env:
//! they run as the suspended spawner thread would, on their own stacks.

use std::ffi::c_void;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use nix::sched::CloneFlags;
use nix::sys::signal::{self, SigHandler, SigSet, SigmaskHow, Signal};

use super::cgroup::Cgroup;
use super::channel::{self, Message};
use super::process::{self, ExecPointers, ProcessPlan};
use super::rootfs::{self, ChildResult, RootfsPlan};
use super::stdio::{ChildPipes, Stdio};
use super::vfork;
use super::ContainerError;
use crate::reaper::Reaper;

/// Namespaces to create or join.
pub struct NamespacePlan {
    /// Joined in the intermediate (an existing container's, or spec paths).
    pub join: Vec<(OwnedFd, CloneFlags)>,
    /// Created by the intermediate (all but the cgroup namespace).
    pub unshare: CloneFlags,
    /// Created by the child once it is inside its cgroup.
    pub new_cgroup_ns: bool,
}

/// The container-only part of starting an init process.
pub struct InitPlan {
    pub rootfs: RootfsPlan,
    pub hostname: Option<String>,
}

/// Everything one spawn needs, prepared before the clone.
pub struct SpawnPlan {
    pub namespaces: NamespacePlan,
    pub init: Option<InitPlan>,
    pub process: ProcessPlan,
}

/// A process that is set up and waiting (init) or exec'ing (exec).
pub struct Spawned {
    pub pid: i32,
    pub control: OwnedFd,
    pub stdio: Stdio,
}

fn spawn_failed(text: impl Into<String>) -> ContainerError {
    ContainerError::SpawnFailed(text.into())
}

/// Stack of each of the two clones (the intermediate's and the container
/// process's until it execs): setup code only, mostly syscalls.
const CHILD_STACK: usize = 256 * 1024;

/// Stack of the spawner thread: it only clones, reaps and drops.
const SPAWNER_STACK: usize = 256 * 1024;

/// What the two clones read. It lives in the spawner thread, which is
/// suspended until both have exec'd or exited, so they may borrow it freely.
struct CloneArgs {
    plan: SpawnPlan,
    /// Pointers into `plan.process`, for execve.
    exec_pointers: ExecPointers,
    /// The child's end of the control channel.
    control: OwnedFd,
    pipes: Option<ChildPipes>,
    /// Descriptors the intermediate keeps (all others are closed).
    keep: Vec<RawFd>,
    container_stack: vfork::Stack,
    /// The container process's pid as the agent sees it: stored by the kernel
    /// (CLONE_PARENT_SETTID) before the container process runs.
    container_pid: AtomicI32,
}

/// Creates the process described by `plan` and brings it to `Ready`.
///
/// A spawner thread makes the intermediate with `vfork::clone_vm` and stays
/// suspended until the container process has exec'd (or died), then reaps
/// the intermediate and frees what the clones used; this thread talks to the
/// container process over the control channel meanwhile.
pub fn spawn(
    plan: SpawnPlan,
    cgroup: &Cgroup,
    reaper: &Arc<Reaper>,
) -> Result<Spawned, ContainerError> {
    let (pipes, child_pipes) = if plan.process.terminal {
        (None, None)
    } else {
        let (ours, theirs) = Stdio::pipes()?;
        (Some(ours), Some(theirs))
    };
    let (agent_end, child_end) = channel::pair().map_err(|e| ContainerError::Io {
        what: "creating the control channel".into(),
        source: e.into(),
    })?;
    let mut keep: Vec<RawFd> = vec![child_end.as_raw_fd()];
    if let Some(p) = &child_pipes {
        keep.extend([
            p.stdin.as_raw_fd(),
            p.stdout.as_raw_fd(),
            p.stderr.as_raw_fd(),
        ]);
    }
    keep.extend(plan.namespaces.join.iter().map(|(fd, _)| fd.as_raw_fd()));
    keep.sort_unstable();
    let stack_error = |e: std::io::Error| ContainerError::Io {
        what: "mapping a stack for the process's setup".into(),
        source: e,
    };
    let intermediate_stack = vfork::Stack::new(CHILD_STACK).map_err(stack_error)?;
    let args = Box::new(CloneArgs {
        exec_pointers: ExecPointers::new(&plan.process),
        plan,
        control: child_end,
        pipes: child_pipes,
        keep,
        container_stack: vfork::Stack::new(CHILD_STACK).map_err(stack_error)?,
        container_pid: AtomicI32::new(0),
    });
    let spawner_reaper = Arc::clone(reaper);
    std::thread::Builder::new()
        .name("spawner".into())
        .stack_size(SPAWNER_STACK)
        .spawn(move || run_clones(args, intermediate_stack, &spawner_reaper))
        .map_err(|e| ContainerError::Io {
            what: "starting the spawner thread".into(),
            source: e,
        })?;
    let pid = match channel::receive(&agent_end) {
        Ok((Message::Pid(pid), _)) => pid,
        Ok((Message::Failed(text), _)) => return Err(spawn_failed(text)),
        Ok((other, _)) => {
            return Err(spawn_failed(format!(
                "the new process sent {other:?} first"
            )))
        }
        Err(e) => return Err(spawn_failed(format!("control channel: {e}"))),
    };
    reaper.note_spawned();
    match bring_to_ready(pid, &agent_end, cgroup, pipes) {
        Ok(stdio) => Ok(Spawned {
            pid,
            control: agent_end,
            stdio,
        }),
        Err(e) => {
            kill_and_reap(pid, reaper);
            Err(e)
        }
    }
}

/// The spawner thread: clones the intermediate, which returns once the
/// container process has exec'd or exited; then reaps the intermediate and
/// drops what the clones borrowed (closing the agent's copies of the child's
/// descriptors, so the agent sees end-of-file once the exec happened).
fn run_clones(mut args: Box<CloneArgs>, stack: vfork::Stack, reaper: &Reaper) {
    let arg: *mut CloneArgs = &mut *args;
    // SAFETY: `args` and `stack` outlive the call, which returns only after
    // the intermediate exited; `intermediate_entry` follows vfork's rules.
    let cloned = unsafe {
        vfork::clone_vm(
            intermediate_entry,
            &stack,
            0,
            arg.cast(),
            std::ptr::null_mut(),
        )
    };
    match cloned {
        Ok(pid) => {
            reaper.note_spawned();
            reaper.wait(pid);
        }
        Err(e) => {
            let _ = channel::send(
                args.control.as_raw_fd(),
                &Message::Failed(format!("clone: {e}")),
                None,
            );
        }
    }
}

fn bring_to_ready(
    pid: i32,
    control: &OwnedFd,
    cgroup: &Cgroup,
    pipes: Option<Stdio>,
) -> Result<Stdio, ContainerError> {
    cgroup.add_process(pid)?;
    channel::send(control.as_raw_fd(), &Message::Go, None)
        .map_err(|e| spawn_failed(format!("control channel: {e}")))?;
    match channel::receive(control) {
        Ok((Message::Ready, fd)) => match (pipes, fd) {
            (Some(pipes), None) => Ok(pipes),
            (None, Some(master)) => Ok(Stdio::Terminal {
                master: master.into(),
            }),
            _ => Err(spawn_failed("terminal master missing or unexpected")),
        },
        Ok((Message::Failed(text), _)) => Err(spawn_failed(text)),
        Ok((other, _)) => Err(spawn_failed(format!("container process sent {other:?}"))),
        Err(e) => Err(spawn_failed(format!("control channel: {e}"))),
    }
}

/// Kills a process that never reached exec and collects its status.
pub fn kill_and_reap(pid: i32, reaper: &Reaper) {
    let _ = signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
    reaper.wait(pid);
}

/// Waits for the exec to happen: EOF on the channel, or the child's error.
pub fn await_exec(control: &OwnedFd) -> Result<(), ContainerError> {
    match channel::receive(control) {
        Ok((Message::Closed, _)) => Ok(()),
        Ok((Message::Failed(text), _)) => Err(spawn_failed(text)),
        Ok((other, _)) => Err(spawn_failed(format!("container process sent {other:?}"))),
        Err(e) => Err(spawn_failed(format!("control channel: {e}"))),
    }
}

// ---- child side: everything below runs in the clones ----

fn close_other_fds(keep: &[RawFd]) {
    let mut next = 3u32;
    for fd in keep.iter().map(|fd| *fd as u32).filter(|fd| *fd >= 3) {
        if fd > next {
            // SAFETY: closing descriptors this process does not use.
            unsafe { libc::syscall(libc::SYS_close_range, next, fd - 1, 0) };
        }
        next = next.max(fd + 1);
    }
    // SAFETY: as above.
    unsafe { libc::syscall(libc::SYS_close_range, next, u32::MAX, 0) };
}

/// The intermediate: enters or creates the namespaces, clones the container
/// process into them (its parent is the agent: CLONE_PARENT) and waits,
/// suspended, until that process has exec'd or exited.
extern "C" fn intermediate_entry(arg: *mut c_void) -> libc::c_int {
    // SAFETY: `run_clones` passes its live, boxed CloneArgs and is suspended
    // while this runs; the clones only share it (the one field the kernel
    // writes is atomic).
    let args = unsafe { &*arg.cast::<CloneArgs>() };
    close_other_fds(&args.keep);
    let result = enter_namespaces(&args.plan.namespaces).and_then(|()| {
        // SAFETY: `args` outlives the call (this process waits in it);
        // `container_entry` follows vfork's rules.
        unsafe {
            vfork::clone_vm(
                container_entry,
                &args.container_stack,
                libc::CLONE_PARENT | libc::CLONE_PARENT_SETTID,
                arg,
                args.container_pid.as_ptr(),
            )
        }
        .map_err(|e| format!("clone: {e}"))
    });
    if let Err(text) = result {
        let _ = channel::send(args.control.as_raw_fd(), &Message::Failed(text), None);
    }
    // SAFETY: leaving the clone without running the agent's atexit.
    unsafe { libc::_exit(0) }
}

/// The container process: says its pid, then sets up and execs.
extern "C" fn container_entry(arg: *mut c_void) -> libc::c_int {
    // SAFETY: as in `intermediate_entry`; the intermediate is suspended.
    let args = unsafe { &*arg.cast::<CloneArgs>() };
    // The kernel wrote it before this process first ran.
    let pid = args.container_pid.load(Ordering::SeqCst);
    let control = args.control.as_raw_fd();
    if channel::send(control, &Message::Pid(pid), None).is_err() {
        // SAFETY: as above.
        unsafe { libc::_exit(127) }
    }
    container_process(args, control)
}

fn enter_namespaces(plan: &NamespacePlan) -> ChildResult<()> {
    for (fd, kind) in &plan.join {
        nix::sched::setns(fd, *kind).map_err(|e| format!("joining {kind:?} namespace: {e}"))?;
    }
    if !plan.unshare.is_empty() {
        nix::sched::unshare(plan.unshare)
            .map_err(|e| format!("creating namespaces {:?}: {e}", plan.unshare))?;
    }
    Ok(())
}

fn container_process(args: &CloneArgs, control: RawFd) -> ! {
    let text = match setup_and_exec(args, control) {
        Ok(text) | Err(text) => text,
    };
    let _ = channel::send(control, &Message::Failed(text), None);
    // SAFETY: leaving the clone without running the agent's atexit.
    unsafe { libc::_exit(127) }
}

fn wait_for(control: RawFd, expected: Message) -> ChildResult<()> {
    // SAFETY: borrowing the channel fd only for this call.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(control) };
    match channel::receive(&fd) {
        Ok((m, _)) if m == expected => Ok(()),
        Ok((m, _)) => Err(format!("expected {expected:?}, got {m:?}")),
        Err(e) => Err(format!("control channel: {e}")),
    }
}

/// Returns the error text on failure, or the exec error (Ok) if execve returned.
fn setup_and_exec(args: &CloneArgs, control: RawFd) -> ChildResult<String> {
    let (plan, pipes) = (&args.plan, args.pipes.as_ref());
    wait_for(control, Message::Go)?;
    reset_signals()?;
    if plan.namespaces.new_cgroup_ns {
        nix::sched::unshare(CloneFlags::CLONE_NEWCGROUP)
            .map_err(|e| format!("creating cgroup namespace: {e}"))?;
    }
    if let Some(init) = &plan.init {
        rootfs::prepare(&init.rootfs)?;
        if let Some(name) = &init.hostname {
            nix::unistd::sethostname(name).map_err(|e| format!("sethostname: {e}"))?;
        }
    }
    nix::unistd::setsid().map_err(|e| format!("setsid: {e}"))?;
    let master = match pipes {
        Some(p) => {
            for (fd, target) in [(&p.stdin, 0), (&p.stdout, 1), (&p.stderr, 2)] {
                // SAFETY: dup2 onto the standard descriptors.
                if unsafe { libc::dup2(fd.as_raw_fd(), target) } < 0 {
                    return Err(format!("dup2: {}", std::io::Error::last_os_error()));
                }
            }
            None
        }
        None => Some(open_terminal(plan.process.console_size)?),
    };
    let program = process::apply(&plan.process)?;
    channel::send(
        control,
        &Message::Ready,
        master.as_ref().map(|m| m.as_raw_fd()),
    )
    .map_err(|e| format!("control channel: {e}"))?;
    drop(master);
    if plan.init.is_some() {
        wait_for(control, Message::Start)?;
    }
    Ok(process::exec(&plan.process, &program, &args.exec_pointers))
}

fn reset_signals() -> ChildResult<()> {
    for sig in Signal::iterator() {
        if sig != Signal::SIGKILL && sig != Signal::SIGSTOP {
            // SAFETY: restoring default dispositions before exec (the agent
            // ignores SIGPIPE, which exec would otherwise pass on).
            let _ = unsafe { signal::signal(sig, SigHandler::SigDfl) };
        }
    }
    signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&SigSet::empty()), None)
        .map_err(|e| format!("sigprocmask: {e}"))
}

/// Opens a pty in the container's devpts, makes it the controlling terminal
/// and the standard streams; returns the master for the agent.
fn open_terminal(size: Option<(u16, u16)>) -> ChildResult<OwnedFd> {
    use nix::fcntl::OFlag;
    let master = nix::pty::posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| format!("opening /dev/ptmx: {e}"))?;
    nix::pty::grantpt(&master).map_err(|e| format!("grantpt: {e}"))?;
    nix::pty::unlockpt(&master).map_err(|e| format!("unlockpt: {e}"))?;
    let name = nix::pty::ptsname_r(&master).map_err(|e| format!("ptsname: {e}"))?;
    let slave = nix::fcntl::open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| format!("opening {name}: {e}"))?;
    if let Some((rows, cols)) = size {
        super::stdio::set_size(slave.as_raw_fd(), rows, cols)
            .map_err(|e| format!("TIOCSWINSZ: {e}"))?;
    }
    // SAFETY: TIOCSCTTY on a terminal we just opened; we are a session leader.
    if unsafe { libc::ioctl(slave.as_raw_fd(), libc::TIOCSCTTY, 0) } < 0 {
        return Err(format!("TIOCSCTTY: {}", std::io::Error::last_os_error()));
    }
    for target in 0..3 {
        // SAFETY: dup2 onto the standard descriptors.
        if unsafe { libc::dup2(slave.as_raw_fd(), target) } < 0 {
            return Err(format!("dup2: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(OwnedFd::from(master))
}
