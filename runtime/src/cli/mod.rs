//! The runc-compatible verbs, one file each. Flags come from liboci-cli, so
//! they match what podman, conmon and containerd pass to runc.

pub mod create;
pub mod delete;
pub mod events;
pub mod exec;
pub mod features;
pub mod kill;
pub mod list;
pub mod pause;
pub mod ps;
pub mod run;
pub mod spec;
pub mod start;
pub mod state;

use std::path::PathBuf;

/// What every verb gets from the global flags.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// `--root`: where container state lives.
    pub root: PathBuf,
    /// `--log`, `--log-format`, `--debug`: passed on to the processes okvm
    /// starts (the sandbox, exec proxies), which log where the caller asked.
    pub log: Option<PathBuf>,
    pub log_format: Option<String>,
    pub debug: bool,
}

impl Context {
    pub fn new(root: Option<PathBuf>) -> Self {
        Context {
            root: root.unwrap_or_else(|| crate::state::DEFAULT_ROOT.into()),
            ..Default::default()
        }
    }
}

/// The OCI runtime spec version okvm implements.
pub const OCI_VERSION: &str = "1.2.0";
