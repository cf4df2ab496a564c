//! What okvm-init tells a container stage (`okvm-init container-stage`), and
//! what the stage answers. Both travel as frames on the stage's socketpair
//! ([`super::channel`]).

use std::path::PathBuf;

use okvm_protocol::ContainerSpec;
use serde::{Deserialize, Serialize};

/// A terminal's size, as the host asked for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TermSize {
    pub rows: u16,
    pub cols: u16,
}

/// The stage's job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum StageConfig {
    /// Build the container's root from the share mounted at `share`, then
    /// prepare `container.process` (runc's `create`).
    Create {
        share: PathBuf,
        container: Box<ContainerSpec>,
        terminal: Option<TermSize>,
    },
    /// Join the running container whose first process is `container_pid`
    /// (a guest pid) and prepare `process` in it (runc's `exec`).
    Exec {
        container_pid: u32,
        process: Box<oci_spec::runtime::Process>,
        terminal: Option<TermSize>,
    },
}

impl StageConfig {
    pub fn process(&self) -> &oci_spec::runtime::Process {
        match self {
            StageConfig::Create { container, .. } => &container.process,
            StageConfig::Exec { process, .. } => process,
        }
    }

    pub fn terminal(&self) -> Option<TermSize> {
        match self {
            StageConfig::Create { terminal, .. } | StageConfig::Exec { terminal, .. } => *terminal,
        }
    }
}

/// The stage's answer: once the process is prepared (the frame then carries
/// the terminal's master when one was asked for), or when preparing or the
/// exec itself failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "report")]
pub enum StageReport {
    /// Ready to exec. `warnings` are for the guest console (the stage's own
    /// stderr already belongs to the container).
    Prepared {
        warnings: Vec<String>,
    },
    Failed {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ContainerSpec {
        let process: oci_spec::runtime::Process = serde_json::from_str(
            r#"{"user":{"uid":1000,"gid":1000,"additionalGids":[5]},"args":["sh"],
                "cwd":"/work","env":["A=b"],
                "capabilities":{"bounding":["CAP_KILL"],"effective":["CAP_KILL"]},
                "rlimits":[{"type":"RLIMIT_NOFILE","hard":1024,"soft":512}]}"#,
        )
        .unwrap();
        let mounts = serde_json::from_str(
            r#"[{"destination":"/proc","type":"proc","source":"proc"},
                {"destination":"/data","type":"bind","source":"binds/0","options":["rbind","ro"]}]"#,
        )
        .unwrap();
        ContainerSpec {
            id: "c1".into(),
            share_tag: "okvm".into(),
            rootfs: "rootfs".into(),
            readonly: true,
            hostname: Some("box".into()),
            mounts,
            process,
            masked_paths: vec!["/proc/kcore".into()],
            readonly_paths: vec!["/proc/sys".into()],
            sysctl: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        }
    }

    #[test]
    fn configs_round_trip_through_json() {
        let create = StageConfig::Create {
            share: "/run/okvm/shares/okvm".into(),
            container: Box::new(spec()),
            terminal: Some(TermSize { rows: 24, cols: 80 }),
        };
        let exec = StageConfig::Exec {
            container_pid: 42,
            process: Box::new(spec().process),
            terminal: None,
        };
        for c in [create, exec] {
            let json = serde_json::to_vec(&c).unwrap();
            let back: StageConfig = serde_json::from_slice(&json).unwrap();
            assert_eq!(back, c);
            assert_eq!(back.process().user().uid(), 1000);
        }
    }

    #[test]
    fn reports_round_trip_and_read_as_json() {
        let r = StageReport::Failed {
            message: "exec: \"x\": executable file not found in $PATH".into(),
        };
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.starts_with(r#"{"report":"failed","#), "{json}");
        assert_eq!(serde_json::from_str::<StageReport>(&json).unwrap(), r);
        let p = StageReport::Prepared {
            warnings: vec!["w".into()],
        };
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(serde_json::from_str::<StageReport>(&json).unwrap(), p);
    }
}
