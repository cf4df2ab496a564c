//! The shim's errors and the gRPC status code each one travels back to
//! containerd with.
//!
//! containerd turns the status code of a failed ttrpc call back into its own
//! error kinds (errdefs), and decides on that alone whether, for example, a
//! missing task is "not found" (fine during cleanup) or a real failure. So the
//! code matters more than the message, and each variant maps to exactly one.

use std::fmt;
use std::io;

use crate::sandbox::RoleError;

/// gRPC status codes, with their wire values. Local on purpose: the ttrpc
/// crate (and its protobuf stack) only arrives with the real Task service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl Code {
    const ALL: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// The numeric value sent on the wire.
    pub fn value(self) -> i32 {
        self as i32
    }

    /// The code for a wire value; values outside 0..=16 are `Unknown`, as
    /// gRPC itself treats them.
    pub fn from_value(value: i32) -> Code {
        usize::try_from(value)
            .ok()
            .and_then(|i| Code::ALL.get(i).copied())
            .unwrap_or(Code::Unknown)
    }

    /// The canonical name, as gRPC tools print it.
    pub fn name(self) -> &'static str {
        match self {
            Code::Ok => "OK",
            Code::Cancelled => "CANCELLED",
            Code::Unknown => "UNKNOWN",
            Code::InvalidArgument => "INVALID_ARGUMENT",
            Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
            Code::NotFound => "NOT_FOUND",
            Code::AlreadyExists => "ALREADY_EXISTS",
            Code::PermissionDenied => "PERMISSION_DENIED",
            Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
            Code::FailedPrecondition => "FAILED_PRECONDITION",
            Code::Aborted => "ABORTED",
            Code::OutOfRange => "OUT_OF_RANGE",
            Code::Unimplemented => "UNIMPLEMENTED",
            Code::Internal => "INTERNAL",
            Code::Unavailable => "UNAVAILABLE",
            Code::DataLoss => "DATA_LOSS",
            Code::Unauthenticated => "UNAUTHENTICATED",
        }
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

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
    #[error("cannot {action} container {id} while it is {state}")]
    WrongState {
        id: String,
        action: &'static str,
        state: &'static str,
    },
    #[error("{what} is not implemented yet")]
    Unimplemented { what: &'static str },
    #[error("out of {resource}: {reason}")]
    ResourceExhausted {
        resource: &'static str,
        reason: String,
    },
    #[error("sandbox {sandbox_id} is not reachable: {reason}")]
    SandboxUnavailable { sandbox_id: String, reason: String },
    #[error("{action} timed out")]
    Timeout { action: &'static str },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

impl ShimError {
    /// The status code containerd should see for this error.
    pub fn code(&self) -> Code {
        match self {
            ShimError::ContainerNotFound { .. } | ShimError::ExecNotFound { .. } => Code::NotFound,
            ShimError::ContainerExists { .. } | ShimError::ExecExists { .. } => Code::AlreadyExists,
            ShimError::InvalidRequest { .. } | ShimError::Annotations(_) => Code::InvalidArgument,
            ShimError::WrongState { .. } => Code::FailedPrecondition,
            ShimError::Unimplemented { .. } => Code::Unimplemented,
            ShimError::ResourceExhausted { .. } => Code::ResourceExhausted,
            ShimError::SandboxUnavailable { .. } => Code::Unavailable,
            ShimError::Timeout { .. } => Code::DeadlineExceeded,
            // An I/O failure is the shim's problem, not the caller's: the
            // request may well succeed if retried after the cause is fixed.
            ShimError::Io { .. } | ShimError::Internal(_) => Code::Internal,
        }
    }
}

impl From<&ShimError> for Code {
    fn from(err: &ShimError) -> Code {
        err.code()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_have_their_grpc_wire_values() {
        let expected = [
            (Code::Ok, 0, "OK"),
            (Code::Cancelled, 1, "CANCELLED"),
            (Code::Unknown, 2, "UNKNOWN"),
            (Code::InvalidArgument, 3, "INVALID_ARGUMENT"),
            (Code::DeadlineExceeded, 4, "DEADLINE_EXCEEDED"),
            (Code::NotFound, 5, "NOT_FOUND"),
            (Code::AlreadyExists, 6, "ALREADY_EXISTS"),
            (Code::PermissionDenied, 7, "PERMISSION_DENIED"),
            (Code::ResourceExhausted, 8, "RESOURCE_EXHAUSTED"),
            (Code::FailedPrecondition, 9, "FAILED_PRECONDITION"),
            (Code::Aborted, 10, "ABORTED"),
            (Code::OutOfRange, 11, "OUT_OF_RANGE"),
            (Code::Unimplemented, 12, "UNIMPLEMENTED"),
            (Code::Internal, 13, "INTERNAL"),
            (Code::Unavailable, 14, "UNAVAILABLE"),
            (Code::DataLoss, 15, "DATA_LOSS"),
            (Code::Unauthenticated, 16, "UNAUTHENTICATED"),
        ];
        for (code, value, name) in expected {
            assert_eq!(code.value(), value);
            assert_eq!(Code::from_value(value), code);
            assert_eq!(code.to_string(), name);
        }
    }

    #[test]
    fn out_of_range_values_are_unknown() {
        for value in [-1, 17, i32::MAX, i32::MIN] {
            assert_eq!(Code::from_value(value), Code::Unknown);
        }
    }

    #[test]
    fn each_error_maps_to_its_code() {
        let cases: Vec<(ShimError, i32)> = vec![
            (ShimError::ContainerNotFound { id: "c1".into() }, 5),
            (
                ShimError::ExecNotFound {
                    container_id: "c1".into(),
                    exec_id: "e1".into(),
                },
                5,
            ),
            (ShimError::ContainerExists { id: "c1".into() }, 6),
            (
                ShimError::ExecExists {
                    container_id: "c1".into(),
                    exec_id: "e1".into(),
                },
                6,
            ),
            (
                ShimError::InvalidRequest {
                    field: "stdin",
                    reason: "not a fifo".into(),
                },
                3,
            ),
            (
                ShimError::Annotations(RoleError::UnknownContainerType {
                    key: crate::sandbox::CRI_CONTAINER_TYPE,
                    value: "pod".into(),
                }),
                3,
            ),
            (
                ShimError::WrongState {
                    id: "c1".into(),
                    action: "start",
                    state: "running",
                },
                9,
            ),
            (ShimError::Unimplemented { what: "checkpoint" }, 12),
            (
                ShimError::ResourceExhausted {
                    resource: "IPv4 addresses",
                    reason: "10.88.90.0/24 is full".into(),
                },
                8,
            ),
            (
                ShimError::SandboxUnavailable {
                    sandbox_id: "p1".into(),
                    reason: "vsock connection refused".into(),
                },
                14,
            ),
            (ShimError::Timeout { action: "shutdown" }, 4),
            (
                ShimError::Io {
                    context: "cannot open state dir".into(),
                    source: io::Error::from(io::ErrorKind::PermissionDenied),
                },
                13,
            ),
            (ShimError::Internal("bug".into()), 13),
        ];
        for (err, value) in cases {
            assert_eq!(err.code().value(), value, "{err:?}");
            assert_eq!(Code::from(&err), err.code());
        }
    }

    #[test]
    fn messages_read_well() {
        assert_eq!(
            ShimError::ContainerNotFound { id: "abc".into() }.to_string(),
            "container abc: not found"
        );
        assert_eq!(
            ShimError::WrongState {
                id: "abc".into(),
                action: "start",
                state: "running"
            }
            .to_string(),
            "cannot start container abc while it is running"
        );
        let io_err = ShimError::Io {
            context: "cannot open /run/okvm/abc".into(),
            source: io::Error::from(io::ErrorKind::NotFound),
        };
        assert_eq!(io_err.to_string(), "cannot open /run/okvm/abc");
        assert!(std::error::Error::source(&io_err).is_some());
    }
}
