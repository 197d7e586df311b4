//! The process part of a spec: who runs what, with which privileges.
//!
//! `ProcessPlan::from_oci` checks an OCI `process` object (the init's or an
//! exec's) in the agent, where errors can be reported properly; the child then
//! applies the plan right before execve: rlimits, oom_score_adj, groups and
//! ids, capabilities, working directory, no_new_privs, seccomp, in the order
//! runc uses. Seccomp goes last so the setup syscalls are not filtered, except
//! without no_new_privs: then installing a filter needs CAP_SYS_ADMIN, which
//! the capability drop may remove, so (like runc) it is installed first.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use caps::{CapSet, Capability};
use oci_spec::runtime::{PosixRlimitType, Process};
use seccompiler::BpfProgram;

use super::rootfs::ChildResult;
use super::{seccomp, ContainerError};

/// The five capability sets of a process.
#[derive(Debug, Clone, Default)]
pub struct CapabilityPlan {
    pub bounding: HashSet<Capability>,
    pub effective: HashSet<Capability>,
    pub permitted: HashSet<Capability>,
    pub inheritable: HashSet<Capability>,
    pub ambient: HashSet<Capability>,
}

/// A checked `process` object, ready for the child.
#[derive(Debug, Clone)]
pub struct ProcessPlan {
    pub argv: Vec<CString>,
    pub env: Vec<CString>,
    pub path_dirs: Vec<PathBuf>,
    pub cwd: PathBuf,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    pub capabilities: Option<CapabilityPlan>,
    pub rlimits: Vec<(PosixRlimitType, u64, u64)>,
    pub no_new_privileges: bool,
    pub oom_score_adj: Option<i32>,
    pub seccomp: Vec<BpfProgram>,
    pub terminal: bool,
    /// Initial terminal size (rows, cols).
    pub console_size: Option<(u16, u16)>,
    /// File mode creation mask; runc's default is 022.
    pub umask: u32,
}

fn cstring(text: &str, field: &str) -> Result<CString, ContainerError> {
    CString::new(text)
        .map_err(|_| ContainerError::InvalidSpec(format!("{field}: contains a NUL byte")))
}

fn capability_set(
    list: &Option<HashSet<oci_spec::runtime::Capability>>,
) -> Result<HashSet<Capability>, ContainerError> {
    let mut set = HashSet::new();
    for cap in list.iter().flatten() {
        let name = format!("CAP_{cap}");
        let parsed = Capability::from_str(&name).map_err(|_| {
            ContainerError::InvalidSpec(format!("process.capabilities: unknown {name}"))
        })?;
        set.insert(parsed);
    }
    Ok(set)
}

impl ProcessPlan {
    /// Checks `process` and compiles `seccomp_profile` (the container's).
    pub fn from_oci(
        process: &Process,
        seccomp_profile: Option<&oci_spec::runtime::LinuxSeccomp>,
        terminal: bool,
    ) -> Result<Self, ContainerError> {
        let args = process.args().clone().unwrap_or_default();
        if args.is_empty() || args[0].is_empty() {
            return Err(ContainerError::InvalidSpec("process.args is empty".into()));
        }
        let argv = args
            .iter()
            .map(|a| cstring(a, "process.args"))
            .collect::<Result<_, _>>()?;
        let mut env_list = process.env().clone().unwrap_or_default();
        if !env_list.iter().any(|e| e.starts_with("HOME=")) {
            env_list.push(if process.user().uid() == 0 {
                "HOME=/root".into()
            } else {
                "HOME=/".into()
            });
        }
        let env = env_list
            .iter()
            .map(|e| cstring(e, "process.env"))
            .collect::<Result<_, _>>()?;
        let path_dirs = env_list
            .iter()
            .find_map(|e| e.strip_prefix("PATH="))
            .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .split(':')
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        if !process.cwd().is_absolute() {
            return Err(ContainerError::InvalidSpec(format!(
                "process.cwd {} is not absolute",
                process.cwd().display()
            )));
        }
        let capabilities = match process.capabilities() {
            None => None,
            Some(c) => Some(CapabilityPlan {
                bounding: capability_set(c.bounding())?,
                effective: capability_set(c.effective())?,
                permitted: capability_set(c.permitted())?,
                inheritable: capability_set(c.inheritable())?,
                ambient: capability_set(c.ambient())?,
            }),
        };
        let rlimits = process
            .rlimits()
            .iter()
            .flatten()
            .map(|r| (r.typ(), r.soft(), r.hard()))
            .collect();
        if process.apparmor_profile().is_some() || process.selinux_label().is_some() {
            tracing::warn!(
                "process.apparmorProfile/selinuxLabel are not applied: no LSM support in the agent"
            );
        }
        let seccomp = seccomp_profile
            .map(seccomp::compile_profile)
            .transpose()?
            .unwrap_or_default();
        Ok(ProcessPlan {
            argv,
            env,
            path_dirs,
            cwd: process.cwd().clone(),
            uid: process.user().uid(),
            gid: process.user().gid(),
            additional_gids: process.user().additional_gids().clone().unwrap_or_default(),
            capabilities,
            rlimits,
            no_new_privileges: process.no_new_privileges().unwrap_or(false),
            oom_score_adj: process.oom_score_adj(),
            seccomp,
            terminal,
            console_size: process.console_size().map(|b| {
                let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
                (clamp(b.height()), clamp(b.width()))
            }),
            umask: process.user().umask().unwrap_or(0o022) & 0o777,
        })
    }
}

