//! The host's policy: what a bundle or a pod may ask of okvm, as the host's
//! administrator decides it in `/etc/okvm/config.toml` (or the file
//! `OKVM_CONFIG` names in the environment the engine runs okvm with, which no
//! bundle or pod can set). Every key is optional; a missing file means the
//! compiled-in defaults; a key okvm does not know is an error, so that a
//! misspelt limit is never silently ignored. docs/config.toml is the
//! commented sample `scripts/install` puts in place.
//!
//! ```toml
//! enable_annotations = ["io.okvm.vcpus", "io.okvm.memory_mib"]
//! max_vcpus = 8
//! max_memory_mib = 8192
//! ```
//!
//! `create` reads the file once and hands the result to the helper it starts
//! (so the VM is sized by exactly the policy `create` checked), for the CLI
//! and the shim alike: [`crate::bundle::Bundle::plan`] enforces it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::bundle::{ANNOTATION_MEM, ANNOTATION_VCPUS, DEFAULT_MEM_MIB};
use crate::network::ANNOTATION_NETWORK;

pub const DEFAULT_PATH: &str = "/etc/okvm/config.toml";
pub const ENV_PATH: &str = "OKVM_CONFIG";
/// The annotations okvm reads; only these can be enabled by name.
pub const ANNOTATIONS: [&str; 3] = [ANNOTATION_VCPUS, ANNOTATION_MEM, ANNOTATION_NETWORK];
/// okvm's own annotations: the namespace [`Policy::enable_annotations`] governs.
const PREFIX: &str = "io.okvm.";
/// Sizing is the pod's to choose within the bounds; where the VM's network
/// comes from is the host's (docs/security.md, "Annotations and VM sizes").
const DEFAULT_ANNOTATIONS: [&str; 2] = [ANNOTATION_VCPUS, ANNOTATION_MEM];
pub const DEFAULT_MAX_VCPUS: u8 = okvm_vmm::vm::MAX_VCPUS;
pub const DEFAULT_MAX_MEM_MIB: u64 = 8192;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {err}")]
    Read { path: PathBuf, err: std::io::Error },
    #[error("{path}{}: {message}", line.map(|l| format!(", line {l}")).unwrap_or_default())]
    Parse {
        path: PathBuf,
        line: Option<usize>,
        message: String,
    },
}

/// Why a bundle is refused: it asks for what the host's policy does not give.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("annotation {key} is not allowed on this host: its administrator allows io.okvm.* annotations with enable_annotations in {config}")]
    Annotation { key: String, config: String },
    #[error("{from} asks for {asked} {unit}; this host allows at most {max} {unit} per VM ({setting} in {config})")]
    TooLarge {
        /// The annotation or spec field, with its value.
        from: String,
        asked: u64,
        max: u64,
        unit: &'static str,
        setting: &'static str,
        config: String,
    },
}

/// An entry of `enable_annotations`: an annotation's name, or a prefix
/// ending in `*` (`io.okvm.*` enables them all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Pattern(String);

impl Pattern {
    fn matches(&self, key: &str) -> bool {
        match self.0.strip_suffix('*') {
            Some(prefix) => key.starts_with(prefix),
            None => key == self.0,
        }
    }
}

impl TryFrom<String> for Pattern {
    type Error = String;

    fn try_from(s: String) -> Result<Pattern, String> {
        if !s.starts_with(PREFIX) {
            return Err(format!(
                "enable_annotations: {s:?} is not an io.okvm.* annotation (only okvm's own are okvm's to allow)"
            ));
        }
        let stem = s.strip_suffix('*').unwrap_or(&s);
        if stem.contains('*') {
            return Err(format!(
                "enable_annotations: {s:?}: '*' may only end a pattern"
            ));
        }
        if stem.len() == s.len() && !ANNOTATIONS.contains(&s.as_str()) {
            return Err(format!(
                "enable_annotations: okvm reads no annotation {s:?} (it reads {})",
                ANNOTATIONS.join(", ")
            ));
        }
        Ok(Pattern(s))
    }
}

impl From<Pattern> for String {
    fn from(p: Pattern) -> String {
        p.0
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The keys of config.toml.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// The io.okvm.* annotations a bundle or pod may set; any other is refused.
    pub enable_annotations: Vec<Pattern>,
    /// The most vCPUs one VM may have (1 to okvm's limit of 8).
    #[serde(deserialize_with = "max_vcpus")]
    pub max_vcpus: u8,
    /// The most memory one VM may have, in MiB (at least the default size).
    #[serde(deserialize_with = "max_memory_mib")]
    pub max_memory_mib: u64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            enable_annotations: DEFAULT_ANNOTATIONS
                .iter()
                .map(|a| Pattern((*a).into()))
                .collect(),
            max_vcpus: DEFAULT_MAX_VCPUS,
            max_memory_mib: DEFAULT_MAX_MEM_MIB,
        }
    }
}

