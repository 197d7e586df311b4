//! Conversions at the edge of the Task API: errors to ttrpc status codes
//! (in one place), timestamps, the cgroup Metrics containerd expects from
//! Stats, and the runtime options containerd may send.

use std::path::PathBuf;
use std::time::SystemTime;

use containerd_shim_protos::cgroups::metrics::{
    CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics, PidsStat,
};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::CodedInputStream;
use containerd_shim_protos::ttrpc::{self, Code};
use husk_agent_protocol::agent::StatsContainerResponse;

/// A Task API failure: a code containerd understands and a message.
#[derive(Debug)]
pub struct TaskError {
    pub code: Code,
    pub message: String,
}

impl TaskError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl std::fmt::Display) -> Self {
        Self::new(Code::NOT_FOUND, format!("{what} not found"))
    }

    pub fn precondition(message: impl Into<String>) -> Self {
        Self::new(Code::FAILED_PRECONDITION, message)
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(Code::INVALID_ARGUMENT, message)
    }

    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(Code::INTERNAL, message.to_string())
    }
}

impl From<TaskError> for ttrpc::Error {
    fn from(e: TaskError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code, e.message))
    }
}

impl From<crate::sandbox::SandboxError> for TaskError {
    fn from(e: crate::sandbox::SandboxError) -> Self {
        use crate::sandbox::SandboxError as S;
        let code = match &e {
            S::Config(_) | S::Size(_) | S::Spec(_) => Code::INVALID_ARGUMENT,
            S::Mount(crate::sandbox::mounts::MountError::Unsupported { .. })
            | S::Mount(crate::sandbox::mounts::MountError::TooMany(_)) => Code::INVALID_ARGUMENT,
            S::Rpc { .. } | S::VmEnded { .. } => Code::FAILED_PRECONDITION,
            _ => Code::INTERNAL,
        };
        TaskError::new(code, e.to_string())
    }
}

/// A container or exec id from a request, checked before the shim uses it:
/// a container id becomes a directory on the host (`shared/<id>`, which a
/// failed create removes again) and in the guest, so `/`, `..` or a slash
/// in it would point those at other places. The agent's rule (a superset of
/// containerd's): 1-128 of `[A-Za-z0-9_.-]`, not starting with `.`. An exec
/// id may not be empty either: "" names the container's init.
pub fn check_id(what: &str, id: &str) -> Result<(), TaskError> {
    if husk_agent_protocol::is_valid_id(id) {
        Ok(())
    } else {
        Err(TaskError::invalid(format!(
            "invalid {what} id {id:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

pub fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = d.as_secs() as i64;
    ts.nanos = d.subsec_nanos() as i32;
    ts
}

/// The guest cgroup's figures as containerd's cgroup v1 Metrics, which
/// `ctr task metrics` and CRI's stats read.
pub fn metrics(s: &StatsContainerResponse) -> Any {
    let mut m = Metrics::new();
    let mut usage = CPUUsage::new();
    usage.total = s.cpu.usage_ns;
    let mut cpu = CPUStat::new();
    cpu.usage = Some(usage).into();
    m.cpu = Some(cpu).into();
    let mut entry = MemoryEntry::new();
    entry.usage = s.memory.usage_bytes;
    entry.limit = match s.memory.limit_bytes {
        0 => u64::MAX,
        l => l,
    };
    let mut memory = MemoryStat::new();
    memory.usage = Some(entry).into();
    m.memory = Some(memory).into();
    let mut pids = PidsStat::new();
    pids.current = s.pids.current;
    m.pids = Some(pids).into();
    super::events::to_any(&m)
}

/// CRI's runtime options (`runtimeoptions.v1.Options`): field 2 is
/// `config_path`, the husk config to use. Anything else is ignored.
pub fn config_path_option(options: Option<&Any>) -> Option<PathBuf> {
    let any = options?;
    if !any.type_url.ends_with("runtimeoptions.v1.Options") {
        return None;
    }
    let mut input = CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        if tag == (2 << 3 | 2) {
            return input
                .read_string()
                .ok()
                .filter(|p| !p.is_empty())
                .map(PathBuf::from);
        }
        let wire = containerd_shim_protos::protobuf::rt::WireType::new(tag & 7)?;
        input.skip_field(wire).ok()?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use containerd_shim_protos::protobuf::Message;

    #[test]
    fn ids_that_could_leave_their_directory_are_refused() {
        for bad in [
            "",
            "/",
            "..",
            "../x",
            "a/b",
            ".hidden",
            "a b",
            "é",
            &"a".repeat(129),
        ] {
            let e = check_id("container", bad).unwrap_err();
            assert_eq!(e.code, Code::INVALID_ARGUMENT, "{bad:?}");
        }
        for good in ["c1", "a.b-c_d", &"f".repeat(64), &"a".repeat(128)] {
            assert!(check_id("container", good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn cri_runtime_options_give_the_config_path() {
        // runtimeoptions.v1.Options{type_url: "x", config_path: "/etc/husk/pod.toml"}
        let mut value = vec![0x0a, 1, b'x', 0x12, 18];
        value.extend_from_slice(b"/etc/husk/pod.toml");
        let mut any = Any::new();
        any.type_url = "runtimeoptions.v1.Options".into();
        any.value = value;
        assert_eq!(
            config_path_option(Some(&any)),
            Some(PathBuf::from("/etc/husk/pod.toml"))
        );
        any.type_url = "containerd.runc.v1.Options".into();
        assert_eq!(config_path_option(Some(&any)), None);
        assert_eq!(config_path_option(None), None);
    }

    #[test]
    fn stats_become_cgroup_v1_metrics() {
        let mut s = StatsContainerResponse::new();
        s.cpu.mut_or_insert_default().usage_ns = 42;
        s.memory.mut_or_insert_default().usage_bytes = 4096;
        s.pids.mut_or_insert_default().current = 3;
        let any = metrics(&s);
        assert_eq!(any.type_url, "io.containerd.cgroups.v1.Metrics");
        let m = Metrics::parse_from_bytes(&any.value).unwrap();
        assert_eq!(m.cpu.usage.total, 42);
        assert_eq!(m.memory.usage.usage, 4096);
        assert_eq!(m.memory.usage.limit, u64::MAX);
        assert_eq!(m.pids.current, 3);
    }
}
