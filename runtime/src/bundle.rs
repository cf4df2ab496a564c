//! An OCI bundle, checked, and turned into what the sandbox needs: the VM's
//! size, the files to put in its virtio-fs share, and the container as
//! okvm-init must build it.
//!
//! Host paths never reach the guest: the rootfs and every bind-mount source
//! are placed in the share (under `rootfs` and `mounts/<n>`), and the guest is
//! told those share-relative names.

use std::path::{Path, PathBuf};

use oci_spec::runtime::{Mount, Spec};
use okvm_protocol::ContainerSpec;

use crate::config::{Config, Refusal};

/// The virtio-fs tag of a sandbox's share.
pub const SHARE_TAG: &str = "okvm";
/// Defaults when the spec sets no limits (shared/DESIGN.md, "Guest").
pub const DEFAULT_VCPUS: u8 = 1;
pub const DEFAULT_MEM_MIB: u64 = 256;
/// The guest kernel needs this much to boot and run a shell comfortably.
pub const MIN_MEM_MIB: u64 = 128;
/// Annotations that size the VM, overriding the spec's resources (when the
/// host's policy enables them: [`crate::config`]).
pub const ANNOTATION_VCPUS: &str = "io.okvm.vcpus";
pub const ANNOTATION_MEM: &str = "io.okvm.memory_mib";
/// containerd CRI: the pod's resources, on its sandbox's spec.
pub const CRI_SANDBOX_CPU_QUOTA: &str = "io.kubernetes.cri.sandbox-cpu-quota";
pub const CRI_SANDBOX_CPU_PERIOD: &str = "io.kubernetes.cri.sandbox-cpu-period";
pub const CRI_SANDBOX_MEMORY: &str = "io.kubernetes.cri.sandbox-memory";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("bundle {0} does not exist or is not a directory")]
    NoBundle(PathBuf),
    #[error("bundle {0} has no config.json")]
    NoConfig(PathBuf),
    #[error("cannot parse {path}: {err}")]
    BadConfig { path: PathBuf, err: String },
    #[error("config.json has no root")]
    NoRoot,
    #[error("rootfs {0} does not exist or is not a directory")]
    NoRootfs(PathBuf),
    #[error("config.json has no process")]
    NoProcess,
    #[error("config.json: process.args is empty")]
    NoArgs,
    #[error("mount {dest}: bind source {path} does not exist")]
    NoSource { dest: String, path: PathBuf },
    #[error("mount {0}: a bind mount needs a source")]
    NoSourceGiven(String),
    #[error("annotation {key}={value:?} is not a valid number")]
    BadAnnotation { key: String, value: String },
    /// The host's policy does not give what the bundle asks for.
    #[error(transparent)]
    Refused(#[from] Refusal),
}

/// One host file or directory placed in the share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShareEntry {
    /// Path inside the share.
    pub name: String,
    pub source: PathBuf,
    pub readonly: bool,
    pub recursive: bool,
}

/// Everything the sandbox derives from the bundle.
#[derive(Debug, Clone)]
pub struct Plan {
    pub container: ContainerSpec,
    pub entries: Vec<ShareEntry>,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub terminal: bool,
    /// The directory of the share this container's entries go in ("" for
    /// the share's top): the entries' names are relative to it, the
    /// container's paths in the guest include it.
    pub dir: String,
}

impl Plan {
    /// Binds host file `source` read-only at `dest` in the container, unless
    /// the spec already mounts something there (the engine's choice wins).
    pub fn bind_unless_mounted(&mut self, source: PathBuf, dest: &str) {
        let mounts = &mut self.container.mounts;
        if mounts.iter().any(|m| m.destination() == Path::new(dest)) {
            return;
        }
        let name = format!("mounts/{}", mounts.len());
        let mut m = Mount::default();
        m.set_destination(dest.into());
        m.set_typ(Some("bind".into()));
        m.set_source(Some(share_path(&self.dir, &name).into()));
        m.set_options(Some(vec!["rbind".into(), "ro".into()]));
        mounts.push(m);
        self.entries.push(ShareEntry {
            name,
            source,
            readonly: true,
            recursive: false,
        });
    }
}

