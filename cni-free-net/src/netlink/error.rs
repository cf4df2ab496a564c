//! Errors of the netlink layer. Each message is complete on its own (it names
//! the operation, the interface and the kernel's errno): guest-init sends
//! `to_string()` of it back to the host, where no error chain survives.

use std::io;

use crate::ifname::IfNameError;

pub type Result<T, E = NetlinkError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("cannot {action} a netlink route socket: {error}")]
    Socket {
        action: &'static str,
        error: io::Error,
    },
    /// The kernel refused the request; `kernel_message` is its extended-ack
    /// explanation when it gave one.
    #[error("cannot {op}: {}", kernel_reason(.errno, .kernel_message))]
    Kernel {
        op: String,
        errno: i32,
        kernel_message: Option<String>,
    },
    #[error("cannot {op}: netlink {action} failed: {error}")]
    Io {
        op: String,
        action: &'static str,
        error: io::Error,
    },
    #[error("cannot {op}: the kernel's answer cannot be decoded: {reason}")]
    Decode { op: String, reason: String },
    #[error("cannot {op}: there is no interface named {name}")]
    NoSuchInterface { op: String, name: String },
    /// Refused before it reached the kernel.
    #[error("cannot {op}: {reason}")]
    Invalid { op: String, reason: String },
    #[error(transparent)]
    InvalidName(#[from] IfNameError),
    #[error("cannot create tap {name}: an interface with that name already exists")]
    TapExists { name: String },
    #[error("cannot create tap {name}: {step} failed: {error}")]
    Tap {
        name: String,
        step: &'static str,
        error: io::Error,
    },
}

fn kernel_reason(errno: &i32, kernel_message: &Option<String>) -> String {
    let error = io::Error::from_raw_os_error(*errno);
    match kernel_message {
        Some(m) => format!("{error}: {m}"),
        None => error.to_string(),
    }
}

impl NetlinkError {
    /// The errno behind the error, so callers can tolerate what they expect
    /// (EEXIST from a concurrent creator, ENODEV from a vanished link).
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::Socket { error, .. } | Self::Io { error, .. } | Self::Tap { error, .. } => {
                error.raw_os_error()
            }
            Self::TapExists { .. } => Some(libc::EEXIST),
            Self::NoSuchInterface { .. } => Some(libc::ENODEV),
            Self::Decode { .. } | Self::Invalid { .. } | Self::InvalidName(_) => None,
        }
    }
}

/// Why one request failed, before the caller says what the request was for.
#[derive(Debug)]
pub(crate) enum Failure {
    Kernel {
        errno: i32,
        message: Option<String>,
    },
    Io {
        action: &'static str,
        error: io::Error,
    },
    Decode(String),
}

impl Failure {
    pub(crate) fn errno(&self) -> Option<i32> {
        match self {
            Self::Kernel { errno, .. } => Some(*errno),
            Self::Io { error, .. } => error.raw_os_error(),
            Self::Decode(_) => None,
        }
    }

    pub(crate) fn during(self, op: impl Into<String>) -> NetlinkError {
        let op = op.into();
        match self {
            Self::Kernel { errno, message } => NetlinkError::Kernel {
                op,
                errno,
                kernel_message: message,
            },
            Self::Io { action, error } => NetlinkError::Io { op, action, error },
            Self::Decode(reason) => NetlinkError::Decode { op, reason },
        }
    }
}