fn max_vcpus<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
    let n = u64::deserialize(d)?;
    let limit = okvm_vmm::vm::MAX_VCPUS;
    u8::try_from(n)
        .ok()
        .filter(|n| (1..=limit).contains(n))
        .ok_or_else(|| {
            serde::de::Error::custom(format!(
                "max_vcpus = {n} is out of range: okvm boots VMs of 1 to {limit} vCPUs"
            ))
        })
}

fn max_memory_mib<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = u64::deserialize(d)?;
    let limit = okvm_vmm::layout::MAX_MEM_MIB;
    if (DEFAULT_MEM_MIB..=limit).contains(&n) {
        Ok(n)
    } else {
        // Below the default size, every container that names no size would
        // be refused.
        Err(serde::de::Error::custom(format!(
            "max_memory_mib = {n} is out of range: {DEFAULT_MEM_MIB} (the default size) to {limit}"
        )))
    }
}

/// The policy in force and the file it comes from (named in refusals, so
/// that whoever reads one knows where it is decided).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    pub path: PathBuf,
    pub policy: Policy,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            path: DEFAULT_PATH.into(),
            policy: Policy::default(),
        }
    }
}

impl Config {
    /// The policy in force: the file `OKVM_CONFIG` names (which must exist),
    /// else /etc/okvm/config.toml when it exists, else the defaults.
    pub fn load() -> Result<Config, Error> {
        match std::env::var_os(ENV_PATH) {
            Some(p) => Config::read(Path::new(&p), true),
            None => Config::read(Path::new(DEFAULT_PATH), false),
        }
    }

    fn read(path: &Path, required: bool) -> Result<Config, Error> {
        match std::fs::read_to_string(path) {
            Ok(text) => Config::parse(path, &text),
            Err(e) if !required && e.kind() == std::io::ErrorKind::NotFound => Ok(Config {
                path: path.into(),
                ..Config::default()
            }),
            Err(err) => Err(Error::Read {
                path: path.into(),
                err,
            }),
        }
    }

