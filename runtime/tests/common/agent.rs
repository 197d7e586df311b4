//! Driving husk-agent from a test: the RPCs a container's life takes, on
//! the generated ttrpc client (what the runtime does, minus the runtime).

use std::time::Duration;

use husk_agent_protocol::agent;
use husk_agent_protocol::ttrpc;
use husk_runtime::agent::AgentClient;

/// Every guest syscall costs ~300 us on software KVM; one RPC may take many.
pub const RPC_TIMEOUT: Duration = Duration::from_secs(600);

pub fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(RPC_TIMEOUT.as_nanos() as i64)
}

/// A minimal OCI spec: `args` as root in new pid/mount/ipc/uts namespaces,
/// with `resources` (a JSON object) as linux.resources.
pub fn spec(args: &str, resources: &str) -> Vec<u8> {
    format!(
        r#"{{
  "ociVersion": "1.0.2",
  "process": {{ "user": {{ "uid": 0, "gid": 0 }}, "args": {args}, "env": ["PATH=/bin"], "cwd": "/" }},
  "root": {{ "path": "rootfs" }},
  "hostname": "busybox",
  "mounts": [
    {{ "destination": "/proc", "type": "proc", "source": "proc" }},
    {{ "destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"] }}
  ],
  "linux": {{
    "resources": {resources},
    "namespaces": [{{ "type": "pid" }}, {{ "type": "mount" }}, {{ "type": "ipc" }}, {{ "type": "uts" }}]
  }}
}}"#
    )
    .into_bytes()
}

/// Reads one stream of the container's init until EOF.
pub fn read_to_end(client: &AgentClient, id: &str, stderr: bool) -> String {
    let req = agent::ReadStreamRequest {
        container_id: id.into(),
        ..Default::default()
    };
    let mut out = Vec::new();
    loop {
        let r = if stderr {
            client.read_stderr(ctx(), &req)
        } else {
            client.read_stdout(ctx(), &req)
        };
        let data = r.unwrap().data;
        if data.is_empty() {
            return String::from_utf8(out).unwrap();
        }
        out.extend(data);
    }
}

/// Creates and starts container `id` on `rootfs`.
pub fn create_and_start(client: &AgentClient, id: &str, oci_spec: Vec<u8>, rootfs: agent::Rootfs) {
    let create = agent::CreateContainerRequest {
        container_id: id.into(),
        oci_spec,
        rootfs: Some(rootfs).into(),
        ..Default::default()
    };
    let pid = client.create_container(ctx(), &create).unwrap().pid;
    assert!(pid > 1, "init pid {pid}");
    let start = agent::StartContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    client.start_container(ctx(), &start).unwrap();
}

pub fn wait(client: &AgentClient, id: &str) -> i32 {
    let wait = agent::WaitProcessRequest {
        container_id: id.into(),
        ..Default::default()
    };
    client.wait_process(ctx(), &wait).unwrap().exit_status
}

pub fn remove(client: &AgentClient, id: &str) {
    let remove = agent::RemoveContainerRequest {
        container_id: id.into(),
        ..Default::default()
    };
    client.remove_container(ctx(), &remove).unwrap();
}
