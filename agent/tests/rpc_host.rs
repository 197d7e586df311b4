//! husk-agent's RPCs end to end on a host: the built binary serves on a Unix
//! socket (not PID 1), the generated ttrpc client calls it.

mod agent_process;

use agent_process::{ctx, status_of, AgentProcess};
use husk_agent_protocol::agent::{self, health_check_response::ServingStatus};
use husk_agent_protocol::ttrpc::Code;

#[test]
fn check_and_guest_details_answer() {
    let agent = AgentProcess::start("details");
    let health = agent
        .client
        .check(ctx(), &agent::CheckRequest::new())
        .unwrap();
    assert_eq!(health.status.enum_value(), Ok(ServingStatus::SERVING));

    let details = agent
        .client
        .get_guest_details(ctx(), &agent::GetGuestDetailsRequest::new())
        .unwrap();
    let uname = nix::sys::utsname::uname().unwrap();
    assert_eq!(
        details.kernel_release,
        uname.release().to_string_lossy(),
        "the agent reports the kernel it runs on"
    );
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap();
    let kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert_eq!(details.memory_total_bytes, kib * 1024);
    assert_eq!(details.agent_version, env!("CARGO_PKG_VERSION"));
}

#[test]
fn sandbox_lifecycle_is_enforced() {
    let agent = AgentProcess::start("sandbox");
    let c = &agent.client;
    let create = |id: &str| agent::CreateSandboxRequest {
        sandbox_id: id.into(),
        hostname: "pod-host".into(),
        ..Default::default()
    };
    let destroy = |id: &str| agent::DestroySandboxRequest {
        sandbox_id: id.into(),
        ..Default::default()
    };
    let start = agent::StartContainerRequest {
        container_id: "c1".into(),
        ..Default::default()
    };

    let (code, msg) = status_of(c.start_container(ctx(), &start));
    assert_eq!(code, Code::FAILED_PRECONDITION, "{msg}");
    assert!(msg.contains("CreateSandbox"), "{msg}");

    let (code, msg) = status_of(c.create_sandbox(ctx(), &create("../pod")));
    assert_eq!(code, Code::INVALID_ARGUMENT, "{msg}");
    assert!(msg.contains("sandbox_id"), "{msg}");

    c.create_sandbox(ctx(), &create("pod1")).unwrap();
    let (code, msg) = status_of(c.create_sandbox(ctx(), &create("pod2")));
    assert_eq!(code, Code::ALREADY_EXISTS, "{msg}");
    assert!(msg.contains("pod1"), "{msg}");

    let (code, msg) = status_of(c.destroy_sandbox(ctx(), &destroy("pod2")));
    assert_eq!(code, Code::NOT_FOUND, "{msg}");
    c.destroy_sandbox(ctx(), &destroy("pod1")).unwrap();
    let (code, _) = status_of(c.destroy_sandbox(ctx(), &destroy("pod1")));
    assert_eq!(code, Code::NOT_FOUND);
    c.create_sandbox(ctx(), &create("pod2")).unwrap();
}
