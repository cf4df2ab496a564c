//! The runc-compatible verbs, one file each. Flags come from liboci-cli, so
//! they match what podman, conmon and containerd pass to runc.

pub mod features;
pub mod list;
pub mod spec;
pub mod state;

use std::path::PathBuf;

/// What every verb gets from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    /// `--root`: where container state lives.
    pub root: PathBuf,
}

impl Context {
    pub fn new(root: Option<PathBuf>) -> Self {
        Context {
            root: root.unwrap_or_else(|| crate::state::DEFAULT_ROOT.into()),
        }
    }
}

/// The OCI runtime spec version okvm implements.
pub const OCI_VERSION: &str = "1.2.0";