pub struct Bundle {
    pub dir: PathBuf,
    pub spec: Spec,
    pub rootfs: PathBuf,
}

impl Bundle {
    /// Reads and checks `dir/config.json`, as `create` must before anything
    /// is started.
    pub fn load(dir: &Path) -> Result<Bundle, Error> {
        if !dir.is_dir() {
            return Err(Error::NoBundle(dir.into()));
        }
        let dir = std::fs::canonicalize(dir).map_err(|_| Error::NoBundle(dir.into()))?;
        let path = dir.join("config.json");
        if !path.is_file() {
            return Err(Error::NoConfig(dir));
        }
        let bytes = std::fs::read(&path).map_err(|e| Error::BadConfig {
            path: path.clone(),
            err: e.to_string(),
        })?;
        let spec: Spec = serde_json::from_slice(&bytes).map_err(|e| Error::BadConfig {
            path: path.clone(),
            err: e.to_string(),
        })?;
        let root = spec.root().as_ref().ok_or(Error::NoRoot)?;
        let rootfs = if root.path().is_absolute() {
            root.path().clone()
        } else {
            dir.join(root.path())
        };
        if !rootfs.is_dir() {
            return Err(Error::NoRootfs(rootfs));
        }
        let process = spec.process().as_ref().ok_or(Error::NoProcess)?;
        if process.args().as_ref().map_or(true, |a| a.is_empty()) {
            return Err(Error::NoArgs);
        }
        Ok(Bundle { dir, spec, rootfs })
    }

    pub fn annotations(&self) -> std::collections::BTreeMap<String, String> {
        self.spec
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .collect()
    }

    /// The sandbox's plan for container `id`, alone in its VM, within the
    /// host's policy `config`.
    pub fn plan(&self, id: &str, config: &Config) -> Result<Plan, Error> {
        self.plan_in(id, "", config)
    }

    /// The plan for container `id` with its files in directory `dir` of the
    /// share (a pod's VM holds several containers' files). Annotations the
    /// host's policy does not enable, and sizes above its maxima, are refused
    /// here, before anything is made.
    pub fn plan_in(&self, id: &str, dir: &str, config: &Config) -> Result<Plan, Error> {
        let annotations = self.annotations();
        config.admit(&annotations)?;
        let spec = &self.spec;
        let process = spec.process().clone().ok_or(Error::NoProcess)?;
        let mut entries = vec![ShareEntry {
            name: "rootfs".into(),
            source: self.rootfs.clone(),
            // The guest makes the root read-only; the share stays writable
            // so that the spec's mounts can be prepared on it.
            readonly: false,
            recursive: true,
        }];
        let mut mounts = Vec::new();
        for (i, m) in spec.mounts().iter().flatten().enumerate() {
            let mut m = m.clone();
            if is_bind(&m) {
                let dest = m.destination().display().to_string();
                let source = m
                    .source()
                    .clone()
                    .ok_or_else(|| Error::NoSourceGiven(dest.clone()))?;
                let source = if source.is_absolute() {
                    source
                } else {
                    self.dir.join(source)
                };
                if std::fs::metadata(&source).is_err() {
                    return Err(Error::NoSource { dest, path: source });
                }
                let name = format!("mounts/{i}");
                let opts = m.options().clone().unwrap_or_default();
                entries.push(ShareEntry {
                    name: name.clone(),
                    source,
                    readonly: opts.iter().any(|o| o == "ro"),
                    recursive: opts.iter().any(|o| o == "rbind"),
                });
                m.set_source(Some(share_path(dir, &name).into()));
            }
            mounts.push(m);
        }
        let linux = spec.linux().as_ref();
        let (vcpus, mem_mib) = size(spec, &annotations, config)?;
        let container = ContainerSpec {
            id: id.into(),
            share_tag: SHARE_TAG.into(),
            rootfs: share_path(dir, "rootfs"),
            readonly: spec
                .root()
                .as_ref()
                .and_then(|r| r.readonly())
                .unwrap_or(false),
            hostname: spec.hostname().clone(),
            mounts,
            process,
            masked_paths: linux
                .and_then(|l| l.masked_paths().clone())
                .unwrap_or_default(),
            readonly_paths: linux
                .and_then(|l| l.readonly_paths().clone())
                .unwrap_or_default(),
            sysctl: linux
                .and_then(|l| l.sysctl().clone())
                .unwrap_or_default()
                .into_iter()
                .collect(),
        };
        Ok(Plan {
            terminal: container.process.terminal().unwrap_or(false),
            container,
            entries,
            vcpus,
            mem_mib,
            dir: dir.into(),
        })
    }
}