fn rlimit_resource(kind: PosixRlimitType) -> nix::sys::resource::Resource {
    use nix::sys::resource::Resource as R;
    match kind {
        PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
        PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
        PosixRlimitType::RlimitData => R::RLIMIT_DATA,
        PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
        PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
        PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
        PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
        PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
        PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
        PosixRlimitType::RlimitAs => R::RLIMIT_AS,
        PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
        PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
        PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
        PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
        PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
        PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
    }
}

fn set_capabilities(plan: &CapabilityPlan) -> ChildResult<()> {
    let err = |what: &str, e: caps::errors::CapsError| {
        format!("capabilities ({what}; ambient ones must also be permitted and inheritable): {e}")
    };
    caps::set(None, CapSet::Effective, &plan.effective).map_err(|e| err("effective", e))?;
    caps::set(None, CapSet::Permitted, &plan.permitted).map_err(|e| err("permitted", e))?;
    caps::set(None, CapSet::Inheritable, &plan.inheritable).map_err(|e| err("inheritable", e))?;
    // The kernel keeps an ambient capability only if it is also permitted
    // and inheritable; like runc, raise those and leave out the rest (runc's
    // own default spec lists ambient capabilities but no inheritable ones).
    let ambient: std::collections::HashSet<_> = plan
        .ambient
        .iter()
        .filter(|c| plan.permitted.contains(c) && plan.inheritable.contains(c))
        .copied()
        .collect();
    caps::set(None, CapSet::Ambient, &ambient).map_err(|e| err("ambient", e))
}

fn drop_bounding(plan: &CapabilityPlan) -> ChildResult<()> {
    for cap in caps::all() {
        if !plan.bounding.contains(&cap)
            && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
        {
            caps::drop(None, CapSet::Bounding, cap)
                .map_err(|e| format!("dropping {cap} from the bounding set: {e}"))?;
        }
    }
    Ok(())
}

/// Sets this process's groups and ids with the raw system calls. glibc's
/// wrappers would also change every other thread it knows of (it signals
/// them: SIGSETXID), and a child that shares the agent's memory until exec
/// sees the agent's threads as its own.
fn switch_user(plan: &ProcessPlan) -> ChildResult<()> {
    let groups = &plan.additional_gids;
    // SAFETY: the kernel reads `groups.len()` gids from the live vector.
    let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    check_id_call(rc, "setgroups")?;
    let (gid, uid) = (plan.gid, plan.uid);
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) };
    check_id_call(rc, &format!("setgid {gid}"))?;
    // SAFETY: integer arguments only.
    let rc = unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) };
    check_id_call(rc, &format!("setuid {uid}"))
}

fn check_id_call(rc: libc::c_long, what: &str) -> ChildResult<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(format!("{what}: {}", std::io::Error::last_os_error()))
    }
}

/// A plan's `argv` and `env` as execve takes them (null-terminated pointer
/// arrays), made before the clone so the child allocates nothing it would
/// leave behind in the agent (vfork.rs).
pub struct ExecPointers {
    argv: Vec<*const libc::c_char>,
    env: Vec<*const libc::c_char>,
}

// SAFETY: the pointers point into the heap buffers of a plan's CStrings, which
// its owner keeps, unchanged, beside this value (spawn.rs's CloneArgs);
// moving either moves no buffer.
unsafe impl Send for ExecPointers {}

impl ExecPointers {
    pub fn new(plan: &ProcessPlan) -> Self {
        let pointers = |list: &[CString]| {
            list.iter()
                .map(|c| c.as_ptr())
                .chain(std::iter::once(std::ptr::null()))
                .collect()
        };
        ExecPointers {
            argv: pointers(&plan.argv),
            env: pointers(&plan.env),
        }
    }
}

