//! `AgentService` for husk-agent: each method validates its request (see
//! `requests`), calls the sandbox state or the container engine, and turns the
//! outcome into a reply through `status::reply`, which logs failures.

use husk_agent_protocol::agent::{self, health_check_response::ServingStatus};
use husk_agent_protocol::agent_ttrpc::AgentService;
use husk_agent_protocol::ttrpc::{self, TtrpcContext};

use super::sandbox::{GuestScope, Sandbox};
use super::status::{reply, RpcError};
use crate::guest_details;

/// The service state shared by all ttrpc worker threads.
pub struct AgentRpc {
    sandbox: Sandbox,
}

impl AgentRpc {
    pub fn new(scope: GuestScope) -> Self {
        AgentRpc {
            sandbox: Sandbox::new(scope),
        }
    }

    fn no_engine(&self, method: &str) -> Result<(), RpcError> {
        self.sandbox.require()?;
        Err(RpcError::Unimplemented(format!(
            "{method}: this husk-agent has no container engine yet"
        )))
    }
}

fn guest_details() -> Result<agent::GuestDetails, RpcError> {
    let d = guest_details::read().map_err(|e| RpcError::Internal(e.to_string()))?;
    Ok(agent::GuestDetails {
        kernel_release: d.kernel_release,
        memory_total_bytes: d.memory_total_bytes,
        agent_version: d.agent_version.to_string(),
        ..Default::default()
    })
}

type Reply<T> = ttrpc::Result<T>;

impl AgentService for AgentRpc {
    fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> Reply<agent::Empty> {
        let r = self.sandbox.create(&req.sandbox_id, &req.hostname);
        reply("CreateSandbox", r.map(|()| agent::Empty::new()))
    }

    fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> Reply<agent::Empty> {
        let r = self.sandbox.check_is_current(&req.sandbox_id).map(|()| {
            self.sandbox.forget();
            agent::Empty::new()
        });
        reply("DestroySandbox", r)
    }

    fn create_container(
        &self,
        _: &TtrpcContext,
        _: agent::CreateContainerRequest,
    ) -> Reply<agent::CreateContainerResponse> {
        reply(
            "CreateContainer",
            self.no_engine("CreateContainer")
                .map(|()| Default::default()),
        )
    }

    fn start_container(
        &self,
        _: &TtrpcContext,
        _: agent::StartContainerRequest,
    ) -> Reply<agent::Empty> {
        reply(
            "StartContainer",
            self.no_engine("StartContainer")
                .map(|()| Default::default()),
        )
    }

    fn exec_process(
        &self,
        _: &TtrpcContext,
        _: agent::ExecProcessRequest,
    ) -> Reply<agent::ExecProcessResponse> {
        reply(
            "ExecProcess",
            self.no_engine("ExecProcess").map(|()| Default::default()),
        )
    }

    fn signal_process(
        &self,
        _: &TtrpcContext,
        _: agent::SignalProcessRequest,
    ) -> Reply<agent::Empty> {
        reply(
            "SignalProcess",
            self.no_engine("SignalProcess").map(|()| Default::default()),
        )
    }

    fn wait_process(
        &self,
        _: &TtrpcContext,
        _: agent::WaitProcessRequest,
    ) -> Reply<agent::WaitProcessResponse> {
        reply(
            "WaitProcess",
            self.no_engine("WaitProcess").map(|()| Default::default()),
        )
    }

    fn write_stdin(
        &self,
        _: &TtrpcContext,
        _: agent::WriteStreamRequest,
    ) -> Reply<agent::WriteStreamResponse> {
        reply(
            "WriteStdin",
            self.no_engine("WriteStdin").map(|()| Default::default()),
        )
    }

    fn read_stdout(
        &self,
        _: &TtrpcContext,
        _: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        reply(
            "ReadStdout",
            self.no_engine("ReadStdout").map(|()| Default::default()),
        )
    }

    fn read_stderr(
        &self,
        _: &TtrpcContext,
        _: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        reply(
            "ReadStderr",
            self.no_engine("ReadStderr").map(|()| Default::default()),
        )
    }

    fn close_stdin(&self, _: &TtrpcContext, _: agent::CloseStdinRequest) -> Reply<agent::Empty> {
        reply(
            "CloseStdin",
            self.no_engine("CloseStdin").map(|()| Default::default()),
        )
    }

    fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        _: agent::TtyWinResizeRequest,
    ) -> Reply<agent::Empty> {
        reply(
            "TtyWinResize",
            self.no_engine("TtyWinResize").map(|()| Default::default()),
        )
    }

    fn stats_container(
        &self,
        _: &TtrpcContext,
        _: agent::StatsContainerRequest,
    ) -> Reply<agent::StatsContainerResponse> {
        reply(
            "StatsContainer",
            self.no_engine("StatsContainer")
                .map(|()| Default::default()),
        )
    }

    fn update_container(
        &self,
        _: &TtrpcContext,
        _: agent::UpdateContainerRequest,
    ) -> Reply<agent::Empty> {
        reply(
            "UpdateContainer",
            self.no_engine("UpdateContainer")
                .map(|()| Default::default()),
        )
    }

    fn remove_container(
        &self,
        _: &TtrpcContext,
        _: agent::RemoveContainerRequest,
    ) -> Reply<agent::Empty> {
        reply(
            "RemoveContainer",
            self.no_engine("RemoveContainer")
                .map(|()| Default::default()),
        )
    }

    fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: agent::GetOOMEventRequest,
    ) -> Reply<agent::OOMEvent> {
        reply(
            "GetOOMEvent",
            self.no_engine("GetOOMEvent").map(|()| Default::default()),
        )
    }

    fn list_processes(
        &self,
        _: &TtrpcContext,
        _: agent::ListProcessesRequest,
    ) -> Reply<agent::ListProcessesResponse> {
        reply(
            "ListProcesses",
            self.no_engine("ListProcesses").map(|()| Default::default()),
        )
    }

    fn check(&self, _: &TtrpcContext, _: agent::CheckRequest) -> Reply<agent::HealthCheckResponse> {
        let mut r = agent::HealthCheckResponse::new();
        r.status = ServingStatus::SERVING.into();
        Ok(r)
    }

    fn get_guest_details(
        &self,
        _: &TtrpcContext,
        _: agent::GetGuestDetailsRequest,
    ) -> Reply<agent::GuestDetails> {
        reply("GetGuestDetails", guest_details())
    }
}
