//! Per-thread seccomp: each kind of husk thread runs under an allowlist of
//! the system calls its job needs, installed on the thread before it touches
//! guest or client input.
//!
//! Why per thread: the vCPU threads take the guest's port and MMIO accesses,
//! the device thread parses every virtqueue the guest fills and serves a
//! host directory, and the runtime's threads talk to containerd. A bug in
//! one should only reach what that thread needs: a vCPU thread cannot open
//! a file, the device thread cannot mount or exec, the VMM control thread
//! cannot open sockets, and no husk thread can run a program.
//!
//! Filters are per thread and a thread inherits its creator's at clone, and
//! every filter a thread holds must allow a call. So the order is: the
//! runtime confines its first thread (`ThreadKind::Runtime`, list in
//! husk-runtime) before it serves anything, so every later thread inherits
//! that list; `Vm::new` compiles this module's three lists once per VM
//! (`VmFilters`); the device thread and each vCPU thread install theirs as
//! the first thing they do (vCPUs before their first KVM_RUN), and the
//! `husk-vmm` control thread installs its own only after it has started
//! the vCPU threads, so they never inherit the control list. What must
//! happen before confinement (opening /dev/kvm, creating the VM, mapping
//! memory, opening taps and images) happens on the runtime's threads, whose
//! list allows it (`vm_builder_allowlist`). Since the VM's threads inherit
//! the runtime's filter, the runtime's list also holds every call of theirs
//! (`vmm_allowlist`): it is the wide one, theirs are the narrow ones.
//!
//! A call outside the list does not run: the filter returns
//! SECCOMP_RET_TRAP, and `sigsys`'s handler writes one line naming the
//! thread, its list and the system call, then kills the process with
//! SIGSYS, as SECCOMP_RET_KILL_PROCESS would (which cannot say anything).
//! `probe` is a debugging hook that makes a thread kind break its list.

mod allowlist;
mod ioctls;
mod lists;
pub mod probe;
mod sigsys;

use std::sync::Arc;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub use allowlist::Allowlist;
pub use lists::{vm_builder_allowlist, vmm_allowlist, NEVER};
pub use sigsys::set_report_fd;

/// Which allowlist a thread runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// A vCPU thread (`husk-vcpuN`).
    Vcpu,
    /// The virtio devices' event loop (`husk-devices`).
    Devices,
    /// The VM's control thread (`husk-vmm`).
    VmmControl,
    /// The runtime's threads: the shim and `husk run`/`husk vm`'s main
    /// thread, and every helper thread they start.
    Runtime,
}

impl ThreadKind {
    /// The name logs, the SIGSYS report and `HUSK_SECCOMP_PROBE` use.
    pub const fn name(self) -> &'static str {
        match self {
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Devices => "devices",
            ThreadKind::VmmControl => "vmm",
            ThreadKind::Runtime => "runtime",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot compile the {kind} seccomp filter: {source}")]
    Compile {
        kind: &'static str,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the SIGSYS handler that reports seccomp violations: {0}")]
    Handler(std::io::Error),
    #[error(
        "cannot install the {kind} seccomp filter on thread {thread}: {source} \
         (a kernel without seccomp filters needs --seccomp off, or runtime.seccomp = false)"
    )]
    Install {
        kind: &'static str,
        thread: String,
        source: seccompiler::Error,
    },
}

/// One kind's allowlist, compiled to BPF: calls outside it trap.
#[derive(Debug, Clone)]
pub struct ThreadFilter {
    kind: ThreadKind,
    program: BpfProgram,
}

impl ThreadFilter {
    pub fn compile(kind: ThreadKind, list: Allowlist) -> Result<Self, SeccompError> {
        let compile = |source| SeccompError::Compile {
            kind: kind.name(),
            source,
        };
        let filter = SeccompFilter::new(
            list.into_rules(),
            SeccompAction::Trap,
            SeccompAction::Allow,
            TargetArch::x86_64,
        )
        .map_err(compile)?;
        let program = BpfProgram::try_from(filter).map_err(compile)?;
        Ok(Self { kind, program })
    }

    pub fn kind(&self) -> ThreadKind {
        self.kind
    }

    /// Confines the calling thread (and the threads it starts from now on).
    pub fn install(&self) -> Result<(), SeccompError> {
        sigsys::install_handler().map_err(SeccompError::Handler)?;
        let probe = probe::requested(self.kind);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("unnamed");
        tracing::debug!(
            thread = name,
            "seccomp: installing the {} filter",
            self.kind.name()
        );
        sigsys::set_thread_kind(self.kind);
        seccompiler::apply_filter(&self.program).map_err(|source| SeccompError::Install {
            kind: self.kind.name(),
            thread: name.to_string(),
            source,
        })?;
        if probe {
            probe::break_the_list(self.kind);
        }
        Ok(())
    }
}

/// The lists of one VM's own threads, compiled when the VM is built so a
/// problem is a setup error, not a thread that cannot start.
#[derive(Debug)]
pub struct VmFilters {
    pub vcpu: Arc<ThreadFilter>,
    pub devices: ThreadFilter,
    pub control: ThreadFilter,
}

impl VmFilters {
    pub fn compile() -> Result<Self, SeccompError> {
        Ok(Self {
            vcpu: Arc::new(ThreadFilter::compile(
                ThreadKind::Vcpu,
                lists::vcpu_allowlist(),
            )?),
            devices: ThreadFilter::compile(ThreadKind::Devices, lists::devices_allowlist())?,
            control: ThreadFilter::compile(ThreadKind::VmmControl, lists::control_allowlist())?,
        })
    }
}

/// Installs `filter` (if seccomp is on) on a VMM thread that is about to
/// serve the guest. Failing to is fatal: an unconfined thread must not run
/// when the user asked for confinement, and the filters were already
/// compiled (and the kernel's support checked) when the VM was built.
pub fn confine_or_abort(filter: Option<&ThreadFilter>) {
    let Some(filter) = filter else {
        return;
    };
    if let Err(e) = filter.install() {
        tracing::error!("{e}; stopping husk");
        eprintln!("husk: {e}; stopping husk");
        std::process::abort();
    }
}

#[cfg(test)]
mod tests;
