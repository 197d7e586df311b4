//! A real CRI client for the Kubernetes tests: k8s-cri's generated gRPC
//! client (CRI runtime.v1, the API kubelet speaks) over containerd's
//! socket, driven synchronously on a current-thread tokio runtime of its
//! own. The calls are kubelet's; the builders fill in what kubelet would
//! (metadata, log directories, the Linux security context) so the requests
//! containerd's CRI plugin sees are realistic.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take: RunPodSandbox boots a VM (kubelet gives
/// it 4 minutes; a cold boot here takes about one).
const CALL_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Cri {
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
}

/// What ExecSync returned.
#[derive(Debug)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

impl Cri {
    pub fn connect(socket: &Path) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime for the CRI client");
        let path = socket.to_path_buf();
        let channel = rt
            .block_on(async move {
                // The URI is a placeholder: every connection goes to the socket.
                Endpoint::try_from("http://[::1]:50051")
                    .unwrap()
                    .timeout(CALL_TIMEOUT)
                    .connect_with_connector(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            let s = tokio::net::UnixStream::connect(path).await?;
                            Ok::<_, std::io::Error>(TokioIo::new(s))
                        }
                    }))
                    .await
            })
            .expect("connecting to containerd's CRI socket");
        Self {
            rt,
            client: RuntimeServiceClient::new(channel),
        }
    }

    /// Runs one call on the client; a gRPC error comes back as its status.
    fn call<T, F>(
        &self,
        f: impl FnOnce(RuntimeServiceClient<Channel>) -> F,
    ) -> Result<T, tonic::Status>
    where
        F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let client = self.client.clone();
        self.rt.block_on(f(client)).map(tonic::Response::into_inner)
    }

    pub fn version(&self) -> Result<VersionResponse, tonic::Status> {
        self.call(|mut c| async move { c.version(VersionRequest::default()).await })
    }

    pub fn run_pod(
        &self,
        config: &PodSandboxConfig,
        handler: &str,
    ) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        self.call(|mut c| async move { c.run_pod_sandbox(req).await })
            .map(|r| r.pod_sandbox_id)
    }

    pub fn pod_status(&self, pod: &str) -> Result<PodSandboxStatus, tonic::Status> {
        let req = PodSandboxStatusRequest {
            pod_sandbox_id: pod.to_string(),
            verbose: false,
        };
        self.call(|mut c| async move { c.pod_sandbox_status(req).await })
            .map(|r| r.status.unwrap_or_default())
    }

    /// The pod's IP as the CNI reported it.
    pub fn pod_ip(&self, pod: &str) -> String {
        let status = self.pod_status(pod).expect("PodSandboxStatus");
        status
            .network
            .as_ref()
            .map(|n| n.ip.clone())
            .filter(|ip| !ip.is_empty())
            .unwrap_or_else(|| panic!("pod {pod} has no IP: {status:?}"))
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: &ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String, tonic::Status> {
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.to_string(),
            config: Some(config.clone()),
            sandbox_config: Some(pod_config.clone()),
        };
        self.call(|mut c| async move { c.create_container(req).await })
            .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = StartContainerRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move { c.start_container(req).await })
            .map(|_| ())
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.call(|mut c| async move { c.container_status(req).await })
            .map(|r| r.status.unwrap_or_default())
    }

    pub fn exec_sync(
        &self,
        id: &str,
        cmd: &[&str],
        timeout_secs: i64,
    ) -> Result<ExecResult, tonic::Status> {
        let req = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout_secs,
        };
        self.call(|mut c| async move { c.exec_sync(req).await })
            .map(|r| ExecResult {
                stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
                exit_code: r.exit_code,
            })
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats, tonic::Status> {
        let req = ContainerStatsRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move { c.container_stats(req).await })
            .map(|r| r.stats.unwrap_or_default())
    }

    pub fn pod_stats(&self, pod: &str) -> Result<PodSandboxStats, tonic::Status> {
        let req = PodSandboxStatsRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.call(|mut c| async move { c.pod_sandbox_stats(req).await })
            .map(|r| r.stats.unwrap_or_default())
    }

    pub fn stop_container(&self, id: &str, timeout_secs: i64) -> Result<(), tonic::Status> {
        let req = StopContainerRequest {
            container_id: id.to_string(),
            timeout: timeout_secs,
        };
        self.call(|mut c| async move { c.stop_container(req).await })
            .map(|_| ())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.call(|mut c| async move { c.remove_container(req).await })
            .map(|_| ())
    }

    pub fn stop_pod(&self, pod: &str) -> Result<(), tonic::Status> {
        let req = StopPodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.call(|mut c| async move { c.stop_pod_sandbox(req).await })
            .map(|_| ())
    }

    pub fn remove_pod(&self, pod: &str) -> Result<(), tonic::Status> {
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: pod.to_string(),
        };
        self.call(|mut c| async move { c.remove_pod_sandbox(req).await })
            .map(|_| ())
    }

    /// Stops and removes every pod (best effort): a failed test must not
    /// leave pods behind for containerd-env's stop to find.
    pub fn remove_all_pods(&self) {
        let pods = self
            .call(|mut c| async move { c.list_pod_sandbox(ListPodSandboxRequest::default()).await })
            .map(|r| r.items)
            .unwrap_or_default();
        for p in pods {
            let _ = self.stop_pod(&p.id);
            let _ = self.remove_pod(&p.id);
        }
    }
}

/// A pod's config as kubelet would send it: metadata, a log directory
/// (created here), the DNS config, hostname, and the cgroupfs parent.
pub fn pod_config(name: &str, log_dir: &Path) -> PodSandboxConfig {
    std::fs::create_dir_all(log_dir).unwrap();
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: format!("uid-{name}-{}", std::process::id()),
            namespace: "default".into(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: log_dir.display().to_string(),
        dns_config: Some(DnsConfig {
            servers: vec!["198.18.255.53".into()],
            searches: vec!["default.svc.cluster.local".into()],
            options: vec!["ndots:5".into()],
        }),
        labels: HashMap::from([("app".to_string(), name.to_string())]),
        linux: Some(LinuxPodSandboxConfig {
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: Some(NamespaceOption::default()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A container's config as kubelet would send it; its log goes to
/// `<pod log dir>/<name>/0.log`.
pub fn container_config(name: &str, image: &str, command: &[&str]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image.to_string(),
            ..Default::default()
        }),
        command: command.iter().map(|s| s.to_string()).collect(),
        log_path: format!("{name}/0.log"),
        linux: Some(LinuxContainerConfig {
            security_context: Some(LinuxContainerSecurityContext {
                namespace_options: Some(NamespaceOption::default()),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// `<log dir>/<name>/0.log` of a container made by `container_config`.
pub fn log_file(log_dir: &Path, name: &str) -> PathBuf {
    log_dir.join(name).join("0.log")
}