fn share_path(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.into()
    } else {
        format!("{dir}/{name}")
    }
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// vCPUs and MiB: okvm's annotations first, then a pod's resources (CRI
/// annotations), then `linux.resources` (podman's `--cpus` becomes a CFS
/// quota, `--memory` a limit), then the defaults. Whichever sizes the VM must
/// be within `config`'s maxima; a cpuset only pins the container to host CPUs,
/// so the vCPU count it implies is capped rather than refused.
fn size(
    spec: &Spec,
    annotations: &std::collections::BTreeMap<String, String>,
    config: &Config,
) -> Result<(u8, u64), Error> {
    let number = |key: &str| -> Result<Option<(u64, String)>, Error> {
        annotations
            .get(key)
            .map(|v| {
                let n = v.trim().parse::<u64>().map_err(|_| Error::BadAnnotation {
                    key: key.into(),
                    value: v.clone(),
                })?;
                Ok((n, format!("annotation {key}={v}")))
            })
            .transpose()
    };
    // containerd's CRI plugin puts the whole pod's resources (what kubelet
    // summed over its containers) on the sandbox: they size the pod's VM.
    // Not okvm's to validate: unset or odd values are simply not used.
    let cri = |key: &str| {
        annotations
            .get(key)
            .and_then(|v| v.trim().parse::<i64>().ok())
            .filter(|v| *v > 0)
            .map(|v| v as u64)
    };
    let pod_vcpus = match (cri(CRI_SANDBOX_CPU_QUOTA), cri(CRI_SANDBOX_CPU_PERIOD)) {
        (Some(q), Some(p)) => Some((
            q.div_ceil(p),
            format!(
                "the pod's CPU limit (annotations {CRI_SANDBOX_CPU_QUOTA}={q}, \
                 {CRI_SANDBOX_CPU_PERIOD}={p})"
            ),
        )),
        _ => None,
    };
    let pod_mem = cri(CRI_SANDBOX_MEMORY).map(|b| {
        (
            b.div_ceil(1 << 20),
            format!("the pod's memory limit (annotation {CRI_SANDBOX_MEMORY}={b})"),
        )
    });
    let resources = spec.linux().as_ref().and_then(|l| l.resources().as_ref());
    let cpu = resources.and_then(|r| r.cpu().as_ref());
    let from_quota = cpu.and_then(|c| match (c.quota(), c.period()) {
        (Some(q), Some(p)) if q > 0 && p > 0 => Some((
            (q as u64).div_ceil(p),
            format!("linux.resources.cpu.quota={q} (period {p})"),
        )),
        _ => None,
    });
    let vcpus = match number(ANNOTATION_VCPUS)?.or(pod_vcpus).or(from_quota) {
        Some((n, from)) => config.bound_vcpus(n, &from)?,
        None => cpu
            .and_then(|c| c.cpus().as_deref())
            .and_then(cpuset_count)
            .map_or(DEFAULT_VCPUS, |n| {
                n.min(config.policy.max_vcpus.into()) as u8
            }),
    }
    .max(1);
    let from_limit = resources
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|l| *l > 0)
        .map(|l| {
            (
                (l as u64).div_ceil(1 << 20),
                format!("linux.resources.memory.limit={l}"),
            )
        });
    let mem_mib = match number(ANNOTATION_MEM)?.or(pod_mem).or(from_limit) {
        Some((n, from)) => config.bound_memory(n, &from)?,
        None => DEFAULT_MEM_MIB,
    }
    .max(MIN_MEM_MIB);
    Ok((vcpus, mem_mib))
}