    /// `text` as the file at `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<Config, Error> {
        let policy = toml::from_str(text).map_err(|e| Error::Parse {
            path: path.into(),
            line: e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1),
            message: e.message().trim_end().to_owned(),
        })?;
        Ok(Config {
            path: path.into(),
            policy,
        })
    }

    /// Refuses the first io.okvm.* annotation the policy does not enable.
    pub fn admit(&self, annotations: &BTreeMap<String, String>) -> Result<(), Refusal> {
        let refused = annotations.keys().find(|key| {
            key.starts_with(PREFIX)
                && !self
                    .policy
                    .enable_annotations
                    .iter()
                    .any(|p| p.matches(key))
        });
        match refused {
            Some(key) => Err(Refusal::Annotation {
                key: key.clone(),
                config: self.path.display().to_string(),
            }),
            None => Ok(()),
        }
    }

    /// `asked` vCPUs, which `from` (an annotation or spec field, with its
    /// value) asks for, unless that is above the maximum.
    pub fn bound_vcpus(&self, asked: u64, from: &str) -> Result<u8, Refusal> {
        let max = self.policy.max_vcpus;
        u8::try_from(asked)
            .ok()
            .filter(|n| *n <= max)
            .ok_or_else(|| self.too_large(from, asked, max.into(), "vCPUs", "max_vcpus"))
    }

    /// `asked` MiB, which `from` asks for, unless that is above the maximum.
    pub fn bound_memory(&self, asked: u64, from: &str) -> Result<u64, Refusal> {
        let max = self.policy.max_memory_mib;
        if asked <= max {
            Ok(asked)
        } else {
            Err(self.too_large(from, asked, max, "MiB of memory", "max_memory_mib"))
        }
    }

    fn too_large(
        &self,
        from: &str,
        asked: u64,
        max: u64,
        unit: &'static str,
        setting: &'static str,
    ) -> Refusal {
        Refusal::TooLarge {
            from: from.into(),
            asked,
            max,
            unit,
            setting,
            config: self.path.display().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, Error> {
        Config::parse(Path::new("/etc/okvm/config.toml"), text)
    }

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn an_empty_file_means_the_defaults() {
        let c = parse("# nothing set\n").unwrap();
        assert_eq!(c.policy, Policy::default());
        assert_eq!(c.policy.max_vcpus, 8);
        assert_eq!(c.policy.max_memory_mib, 8192);
        // Sizing is allowed, the network is not.
        assert!(c
            .admit(&ann(&[
                ("io.okvm.vcpus", "2"),
                ("io.okvm.memory_mib", "512")
            ]))
            .is_ok());
        assert!(c.admit(&ann(&[("io.okvm.network", "bridge")])).is_err());
    }

    #[test]
    fn the_documented_sample_is_the_defaults() {
        let sample = include_str!("../../docs/config.toml");
        assert_eq!(parse(sample).unwrap().policy, Policy::default());
    }

    #[test]
    fn keys_override_the_defaults() {
        let c = parse(
            "enable_annotations = [\"io.okvm.*\"]\nmax_vcpus = 2 # small host\nmax_memory_mib = 1024\n",
        )
        .unwrap();
        assert_eq!((c.policy.max_vcpus, c.policy.max_memory_mib), (2, 1024));
        assert!(c.admit(&ann(&[("io.okvm.network", "bridge")])).is_ok());
        // An empty list enables nothing.
        let none = parse("enable_annotations = []").unwrap();
        let e = none
            .admit(&ann(&[("io.okvm.vcpus", "1")]))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "annotation io.okvm.vcpus is not allowed on this host: its administrator allows \
             io.okvm.* annotations with enable_annotations in /etc/okvm/config.toml"
        );
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let e = parse("max_vcpus = 2\nmax_memory = 512\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("/etc/okvm/config.toml, line 2: unknown field `max_memory`"),
            "{e}"
        );
        assert!(
            e.contains("max_memory_mib"),
            "the known keys are listed: {e}"
        );
        assert!(!e.contains('\n'), "one line: {e}");
        let e = parse("[network]\nbridge = \"okvm0\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 1: unknown field `network`"), "{e}");
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        for (text, needle) in [
            ("max_vcpus = 0", "max_vcpus = 0 is out of range"),
            ("max_vcpus = 9", "1 to 8 vCPUs"),
            ("max_vcpus = 300", "max_vcpus = 300"),
            ("max_vcpus = -1", "line 1"),
            ("max_memory_mib = 100", "256 (the default size)"),
            ("max_memory_mib = 2000000", "out of range"),
            ("max_memory_mib = \"lots\"", "line 1"),
            ("enable_annotations = \"io.okvm.*\"", "line 1"),
            (
                "enable_annotations = [\"*\"]",
                "not an io.okvm.* annotation",
            ),
            (
                "enable_annotations = [\"io.kubernetes.cri.sandbox-memory\"]",
                "not an io.okvm.* annotation",
            ),
            ("enable_annotations = [\"io.okvm.*.x\"]", "may only end"),
            (
                "enable_annotations = [\"io.okvm.vcpu\"]",
                "okvm reads no annotation \"io.okvm.vcpu\"",
            ),
            ("max_vcpus = ", "line 1"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(!e.contains('\n'), "{text}: one line: {e}");
        }
    }

    #[test]
    fn patterns_match_names_or_prefixes() {
        let c = parse("enable_annotations = [\"io.okvm.memory_mib\", \"io.okvm.net*\"]").unwrap();
        assert!(c
            .admit(&ann(&[
                ("io.okvm.memory_mib", "512"),
                ("io.okvm.network", "none"),
                // Not okvm's: not okvm's to refuse.
                ("io.kubernetes.cri.sandbox-memory", "1"),
                ("org.example", "x"),
            ]))
            .is_ok());
        for refused in ["io.okvm.vcpus", "io.okvm.memory_mib_x", "io.okvm.anything"] {
            assert_eq!(
                c.admit(&ann(&[("io.okvm.memory_mib", "512"), (refused, "1")])),
                Err(Refusal::Annotation {
                    key: refused.into(),
                    config: "/etc/okvm/config.toml".into()
                }),
                "{refused}"
            );
        }
    }

    #[test]
    fn sizes_above_the_maximum_are_refused_with_the_numbers() {
        let c = parse("max_vcpus = 4\nmax_memory_mib = 1024").unwrap();
        assert_eq!(c.bound_vcpus(4, "x"), Ok(4));
        assert_eq!(c.bound_memory(1024, "x"), Ok(1024));
        let e = c.bound_vcpus(5, "annotation io.okvm.vcpus=5").unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation io.okvm.vcpus=5 asks for 5 vCPUs; this host allows at most 4 vCPUs per VM \
             (max_vcpus in /etc/okvm/config.toml)"
        );
        assert!(c.bound_vcpus(1 << 40, "x").is_err());
        let e = c
            .bound_memory(1 << 20, "annotation io.okvm.memory_mib=1048576")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "annotation io.okvm.memory_mib=1048576 asks for 1048576 MiB of memory; this host \
             allows at most 1024 MiB of memory per VM (max_memory_mib in /etc/okvm/config.toml)"
        );
    }

    #[test]
    fn the_file_in_force_is_the_admins() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.toml");
        // The default path may be missing: the defaults apply, and refusals
        // still say where the administrator would write.
        let c = Config::read(&missing, false).unwrap();
        assert_eq!(
            (c.path.as_path(), &c.policy),
            (missing.as_path(), &Policy::default())
        );
        // A file the administrator named must exist.
        let e = Config::read(&missing, true).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read ") && e.contains("missing.toml"),
            "{e}"
        );
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "max_vcpus = 3\n").unwrap();
        let c = Config::read(&file, true).unwrap();
        assert_eq!(c.policy.max_vcpus, 3);
        let e = c.bound_vcpus(4, "x").unwrap_err().to_string();
        assert!(
            e.contains(&format!("max_vcpus in {}", file.display())),
            "{e}"
        );
    }

    #[test]
    fn the_policy_survives_the_helpers_command_line() {
        let c = parse("enable_annotations = [\"io.okvm.n*\"]\nmax_memory_mib = 300").unwrap();
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }
}
