//! A small blocking client for the Kubernetes CRI (v1), the API kubelet drives
//! container runtimes through and containerd's CRI plugin serves on
//! containerd's own socket. The CRI suite (tests/cri.rs) runs pods with it, call
//! for call as kubelet does.
//!
//! gRPC (tonic, with the `k8s-cri` crate's generated types, re-exported as
//! [`api`]) over the Unix socket, on a current-thread tokio runtime of the
//! client's own, so that tests stay plain synchronous code.

use std::future::Future;
use std::path::Path;
use std::time::{Duration, Instant};

pub use k8s_cri::v1 as api;

use api::image_service_client::ImageServiceClient;
use api::runtime_service_client::RuntimeServiceClient;
use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

/// containerd's socket, on which its CRI plugin serves.
pub const CONTAINERD_SOCKET: &str = "/run/containerd/containerd.sock";

/// The longest any one call may take (a pod sandbox boots a VM under okvm).
const CALL_LIMIT: Duration = Duration::from_secs(300);

/// What a call failed with: the gRPC status containerd answered.
pub type Result<T> = std::result::Result<T, tonic::Status>;

/// What ExecSync returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecResult {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
}

/// A connection to a CRI runtime and image service.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connects to the CRI services on the Unix socket `socket`.
    pub fn connect(socket: impl AsRef<Path>) -> std::io::Result<Cri> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let socket = socket.as_ref().to_path_buf();
        let connector = tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        });
        // gRPC wants an http URI; the connector above ignores it.
        let channel = rt
            .block_on(
                Endpoint::from_static("http://cri.invalid")
                    .timeout(CALL_LIMIT)
                    .connect_with_connector(connector),
            )
            .map_err(std::io::Error::other)?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    fn call<T>(
        &self,
        request: impl Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        self.rt.block_on(request).map(tonic::Response::into_inner)
    }

    /// Waits until the runtime reports itself ready (the CRI plugin answers
    /// "not initialized yet" for a moment after containerd's socket appears):
    /// the last status, or the last error once `limit` has passed.
    pub fn wait_ready(&self, limit: Duration) -> Result<api::RuntimeStatus> {
        let deadline = Instant::now() + limit;
        loop {
            let status = self
                .call(
                    self.runtime
                        .clone()
                        .status(api::StatusRequest { verbose: false }),
                )
                .map(|r| r.status.unwrap_or_default());
            let ready = matches!(&status, Ok(s) if s.conditions.iter().all(|c| c.status));
            if ready || Instant::now() > deadline {
                return status;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn version(&self) -> Result<api::VersionResponse> {
        self.call(self.runtime.clone().version(api::VersionRequest {
            version: "v1".into(),
        }))
    }

    /// The image `image` (a name or an id) as the runtime has it, or None when
    /// it has not (kubelet would then pull it).
    pub fn image_status(&self, image: &str) -> Result<Option<api::Image>> {
        let request = api::ImageStatusRequest {
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            verbose: false,
        };
        self.call(self.images.clone().image_status(request))
            .map(|r| r.image)
    }

    /// Starts a pod sandbox on runtime handler `handler` ("" is the default
    /// runtime): its id.
    pub fn run_pod_sandbox(&self, config: &api::PodSandboxConfig, handler: &str) -> Result<String> {
        let request = api::RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.into(),
        };
        self.call(self.runtime.clone().run_pod_sandbox(request))
            .map(|r| r.pod_sandbox_id)
    }

    /// The sandbox's status, with the runtime's verbose information.
    pub fn pod_sandbox_status(&self, id: &str) -> Result<api::PodSandboxStatusResponse> {
        self.call(
            self.runtime
                .clone()
                .pod_sandbox_status(api::PodSandboxStatusRequest {
                    pod_sandbox_id: id.into(),
                    verbose: true,
                }),
        )
    }

    pub fn stop_pod_sandbox(&self, id: &str) -> Result<()> {
        self.call(
            self.runtime
                .clone()
                .stop_pod_sandbox(api::StopPodSandboxRequest {
                    pod_sandbox_id: id.into(),
                }),
        )
        .map(drop)
    }

    pub fn remove_pod_sandbox(&self, id: &str) -> Result<()> {
        self.call(
            self.runtime
                .clone()
                .remove_pod_sandbox(api::RemovePodSandboxRequest {
                    pod_sandbox_id: id.into(),
                }),
        )
        .map(drop)
    }

    /// Every pod sandbox the runtime knows.
    pub fn list_pod_sandbox(&self) -> Result<Vec<api::PodSandbox>> {
        self.call(
            self.runtime
                .clone()
                .list_pod_sandbox(api::ListPodSandboxRequest { filter: None }),
        )
        .map(|r| r.items)
    }

    /// Creates a container in pod sandbox `pod` (whose configuration
    /// `sandbox` is, as kubelet passes it again): its id.
    pub fn create_container(
        &self,
        pod: &str,
        config: &api::ContainerConfig,
        sandbox: &api::PodSandboxConfig,
    ) -> Result<String> {
        let request = api::CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config.clone()),
            sandbox_config: Some(sandbox.clone()),
        };
        self.call(self.runtime.clone().create_container(request))
            .map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        self.call(
            self.runtime
                .clone()
                .start_container(api::StartContainerRequest {
                    container_id: id.into(),
                }),
        )
        .map(drop)
    }

    /// Runs `cmd` in container `id` to its end (or `timeout`): its output and
    /// exit code.
    pub fn exec_sync(&self, id: &str, cmd: &[&str], timeout: Duration) -> Result<ExecResult> {
        let request = api::ExecSyncRequest {
            container_id: id.into(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: timeout.as_secs().max(1) as i64,
        };
        self.call(self.runtime.clone().exec_sync(request))
            .map(|r| ExecResult {
                stdout: String::from_utf8_lossy(&r.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&r.stderr).into_owned(),
                exit_code: r.exit_code,
            })
    }

    /// The container's status, with the runtime's verbose information.
    pub fn container_status(&self, id: &str) -> Result<api::ContainerStatusResponse> {
        self.call(
            self.runtime
                .clone()
                .container_status(api::ContainerStatusRequest {
                    container_id: id.into(),
                    verbose: true,
                }),
        )
    }

    /// Stops container `id`: SIGTERM (or the image's stop signal), then
    /// SIGKILL after `timeout`.
    pub fn stop_container(&self, id: &str, timeout: Duration) -> Result<()> {
        self.call(
            self.runtime
                .clone()
                .stop_container(api::StopContainerRequest {
                    container_id: id.into(),
                    timeout: timeout.as_secs() as i64,
                }),
        )
        .map(drop)
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.call(
            self.runtime
                .clone()
                .remove_container(api::RemoveContainerRequest {
                    container_id: id.into(),
                }),
        )
        .map(drop)
    }

    /// Every container the runtime knows.
    pub fn list_containers(&self) -> Result<Vec<api::Container>> {
        self.call(
            self.runtime
                .clone()
                .list_containers(api::ListContainersRequest { filter: None }),
        )
        .map(|r| r.containers)
    }
}
