//! The runtime's client of a sandbox's agent, every call timed.
//!
//! `AgentClient` is ttrpc's async client of the agent service made
//! blocking: its calls run on the agent I/O thread (`agent_io`), with the
//! generated sync client's signatures. `Agent` wraps it and records each
//! call's duration and outcome in the sandbox's `AgentMetrics` (the agent
//! round-trip histogram of the metrics endpoint). One wrapper instead of
//! timing code at each call site, and a method the agent gains must be
//! added to the list below before the runtime can call it, so none goes
//! untimed. Calls that wait for the guest (a process's exit, its output,
//! an OOM kill) are marked `waits`: counted, but not taken as round trips.

use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Instant;

use husk_agent_protocol::agent;
use husk_agent_protocol::agent_ttrpc_async::AgentServiceClient;
use husk_agent_protocol::ttrpc;
use husk_agent_protocol::ttrpc::r#async::transport::Socket;
use tokio::runtime::Handle;

use crate::metrics::agent::AgentMetrics;

/// A blocking client of an agent (cheap to clone; calls may run
/// concurrently). Not for use on the agent I/O thread itself.
#[derive(Clone)]
pub struct AgentClient {
    client: AgentServiceClient,
    io: Handle,
}

impl AgentClient {
    /// A client over `stream`, a connection to the agent's ttrpc server.
    /// The connection closes when the last clone is dropped.
    pub fn over(stream: UnixStream) -> std::io::Result<Self> {
        let io = crate::agent_io::handle()?;
        // Registering the socket with the reactor and spawning the
        // connection's tasks need the runtime's context.
        let _context = io.enter();
        let socket = Socket::try_from(stream)?;
        let client = AgentServiceClient::new(ttrpc::r#async::Client::new(socket));
        Ok(Self { client, io })
    }
}

/// A sandbox's agent client (cheap to clone; calls may run concurrently).
#[derive(Clone)]
pub struct Agent {
    client: AgentClient,
    metrics: Arc<AgentMetrics>,
}

impl Agent {
    pub fn new(client: AgentClient, metrics: Arc<AgentMetrics>) -> Self {
        Self { client, metrics }
    }

