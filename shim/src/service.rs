//! The shim's life as containerd drives it: `start` (spawn the long-lived
//! shim server, one per sandbox), `delete` (clean up after a shim that died)
//! and serving the Task API until Shutdown.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::util::{read_spec, write_str_to_file};
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::protos::protobuf;
use containerd_shim::{api, Config, Flags, StartOpts};

use crate::task::TaskService;
use okvm::pod::Role;

/// Where the shim keeps okvm's container state, per containerd namespace:
/// apart from the `okvm` CLI's /run/okvm, so `okvm list` shows only its own.
pub const STATE_ROOT: &str = "/run/okvm-shim";

pub fn state_root(namespace: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(namespace)
}

pub struct OkvmShim {
    id: String,
    namespace: String,
    exit: Arc<ExitSignal>,
}

#[async_trait]
impl Shim for OkvmShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        OkvmShim {
            id: args.id.clone(),
            namespace: args.namespace.clone(),
            exit: Arc::new(ExitSignal::default()),
        }
    }

    /// One shim server per sandbox: a pod's containers all reach the shim
    /// its sandbox container started, which owns the pod's VM.
    async fn start_shim(&mut self, opts: StartOpts) -> containerd_shim::Result<String> {
        let mut grouping = opts.id.clone();
        if let Ok(spec) = read_spec("").await {
            if let Some(annotations) = spec.annotations() {
                let annotations = annotations.clone().into_iter().collect();
                let role = Role::from_annotations(&annotations)
                    .map_err(|e| containerd_shim::Error::InvalidArgument(e.to_string()))?;
                if let Some(sandbox_id) = role.sandbox_id() {
                    grouping = sandbox_id.to_string();
                }
            }
        }
        let address = spawn(opts, &grouping, Vec::new()).await?;
        write_str_to_file("address", &address).await?;
        Ok(address)
    }

    /// containerd runs `delete` in the bundle after the shim server is gone
    /// (killed, crashed): whatever okvm left of the container goes now.
    async fn delete_shim(&mut self) -> containerd_shim::Result<api::DeleteResponse> {
        let ctx = okvm::cli::Context::new(Some(state_root(&self.namespace)));
        let id = self.id.clone();
        let bundle = std::env::current_dir().unwrap_or_default();
        let _ = tokio::task::spawn_blocking(move || {
            if let Err(e) = okvm::cli::delete::delete(&ctx, &id, true) {
                log::warn!("container {id}: {e:#}");
            }
            crate::task::unmount_rootfs(&bundle);
        })
        .await;
        Ok(api::DeleteResponse {
            // As the runc shim reports a container it had to kill.
            exit_status: 128 + libc::SIGKILL as u32,
            exited_at: protobuf::MessageField::some(containerd_shim::util::timestamp()?),
            ..Default::default()
        })
    }

    async fn wait(&mut self) {
        self.exit.wait().await;
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> TaskService {
        TaskService::new(
            okvm::cli::Context::new(Some(state_root(&self.namespace))),
            self.namespace.clone(),
            self.exit.clone(),
            publisher,
        )
        .await
    }
}