/// How many CPUs a cpuset string such as "0-2,4" names.
fn cpuset_count(s: &str) -> Option<u64> {
    let mut n = 0;
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => b.parse::<u64>().ok()?.checked_sub(a.parse().ok()?)? + 1,
            None => {
                part.parse::<u64>().ok()?;
                1
            }
        };
    }
    (n > 0).then_some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(config: &str) -> (tempfile::TempDir, Result<Bundle, Error>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        std::fs::write(dir.path().join("config.json"), config).unwrap();
        let b = Bundle::load(dir.path());
        (dir, b)
    }

    const BASE: &str = r#"{"ociVersion":"1.2.0","root":{"path":"rootfs"},
        "process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}"#;

    #[test]
    fn bad_bundles_say_what_is_wrong() {
        let e = Bundle::load(Path::new("/nonexistent/bundle"))
            .err()
            .unwrap();
        assert!(e.to_string().contains("does not exist"), "{e}");
        let (_d, b) = bundle("{not json");
        assert!(b.err().unwrap().to_string().starts_with("cannot parse"));
        let (_d, b) = bundle(
            r#"{"ociVersion":"1.2.0","root":{"path":"nowhere"},"process":{"args":["sh"],"cwd":"/","user":{"uid":0,"gid":0}}}"#,
        );
        assert!(matches!(b, Err(Error::NoRootfs(_))));
        let (_d, b) = bundle(r#"{"ociVersion":"1.2.0","root":{"path":"rootfs"}}"#);
        assert!(matches!(b, Err(Error::NoProcess)));
    }

    #[test]
    fn binds_go_into_the_share_and_resources_size_the_vm() {
        let host = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{BASE},"mounts":[{{"destination":"/proc","type":"proc","source":"proc"}},
               {{"destination":"/data","type":"bind","source":"{}","options":["rbind","ro"]}}],
               "linux":{{"resources":{{"memory":{{"limit":536870912}},"cpu":{{"quota":150000,"period":100000}}}}}}}}"#,
            host.path().display()
        );
        let (_d, b) = bundle(&config);
        let plan = b.unwrap().plan("c1", &Config::default()).unwrap();
        assert_eq!((plan.vcpus, plan.mem_mib), (2, 512));
        assert_eq!(plan.entries.len(), 2);
        assert_eq!(plan.entries[1].name, "mounts/1");
        assert!(plan.entries[1].readonly && plan.entries[1].recursive);
        let m = &plan.container.mounts[1];
        assert_eq!(m.source().as_deref(), Some(Path::new("mounts/1")));
        assert_eq!(
            plan.container.mounts[0].source().as_deref(),
            Some(Path::new("proc"))
        );
    }

    #[test]
    fn a_pod_container_has_its_own_directory_of_the_share() {
        let host = tempfile::tempdir().unwrap();
        let config = format!(
            r#"{BASE},"mounts":[{{"destination":"/data","type":"bind","source":"{}","options":["bind"]}}]}}"#,
            host.path().display()
        );
        let (_d, b) = bundle(&config);
        let mut plan = b
            .unwrap()
            .plan_in("c2", "containers/c2", &Config::default())
            .unwrap();
        assert_eq!(plan.container.rootfs, "containers/c2/rootfs");
        let names: Vec<_> = plan.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["rootfs", "mounts/0"]);
        plan.bind_unless_mounted("/etc/hosts".into(), "/etc/hosts");
        assert_eq!(plan.entries[2].name, "mounts/1");
        let sources: Vec<_> = plan
            .container
            .mounts
            .iter()
            .map(|m| m.source().clone().unwrap())
            .collect();
        assert_eq!(
            sources,
            [
                Path::new("containers/c2/mounts/0"),
                Path::new("containers/c2/mounts/1")
            ]
        );
    }

    #[test]
    fn a_missing_bind_source_is_named() {
        let config = format!(
            r#"{BASE},"mounts":[{{"destination":"/data","type":"bind","source":"/no/such/dir","options":["bind"]}}]}}"#
        );
        let (_d, b) = bundle(&config);
        let e = b
            .unwrap()
            .plan("c", &Config::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("/no/such/dir"), "{e}");
    }

    #[test]
    fn defaults_annotations_and_cpusets() {
        let (_d, b) = bundle(&format!("{BASE}}}"));
        let p = b.unwrap().plan("c", &Config::default()).unwrap();
        assert_eq!((p.vcpus, p.mem_mib), (DEFAULT_VCPUS, DEFAULT_MEM_MIB));
        let (_d, b) = bundle(&format!(
            r#"{BASE},"annotations":{{"io.okvm.vcpus":"3","io.okvm.memory_mib":"64"}}}}"#
        ));
        let p = b.unwrap().plan("c", &Config::default()).unwrap();
        assert_eq!((p.vcpus, p.mem_mib), (3, MIN_MEM_MIB));
        let (_d, b) = bundle(&format!(
            r#"{BASE},"annotations":{{"io.okvm.vcpus":"x"}}}}"#
        ));
        assert!(b.unwrap().plan("c", &Config::default()).is_err());
        // A pod's sandbox: the pod's resources, ahead of the pause
        // container's own; okvm's annotations still win.
        let (_d, b) = bundle(&format!(
            r#"{BASE},"annotations":{{"io.kubernetes.cri.sandbox-cpu-quota":"250000","io.kubernetes.cri.sandbox-cpu-period":"100000","io.kubernetes.cri.sandbox-memory":"1073741824"}},
               "linux":{{"resources":{{"memory":{{"limit":536870912}}}}}}}}"#
        ));
        let p = b.unwrap().plan("c", &Config::default()).unwrap();
        assert_eq!((p.vcpus, p.mem_mib), (3, 1024));
        let (_d, b) = bundle(&format!(
            r#"{BASE},"annotations":{{"io.kubernetes.cri.sandbox-cpu-quota":"-1","io.kubernetes.cri.sandbox-cpu-period":"100000","io.kubernetes.cri.sandbox-memory":"0","io.okvm.vcpus":"2"}}}}"#
        ));
        let p = b.unwrap().plan("c", &Config::default()).unwrap();
        assert_eq!((p.vcpus, p.mem_mib), (2, DEFAULT_MEM_MIB));
        assert_eq!(cpuset_count("0-2,4"), Some(4));
        assert_eq!(cpuset_count("3-1"), None);
    }

    /// The plan of a bundle with these annotations and `linux` section
    /// (JSON, or "" for none), under the host policy `policy` (config.toml).
    fn plan_under(policy: &str, annotations: &str, linux: &str) -> Result<Plan, Error> {
        let config = Config::parse(Path::new("/etc/okvm/config.toml"), policy).unwrap();
        let linux = if linux.is_empty() {
            String::new()
        } else {
            format!(r#","linux":{linux}"#)
        };
        let (_d, b) = bundle(&format!(
            r#"{BASE},"annotations":{{{annotations}}}{linux}}}"#
        ));
        b.unwrap().plan("c", &config)
    }

    #[test]
    fn annotations_the_host_does_not_enable_are_refused() {
        let e = plan_under("", r#""io.okvm.network":"bridge""#, "")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("annotation io.okvm.network is not allowed on this host")
                && e.contains("enable_annotations in /etc/okvm/config.toml"),
            "{e}"
        );
        // Refused before its value is even looked at.
        let e = plan_under("enable_annotations = []", r#""io.okvm.vcpus":"x""#, "");
        assert!(
            matches!(e, Err(Error::Refused(Refusal::Annotation { .. }))),
            "{e:?}"
        );
        let p = plan_under(
            r#"enable_annotations = ["io.okvm.*"]"#,
            r#""io.okvm.network":"bridge","io.okvm.vcpus":"2""#,
            "",
        )
        .unwrap();
        assert_eq!(p.vcpus, 2);
    }

    #[test]
    fn every_way_of_asking_for_too_much_is_refused() {
        let policy = "max_vcpus = 2\nmax_memory_mib = 512";
        const QUOTA: &str = r#""io.kubernetes.cri.sandbox-cpu-quota":"300000""#;
        const PERIOD: &str = r#""io.kubernetes.cri.sandbox-cpu-period":"100000""#;
        let pod_cpu = format!("{QUOTA},{PERIOD}");
        for (annotations, linux, from) in [
            (
                r#""io.okvm.memory_mib":"1048576""#,
                "",
                "annotation io.okvm.memory_mib=1048576 asks for 1048576 MiB of memory",
            ),
            (
                r#""io.okvm.vcpus":"3""#,
                "",
                "annotation io.okvm.vcpus=3 asks for 3 vCPUs",
            ),
            (
                r#""io.okvm.vcpus":"99999999999""#,
                "",
                "annotation io.okvm.vcpus=99999999999 asks for 99999999999 vCPUs",
            ),
            (
                r#""io.kubernetes.cri.sandbox-memory":"1073741824""#,
                "",
                "the pod's memory limit (annotation io.kubernetes.cri.sandbox-memory=1073741824) \
                 asks for 1024 MiB",
            ),
            (
                &pod_cpu,
                "",
                "the pod's CPU limit (annotations io.kubernetes.cri.sandbox-cpu-quota=300000, \
                 io.kubernetes.cri.sandbox-cpu-period=100000) asks for 3 vCPUs",
            ),
            (
                "",
                r#"{"resources":{"memory":{"limit":1073741825}}}"#,
                "linux.resources.memory.limit=1073741825 asks for 1025 MiB",
            ),
            (
                "",
                r#"{"resources":{"cpu":{"quota":250000,"period":100000}}}"#,
                "linux.resources.cpu.quota=250000 (period 100000) asks for 3 vCPUs",
            ),
        ] {
            let e = plan_under(policy, annotations, linux).unwrap_err();
            assert!(
                matches!(e, Error::Refused(Refusal::TooLarge { .. })),
                "{e:?}"
            );
            let e = e.to_string();
            assert!(e.starts_with(from), "{from}: {e}");
            assert!(e.contains("this host allows at most"), "{e}");
            assert!(e.contains(" in /etc/okvm/config.toml)"), "{e}");
        }
        // The maxima themselves are fine, and so is a value that does not
        // size the VM (the annotation wins over the spec's limit).
        let p = plan_under(
            policy,
            r#""io.okvm.memory_mib":"512","io.okvm.vcpus":"2""#,
            r#"{"resources":{"memory":{"limit":68719476736}}}"#,
        )
        .unwrap();
        assert_eq!((p.vcpus, p.mem_mib), (2, 512));
        // A cpuset pins the container to host CPUs: more of them than the
        // maximum gives the maximum.
        let p = plan_under(policy, "", r#"{"resources":{"cpu":{"cpus":"0-15"}}}"#).unwrap();
        assert_eq!(p.vcpus, 2);
    }
}
