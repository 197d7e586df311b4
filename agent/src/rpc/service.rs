//! `AgentService` for husk-agent: each method hands its request to the
//! sandbox state or to `containers` (which checks it and calls the engine)
//! and turns the outcome into a reply through `status::reply`, which logs
//! failures. Container RPCs need a sandbox (CreateSandbox) first.

use husk_agent_protocol::agent::{self, health_check_response::ServingStatus};
use husk_agent_protocol::agent_ttrpc::AgentService;
use husk_agent_protocol::ttrpc::{self, TtrpcContext};

use super::containers::Containers;
use super::sandbox::{GuestScope, Sandbox};
use super::status::{reply, RpcError};
use crate::container::ContainerManager;
use crate::guest_details;

/// The service state shared by all ttrpc worker threads.
pub struct AgentRpc {
    sandbox: Sandbox,
    containers: Containers,
}

impl AgentRpc {
    pub fn new(scope: GuestScope, engine: ContainerManager) -> Self {
        AgentRpc {
            sandbox: Sandbox::new(scope),
            containers: Containers::new(engine),
        }
    }

    fn containers(&self) -> Result<&Containers, RpcError> {
        self.sandbox.require()?;
        Ok(&self.containers)
    }

    fn destroy_sandbox(&self, sandbox_id: &str) -> Result<(), RpcError> {
        self.sandbox.check_is_current(sandbox_id)?;
        // On failure the sandbox stays, so the host can retry.
        self.containers.remove_all()?;
        self.sandbox.forget();
        Ok(())
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

fn empty(r: Result<(), RpcError>) -> Result<agent::Empty, RpcError> {
    r.map(|()| agent::Empty::new())
}

impl AgentService for AgentRpc {
    fn create_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::CreateSandboxRequest,
    ) -> Reply<agent::Empty> {
        let r = self
            .sandbox
            .create(&req.sandbox_id, &req.hostname, &req.shared_fs_tag);
        reply("CreateSandbox", empty(r))
    }

    fn restored(&self, _: &TtrpcContext, req: agent::RestoredRequest) -> Reply<agent::Empty> {
        reply(
            "Restored",
            empty(super::restored::restored(self.sandbox.scope(), &req)),
        )
    }

    fn destroy_sandbox(
        &self,
        _: &TtrpcContext,
        req: agent::DestroySandboxRequest,
    ) -> Reply<agent::Empty> {
        reply(
            "DestroySandbox",
            empty(self.destroy_sandbox(&req.sandbox_id)),
        )
    }

    fn create_container(
        &self,
        _: &TtrpcContext,
        req: agent::CreateContainerRequest,
    ) -> Reply<agent::CreateContainerResponse> {
        let r = self.containers().and_then(|c| c.create(req));
        reply("CreateContainer", r)
    }

    fn start_container(
        &self,
        _: &TtrpcContext,
        req: agent::StartContainerRequest,
    ) -> Reply<agent::Empty> {
        let r = self.containers().and_then(|c| c.start(&req));
        reply("StartContainer", empty(r))
    }

    fn exec_process(
        &self,
        _: &TtrpcContext,
        req: agent::ExecProcessRequest,
    ) -> Reply<agent::ExecProcessResponse> {
        reply("ExecProcess", self.containers().and_then(|c| c.exec(&req)))
    }

    fn signal_process(
        &self,
        _: &TtrpcContext,
        req: agent::SignalProcessRequest,
    ) -> Reply<agent::Empty> {
        let r = self.containers().and_then(|c| c.signal(&req));
        reply("SignalProcess", empty(r))
    }

    fn wait_process(
        &self,
        _: &TtrpcContext,
        req: agent::WaitProcessRequest,
    ) -> Reply<agent::WaitProcessResponse> {
        reply("WaitProcess", self.containers().and_then(|c| c.wait(&req)))
    }

    fn write_stdin(
        &self,
        _: &TtrpcContext,
        req: agent::WriteStreamRequest,
    ) -> Reply<agent::WriteStreamResponse> {
        let r = self.containers().and_then(|c| c.write_stdin(&req));
        reply("WriteStdin", r)
    }

    fn read_stdout(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        reply(
            "ReadStdout",
            self.containers().and_then(|c| c.read(&req, false)),
        )
    }

    fn read_stderr(
        &self,
        _: &TtrpcContext,
        req: agent::ReadStreamRequest,
    ) -> Reply<agent::ReadStreamResponse> {
        reply(
            "ReadStderr",
            self.containers().and_then(|c| c.read(&req, true)),
        )
    }

    fn close_stdin(&self, _: &TtrpcContext, req: agent::CloseStdinRequest) -> Reply<agent::Empty> {
        let r = self.containers().and_then(|c| c.close_stdin(&req));
        reply("CloseStdin", empty(r))
    }

    fn tty_win_resize(
        &self,
        _: &TtrpcContext,
        req: agent::TtyWinResizeRequest,
    ) -> Reply<agent::Empty> {
        let r = self.containers().and_then(|c| c.resize_tty(&req));
        reply("TtyWinResize", empty(r))
    }

    fn stats_container(
        &self,
        _: &TtrpcContext,
        req: agent::StatsContainerRequest,
    ) -> Reply<agent::StatsContainerResponse> {
        reply(
            "StatsContainer",
            self.containers().and_then(|c| c.stats(&req)),
        )
    }

    fn update_container(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateContainerRequest,
    ) -> Reply<agent::Empty> {
        let r = self.containers().and_then(|c| c.update(&req));
        reply("UpdateContainer", empty(r))
    }

    fn remove_container(
        &self,
        _: &TtrpcContext,
        req: agent::RemoveContainerRequest,
    ) -> Reply<agent::Empty> {
        let r = self.containers().and_then(|c| c.remove(&req));
        reply("RemoveContainer", empty(r))
    }

    fn pause_container(
        &self,
        _: &TtrpcContext,
        req: agent::PauseContainerRequest,
    ) -> Reply<agent::Empty> {
        let r = self
            .containers()
            .and_then(|c| c.set_paused(&req.container_id, true));
        reply("PauseContainer", empty(r))
    }

    fn resume_container(
        &self,
        _: &TtrpcContext,
        req: agent::ResumeContainerRequest,
    ) -> Reply<agent::Empty> {
        let r = self
            .containers()
            .and_then(|c| c.set_paused(&req.container_id, false));
        reply("ResumeContainer", empty(r))
    }

    fn delete_process(
        &self,
        _: &TtrpcContext,
        req: agent::DeleteProcessRequest,
    ) -> Reply<agent::Empty> {
        let r = self.containers().and_then(|c| c.delete_process(&req));
        reply("DeleteProcess", empty(r))
    }

    fn get_oom_event(
        &self,
        _: &TtrpcContext,
        _: agent::GetOOMEventRequest,
    ) -> Reply<agent::OOMEvent> {
        let r = self.containers().and_then(Containers::next_oom_event);
        reply("GetOOMEvent", r)
    }

    fn list_processes(
        &self,
        _: &TtrpcContext,
        req: agent::ListProcessesRequest,
    ) -> Reply<agent::ListProcessesResponse> {
        let r = self.containers().and_then(|c| c.list_processes(&req));
        reply("ListProcesses", r)
    }

    fn update_interface(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateInterfaceRequest,
    ) -> Reply<agent::Empty> {
        let r = super::network::update_interface(self.sandbox.scope(), &req);
        reply("UpdateInterface", empty(r))
    }

    fn update_routes(
        &self,
        _: &TtrpcContext,
        req: agent::UpdateRoutesRequest,
    ) -> Reply<agent::Empty> {
        let r = super::network::update_routes(self.sandbox.scope(), &req);
        reply("UpdateRoutes", empty(r))
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
