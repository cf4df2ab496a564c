//! The shim's errors and the gRPC status code each one travels back to
//! containerd with.
//!
//! containerd turns the status code of a failed ttrpc call back into its own
//! error kinds (errdefs), and decides on that alone whether, for example, a
//! missing task is "not found" (fine during cleanup) or a real failure. So the
//! code matters more than the message, and each variant maps to exactly one.

use containerd_shim_protos::ttrpc::{self, Code};

use okvm::pod::RoleError;

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("container {id}: not found")]
    ContainerNotFound { id: String },
    #[error("exec {exec_id} in container {container_id}: not found")]
    ExecNotFound {
        container_id: String,
        exec_id: String,
    },
    #[error("container {id}: already exists")]
    ContainerExists { id: String },
    #[error("exec {exec_id} in container {container_id}: already exists")]
    ExecExists {
        container_id: String,
        exec_id: String,
    },
    #[error("invalid {field}: {reason}")]
    InvalidRequest { field: &'static str, reason: String },
    #[error("invalid pod annotations: {0}")]
    Annotations(#[from] RoleError),
    #[error("cannot {action} {what} while it is {state}")]
    WrongState {
        what: String,
        action: &'static str,
        state: &'static str,
    },
    #[error("process already finished")]
    Finished,
    #[error("{what} is not supported by okvm: {why}")]
    Unimplemented {
        what: &'static str,
        why: &'static str,
    },
    /// What the runtime library reported; its code comes from its own error
    /// kinds where it has one.
    #[error("{0:#}")]
    Runtime(anyhow::Error),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ShimError {
    /// The status code containerd should see for this error.
    pub fn code(&self) -> Code {
        match self {
            ShimError::ContainerNotFound { .. }
            | ShimError::ExecNotFound { .. }
            | ShimError::Finished => Code::NOT_FOUND,
            ShimError::ContainerExists { .. } | ShimError::ExecExists { .. } => {
                Code::ALREADY_EXISTS
            }
            ShimError::InvalidRequest { .. } | ShimError::Annotations(_) => Code::INVALID_ARGUMENT,
            ShimError::WrongState { .. } => Code::FAILED_PRECONDITION,
            ShimError::Unimplemented { .. } => Code::UNIMPLEMENTED,
            ShimError::Runtime(e) => runtime_code(e),
            ShimError::Internal(_) => Code::INTERNAL,
        }
    }
}

fn runtime_code(e: &anyhow::Error) -> Code {
    use okvm::state::Error;
    // The guest did not answer in time: containerd may retry, or give up.
    if okvm::guest::timed_out(e).is_some() {
        return Code::DEADLINE_EXCEEDED;
    }
    // The host's policy refused what the pod or container asks for: the
    // same request will fail again until the request (or the policy) changes.
    if let Some(okvm::bundle::Error::Refused(_)) = e.downcast_ref() {
        return Code::INVALID_ARGUMENT;
    }
    match e.downcast_ref::<Error>() {
        Some(Error::NotFound(_)) => Code::NOT_FOUND,
        Some(Error::Exists(_)) => Code::ALREADY_EXISTS,
        Some(Error::BadId(_)) => Code::INVALID_ARGUMENT,
        Some(Error::Transition { .. }) => Code::FAILED_PRECONDITION,
        // A failure to boot, a guest that does not answer, a bad image: the
        // request may succeed once the cause is fixed.
        _ => Code::UNKNOWN,
    }
}

impl From<anyhow::Error> for ShimError {
    fn from(e: anyhow::Error) -> Self {
        ShimError::Runtime(e)
    }
}

impl From<ShimError> for ttrpc::Error {
    fn from(e: ShimError) -> Self {
        ttrpc::Error::RpcStatus(ttrpc::get_status(e.code(), e.to_string()))
    }
}

pub type Result<T> = std::result::Result<T, ShimError>;

#[cfg(test)]
mod tests {
    use super::*;

    fn status(e: ShimError) -> (Code, String) {
        match ttrpc::Error::from(e) {
            ttrpc::Error::RpcStatus(s) => (s.code(), s.message().to_string()),
            other => panic!("not a status: {other:?}"),
        }
    }

    #[test]
    fn each_error_travels_with_its_code_and_message() {
        let cases: Vec<(ShimError, Code, &str)> = vec![
            (
                ShimError::ContainerNotFound { id: "c1".into() },
                Code::NOT_FOUND,
                "container c1: not found",
            ),
            (
                ShimError::ExecNotFound {
                    container_id: "c1".into(),
                    exec_id: "e1".into(),
                },
                Code::NOT_FOUND,
                "exec e1 in container c1: not found",
            ),
            (
                ShimError::Finished,
                Code::NOT_FOUND,
                "process already finished",
            ),
            (
                ShimError::ContainerExists { id: "c1".into() },
                Code::ALREADY_EXISTS,
                "container c1: already exists",
            ),
            (
                ShimError::InvalidRequest {
                    field: "stdin",
                    reason: "not a fifo".into(),
                },
                Code::INVALID_ARGUMENT,
                "invalid stdin: not a fifo",
            ),
            (
                ShimError::WrongState {
                    what: "container c1".into(),
                    action: "delete",
                    state: "running",
                },
                Code::FAILED_PRECONDITION,
                "cannot delete container c1 while it is running",
            ),
            (
                ShimError::Unimplemented {
                    what: "checkpoint",
                    why: "VM snapshots are not implemented",
                },
                Code::UNIMPLEMENTED,
                "checkpoint is not supported by okvm: VM snapshots are not implemented",
            ),
            (
                ShimError::Internal("bug".into()),
                Code::INTERNAL,
                "internal error: bug",
            ),
        ];
        for (err, code, message) in cases {
            assert_eq!(status(err), (code, message.to_string()));
        }
    }

    #[test]
    fn runtime_errors_keep_the_library_error_kind() {
        let not_found = anyhow::Error::from(okvm::state::Error::NotFound("c9".into()));
        assert_eq!(
            status(not_found.into()),
            (Code::NOT_FOUND, "container c9 does not exist".to_string())
        );
        let exists = anyhow::Error::from(okvm::state::Error::Exists("c9".into()))
            .context("cannot create c9");
        assert_eq!(ShimError::from(exists).code(), Code::ALREADY_EXISTS);
        let refused = anyhow::Error::from(okvm::bundle::Error::Refused(
            okvm::config::Refusal::Annotation {
                key: "io.okvm.network".into(),
                config: "/etc/okvm/config.toml".into(),
            },
        ));
        assert_eq!(
            status(refused.into()),
            (
                Code::INVALID_ARGUMENT,
                "annotation io.okvm.network is not allowed on this host: its administrator \
                 allows io.okvm.* annotations with enable_annotations in /etc/okvm/config.toml"
                    .to_string()
            )
        );
        let other = anyhow::anyhow!("the guest was not ready within 120 s");
        assert_eq!(ShimError::from(other).code(), Code::UNKNOWN);
    }

    #[test]
    fn a_guest_that_missed_its_deadline_is_deadline_exceeded() {
        use okvm::guest::{Op, TimedOut};
        let late = TimedOut {
            op: Op::Signal,
            limit: std::time::Duration::from_secs(10),
        };
        // As the library returns it from a call...
        let e = anyhow::Error::from(okvm::guest::Error::Deadline(late.clone()))
            .context("cannot end container c1 in its pod's VM");
        assert_eq!(
            status(e.into()),
            (
                Code::DEADLINE_EXCEEDED,
                "cannot end container c1 in its pod's VM: the guest did not answer `kill` within 10 s"
                    .to_string()
            )
        );
        // ...and as a helper process (an exec proxy) reported it.
        let outcome = okvm::sandbox::Outcome {
            error: Some(late.to_string()),
            guest_pid: None,
            timed_out: Some(late),
        };
        let e = outcome.error().unwrap();
        assert_eq!(
            status(e.into()),
            (
                Code::DEADLINE_EXCEEDED,
                "the guest did not answer `kill` within 10 s".to_string()
            )
        );
    }
}