    pub fn metrics(&self) -> &Arc<AgentMetrics> {
        &self.metrics
    }
}

macro_rules! agent_calls {
    ($($kind:ident $method:ident($req:ident) -> $resp:ident;)*) => {
        impl AgentClient {
            $(
                pub fn $method(
                    &self,
                    ctx: ttrpc::context::Context,
                    req: &agent::$req,
                ) -> ttrpc::Result<agent::$resp> {
                    self.io.block_on(self.client.$method(ctx, req))
                }
            )*
        }

        impl Agent {
            $(
                pub fn $method(
                    &self,
                    ctx: ttrpc::context::Context,
                    req: &agent::$req,
                ) -> ttrpc::Result<agent::$resp> {
                    let started = Instant::now();
                    let result = self.client.$method(ctx, req);
                    // One reading for the log and the metrics, so they agree.
                    let (ok, took) = (result.is_ok(), started.elapsed());
                    tracing::trace!(
                        call = stringify!($method),
                        ok,
                        took_ms = took.as_secs_f64() * 1e3,
                        "agent call"
                    );
                    self.metrics.record(
                        stringify!($method),
                        ok,
                        took,
                        agent_calls!(@round_trip $kind),
                    );
                    result
                }
            )*
        }
    };
    (@round_trip call) => { true };
    (@round_trip waits) => { false };
}

agent_calls! {
    call create_sandbox(CreateSandboxRequest) -> Empty;
    call destroy_sandbox(DestroySandboxRequest) -> Empty;
    call restored(RestoredRequest) -> Empty;
    call create_container(CreateContainerRequest) -> CreateContainerResponse;
    call start_container(StartContainerRequest) -> Empty;
    call exec_process(ExecProcessRequest) -> ExecProcessResponse;
    call signal_process(SignalProcessRequest) -> Empty;
    waits wait_process(WaitProcessRequest) -> WaitProcessResponse;
    call write_stdin(WriteStreamRequest) -> WriteStreamResponse;
    waits read_stdout(ReadStreamRequest) -> ReadStreamResponse;
    waits read_stderr(ReadStreamRequest) -> ReadStreamResponse;
    call close_stdin(CloseStdinRequest) -> Empty;
    call tty_win_resize(TtyWinResizeRequest) -> Empty;
    call stats_container(StatsContainerRequest) -> StatsContainerResponse;
    call update_container(UpdateContainerRequest) -> Empty;
    call remove_container(RemoveContainerRequest) -> Empty;
    call pause_container(PauseContainerRequest) -> Empty;
    call resume_container(ResumeContainerRequest) -> Empty;
    call delete_process(DeleteProcessRequest) -> Empty;
    waits get_oom_event(GetOOMEventRequest) -> OOMEvent;
    call list_processes(ListProcessesRequest) -> ListProcessesResponse;
    call update_interface(UpdateInterfaceRequest) -> Empty;
    call update_routes(UpdateRoutesRequest) -> Empty;
    call check(CheckRequest) -> HealthCheckResponse;
    call get_guest_details(GetGuestDetailsRequest) -> GuestDetails;
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_agent_protocol::agent_ttrpc::{create_agent_service, AgentService};

    /// An agent that answers Check and nothing else.
    struct CheckOnly;

    impl AgentService for CheckOnly {
        fn check(
            &self,
            _ctx: &ttrpc::TtrpcContext,
            _: agent::CheckRequest,
        ) -> ttrpc::Result<agent::HealthCheckResponse> {
            Ok(agent::HealthCheckResponse::default())
        }
    }

    #[test]
    fn every_call_is_counted_and_round_trips_are_timed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.sock");
        let address = format!("unix://{}", path.display());
        let mut server = ttrpc::Server::new()
            .bind(&address)
            .unwrap()
            .register_service(create_agent_service(Arc::new(CheckOnly)));
        server.start().unwrap();
        let client = AgentClient::over(UnixStream::connect(&path).unwrap()).unwrap();
        let metrics = Arc::new(AgentMetrics::default());
        let agent = Agent::new(client, metrics.clone());
        let ctx = || ttrpc::context::with_timeout(10_000_000_000);
        agent.check(ctx(), &agent::CheckRequest::new()).unwrap();
        agent.check(ctx(), &agent::CheckRequest::new()).unwrap();
        agent
            .wait_process(ctx(), &agent::WaitProcessRequest::new())
            .unwrap_err();
        let mut w = crate::metrics::text::TextWriter::new();
        metrics.write(&mut w);
        let e = crate::metrics::parse(&w.finish()).unwrap();
        assert_eq!(
            e.value(
                "husk_agent_rpcs_total",
                &[("method", "check"), ("result", "ok")]
            ),
            Some(2.0)
        );
        assert_eq!(
            e.value(
                "husk_agent_rpcs_total",
                &[("method", "wait_process"), ("result", "error")]
            ),
            Some(1.0)
        );
        assert_eq!(
            e.value("husk_agent_rpc_duration_seconds_count", &[]),
            Some(2.0),
            "the wait is not a round trip"
        );
        server.shutdown();
    }

    /// The connection goes with the last clone of its client, and not
    /// before: the agent sees end of file then.
    #[test]
    fn a_client_closes_its_connection_when_dropped() {
        use std::io::Read;
        let (ours, mut agents) = UnixStream::pair().unwrap();
        let client = AgentClient::over(ours).unwrap();
        let clone = client.clone();
        drop(client);
        agents
            .set_read_timeout(Some(std::time::Duration::from_millis(300)))
            .unwrap();
        let mut byte = [0u8; 1];
        let open = agents.read(&mut byte).unwrap_err();
        assert_eq!(open.kind(), std::io::ErrorKind::WouldBlock, "{open}");
        drop(clone);
        agents
            .set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        assert_eq!(agents.read(&mut byte).unwrap(), 0, "no end of file");
    }
}
