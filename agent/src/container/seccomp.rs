//! Compiles an OCI seccomp profile into BPF with `seccompiler`.
//!
//! An OCI profile has one default action and groups of syscalls each with its
//! own action; a seccompiler filter has one "match" and one "mismatch" action.
//! The kernel runs every installed filter and keeps the most severe result, so
//! the profile becomes: one filter that returns the default action for any
//! syscall no group names (and ALLOW for those it does), plus one filter per
//! distinct non-ALLOW group action that returns that action for its syscalls.
//! Where groups overlap the most severe action wins (libseccomp would pick one
//! group); real profiles do not overlap.
//!
//! Syscall names unknown on this architecture are skipped, as libseccomp does
//! (profiles list e.g. 32-bit-only calls for every arch).

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator, LinuxSyscall};
use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::ContainerError;

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

fn invalid(what: String) -> ContainerError {
    ContainerError::InvalidSpec(format!("linux.seccomp: {what}"))
}

fn action(action: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, ContainerError> {
    Ok(match action {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => SeccompAction::Trace(errno.unwrap_or(0)),
        LinuxSeccompAction::ScmpActNotify => {
            return Err(ContainerError::Unsupported(
                "seccomp action SCMP_ACT_NOTIFY".into(),
            ))
        }
    })
}

fn rule(group: &LinuxSyscall) -> Result<SeccompRule, ContainerError> {
    let mut conditions = Vec::new();
    for arg in group.args().iter().flatten() {
        let index = u8::try_from(arg.index())
            .ok()
            .filter(|i| *i < 6)
            .ok_or_else(|| invalid(format!("argument index {} out of range", arg.index())))?;
        let op = match arg.op() {
            LinuxSeccompOperator::ScmpCmpNe => SeccompCmpOp::Ne,
            LinuxSeccompOperator::ScmpCmpLt => SeccompCmpOp::Lt,
            LinuxSeccompOperator::ScmpCmpLe => SeccompCmpOp::Le,
            LinuxSeccompOperator::ScmpCmpEq => SeccompCmpOp::Eq,
            LinuxSeccompOperator::ScmpCmpGe => SeccompCmpOp::Ge,
            LinuxSeccompOperator::ScmpCmpGt => SeccompCmpOp::Gt,
            LinuxSeccompOperator::ScmpCmpMaskedEq => SeccompCmpOp::MaskedEq(arg.value()),
        };
        // libseccomp's MASKED_EQ: (arg & value) == valueTwo.
        let value = match arg.op() {
            LinuxSeccompOperator::ScmpCmpMaskedEq => arg.value_two().unwrap_or(0),
            _ => arg.value(),
        };
        let condition = SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
            .map_err(|e| invalid(format!("argument condition: {e}")))?;
        conditions.push(condition);
    }
    if conditions.is_empty() {
        // seccompiler models "any arguments" as an empty rule list.
        return Err(invalid("internal: empty condition list".into()));
    }
    SeccompRule::new(conditions).map_err(|e| invalid(format!("rule: {e}")))
}

/// Adds `group`'s syscalls to `rules`. An unconditional entry wins over
/// conditional ones for the same syscall.
fn add_group(rules: &mut Rules, group: &LinuxSyscall) -> Result<(), ContainerError> {
    let has_args = group.args().as_ref().is_some_and(|a| !a.is_empty());
    for name in group.names() {
        let Ok(sysno) = syscalls::Sysno::from_str(name) else {
            tracing::debug!(syscall = %name, "seccomp: syscall unknown on this architecture, skipped");
            continue;
        };
        let entry = rules.entry(i64::from(sysno.id())).or_default();
        if !has_args {
            entry.clear();
            entry.push(unconditional_marker());
        } else if !is_unconditional(entry) {
            entry.push(rule(group)?);
        }
    }
    Ok(())
}

// seccompiler wants an empty Vec for "match regardless of arguments"; while
// collecting, a marker rule stands for it and is stripped at the end.
fn unconditional_marker() -> SeccompRule {
    SeccompRule::new(vec![SeccompCondition::new(
        5,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(0),
        0,
    )
    .expect("static condition")])
    .expect("static rule")
}

fn is_unconditional(entry: &[SeccompRule]) -> bool {
    entry.len() == 1 && entry[0] == unconditional_marker()
}

fn finish(mut rules: Rules) -> Rules {
    for entry in rules.values_mut() {
        if is_unconditional(entry) {
            entry.clear();
        }
    }
    rules
}

fn compile(
    rules: Rules,
    mismatch: SeccompAction,
    matched: SeccompAction,
) -> Result<BpfProgram, ContainerError> {
    let filter = SeccompFilter::new(finish(rules), mismatch, matched, TargetArch::x86_64)
        .map_err(|e| invalid(format!("{e}")))?;
    BpfProgram::try_from(filter).map_err(|e| invalid(format!("{e}")))
}

/// A program that fails every x32-ABI syscall (numbers with bit 30 set)
/// with ENOSYS. seccompiler's rules match x86-64 numbers only, so without
/// it a denied syscall could be reached through its x32 number where the
/// kernel has x32 enabled; libseccomp likewise treats x32 as another arch.
fn x32_guard() -> BpfProgram {
    const LOAD_NR: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS, offset 0 = nr
    const JGE: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
    const RET: u16 = 0x06; // BPF_RET | BPF_K
    let insn = |code, jt, jf, k| seccompiler::sock_filter { code, jt, jf, k };
    vec![
        insn(LOAD_NR, 0, 0, 0),
        insn(JGE, 0, 1, 0x4000_0000),
        insn(RET, 0, 0, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        insn(RET, 0, 0, libc::SECCOMP_RET_ALLOW),
    ]
}

/// Compiles the profile into the BPF programs to install, in order.
pub fn compile_profile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, ContainerError> {
    if !cfg!(target_arch = "x86_64") {
        return Err(ContainerError::Unsupported(
            "seccomp on this architecture".into(),
        ));
    }
    if profile.listener_path().is_some() {
        return Err(ContainerError::Unsupported("seccomp listenerPath".into()));
    }
    if profile.flags().as_ref().is_some_and(|f| !f.is_empty()) {
        return Err(ContainerError::Unsupported("seccomp flags".into()));
    }
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let groups = profile.syscalls().clone().unwrap_or_default();
    let mut all = Rules::new();
    let mut by_action: Vec<(SeccompAction, Rules)> = Vec::new();
    for group in &groups {
        let group_action = action(group.action(), group.errno_ret())?;
        if group_action == default {
            continue;
        }
        add_group(&mut all, group)?;
        if group_action == SeccompAction::Allow {
            continue;
        }
        let slot = match by_action.iter().position(|(a, _)| *a == group_action) {
            Some(i) => i,
            None => {
                by_action.push((group_action.clone(), Rules::new()));
                by_action.len() - 1
            }
        };
        add_group(&mut by_action[slot].1, group)?;
    }
    let mut programs = Vec::new();
    if default != SeccompAction::Allow {
        programs.push(compile(all, default, SeccompAction::Allow)?);
    }
    for (group_action, rules) in by_action {
        programs.push(compile(rules, SeccompAction::Allow, group_action)?);
    }
    if !programs.is_empty() {
        programs.push(x32_guard());
    }
    Ok(programs)
}

/// Installs `program` on the calling thread without touching no_new_privs
/// (seccompiler's `apply_filter` always sets it; OCI makes that the spec's
/// choice). Without no_new_privs the caller needs CAP_SYS_ADMIN.
pub fn install(program: &BpfProgram) -> std::io::Result<()> {
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        // seccompiler's sock_filter has the kernel's layout.
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: the kernel copies the program; fprog points at live memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER,
            0,
            &fprog as *const libc::sock_fprog,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).expect("test profile parses")
    }

    #[test]
    fn default_errno_with_allow_list_is_one_program() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","no_such_call_xyz"],"action":"SCMP_ACT_ALLOW"}]}"#,
        );
        // The profile's program and the x32 guard.
        assert_eq!(compile_profile(&p).unwrap().len(), 2);
    }

    #[test]
    fn distinct_group_actions_get_their_own_program() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mount"],"action":"SCMP_ACT_ERRNO","errnoRet":1},
                {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"},
                {"names":["personality"],"action":"SCMP_ACT_ERRNO","errnoRet":1,
                 "args":[{"index":0,"value":8,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert_eq!(compile_profile(&p).unwrap().len(), 3);
        let allow_all = profile(r#"{"defaultAction":"SCMP_ACT_ALLOW"}"#);
        assert!(compile_profile(&allow_all).unwrap().is_empty());
    }

    #[test]
    fn notify_and_bad_arg_index_are_refused() {
        let notify = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(matches!(
            compile_profile(&notify),
            Err(ContainerError::Unsupported(_))
        ));
        let bad = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[{"names":["read"],
                "action":"SCMP_ACT_ERRNO","args":[{"index":9,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        assert!(matches!(
            compile_profile(&bad),
            Err(ContainerError::InvalidSpec(_))
        ));
    }
}