/// The path of the program to exec, held on the child's stack (no heap: see
/// `ExecPointers`).
pub struct Program {
    bytes: [u8; libc::PATH_MAX as usize],
}

impl Program {
    /// `path` NUL-terminated; None if that exceeds PATH_MAX.
    fn new(path: &[u8]) -> Option<Self> {
        let mut bytes = [0u8; libc::PATH_MAX as usize];
        (path.len() < bytes.len()).then(|| {
            bytes[..path.len()].copy_from_slice(path);
            Program { bytes }
        })
    }

    fn as_cstr(&self) -> &CStr {
        CStr::from_bytes_until_nul(&self.bytes).unwrap_or_default()
    }
}

/// The program to exec: a path with a slash as given, else the first match
/// in the process's PATH (runc resolves the same way, before seccomp).
fn resolve_program(plan: &ProcessPlan) -> ChildResult<Program> {
    let too_long = || format!("executable {:?}: path too long", plan.argv[0]);
    let name = Path::new(std::ffi::OsStr::from_bytes(plan.argv[0].as_bytes()));
    if name.as_os_str().as_bytes().contains(&b'/') {
        nix::unistd::access(name, nix::unistd::AccessFlags::X_OK)
            .map_err(|e| format!("executable {}: {e}", name.display()))?;
        return Program::new(plan.argv[0].as_bytes()).ok_or_else(too_long);
    }
    for dir in &plan.path_dirs {
        let candidate = dir.join(name);
        if nix::unistd::access(&candidate, nix::unistd::AccessFlags::X_OK).is_ok()
            && candidate.is_file()
        {
            return Program::new(candidate.as_os_str().as_bytes()).ok_or_else(too_long);
        }
    }
    Err(format!("executable {:?} not found in PATH", name))
}

fn install_seccomp(plan: &ProcessPlan) -> ChildResult<()> {
    for filter in &plan.seccomp {
        seccomp::install(filter).map_err(|e| format!("installing the seccomp filter: {e}"))?;
    }
    Ok(())
}

/// The agent runs with a raised open-file limit (`fd_limit`); a process
/// whose spec does not set RLIMIT_NOFILE gets the agent's original back.
fn restore_started_nofile(plan: &ProcessPlan) -> ChildResult<()> {
    let in_spec = plan
        .rlimits
        .iter()
        .any(|(kind, ..)| *kind == PosixRlimitType::RlimitNofile);
    match crate::fd_limit::started_with() {
        Some((soft, hard)) if !in_spec => {
            nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE, soft, hard)
                .map_err(|e| format!("restoring RLIMIT_NOFILE {soft}/{hard}: {e}"))
        }
        _ => Ok(()),
    }
}

/// Applies everything but the exec itself; returns the program to exec.
pub fn apply(plan: &ProcessPlan) -> ChildResult<Program> {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(plan.umask));
    if !plan.no_new_privileges {
        install_seccomp(plan)?;
    }
    restore_started_nofile(plan)?;
    for (kind, soft, hard) in &plan.rlimits {
        nix::sys::resource::setrlimit(rlimit_resource(*kind), *soft, *hard)
            .map_err(|e| format!("setrlimit {kind:?}: {e}"))?;
    }
    if let Some(adj) = plan.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .map_err(|e| format!("oom_score_adj {adj}: {e}"))?;
    }
    if let Some(caps) = &plan.capabilities {
        drop_bounding(caps)?;
        // Keep the permitted set across the uid change, then set it exactly.
        // SAFETY: prctl with integer arguments.
        unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) };
    }
    switch_user(plan)?;
    if let Some(caps) = &plan.capabilities {
        set_capabilities(caps)?;
    }
    nix::unistd::chdir(&plan.cwd).map_err(|e| format!("chdir {}: {e}", plan.cwd.display()))?;
    let program = resolve_program(plan)?;
    if plan.no_new_privileges {
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(format!("no_new_privs: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(program)
}

/// Installs seccomp and execs. Returns only on failure.
pub fn exec(plan: &ProcessPlan, program: &Program, pointers: &ExecPointers) -> String {
    if plan.no_new_privileges {
        if let Err(text) = install_seccomp(plan) {
            return text;
        }
    }
    let path = program.as_cstr();
    // SAFETY: a NUL-terminated path and null-terminated arrays of pointers
    // into the plan's CStrings, all alive for the call.
    unsafe { libc::execve(path.as_ptr(), pointers.argv.as_ptr(), pointers.env.as_ptr()) };
    format!("exec {path:?}: {}", std::io::Error::last_os_error())
}
