//! Which VM a container belongs in, read from the annotations that container
//! engines put on Kubernetes pods.
//!
//! A pod is one VM: its sandbox (pause) container boots it, and the pod's other
//! containers are created inside it (`create` decides, for the CLI and the
//! shim alike). Both containerd's CRI plugin and cri-o
//! (and podman, for its pods) mark each container with its role and its
//! sandbox's id; anything unmarked is a container of its own, in its own VM.

use std::collections::BTreeMap;
use std::path::Path;

use crate::procs::Procs;
use crate::state::{Container, Status};

/// containerd CRI: `sandbox` or `container`.
pub const CRI_CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// containerd CRI: the pod sandbox's id, set on the sandbox and on each container.
pub const CRI_SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// containerd CRI: the pod's name.
pub const CRI_SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
/// containerd CRI: the pod's namespace.
pub const CRI_SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
/// cri-o and podman: `sandbox` or `container`.
pub const CRIO_CONTAINER_TYPE: &str = "io.kubernetes.cri-o.ContainerType";
/// cri-o and podman: the pod sandbox's id.
pub const CRIO_SANDBOX_ID: &str = "io.kubernetes.cri-o.SandboxID";

const TYPE_SANDBOX: &str = "sandbox";
const TYPE_CONTAINER: &str = "container";

/// containerd's limit for identifiers; cri-o's 64-hex ids fit within it.
const MAX_ID_LEN: usize = 76;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The pod's sandbox (pause) container: it boots the pod's VM.
    PodSandbox { sandbox_id: String },
    /// A container of the pod whose VM was booted by `sandbox_id`.
    PodContainer { sandbox_id: String },
    /// Not part of a pod: the container gets a VM of its own.
    Standalone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoleError {
    #[error("annotation {key}={value:?} is neither \"sandbox\" nor \"container\"")]
    UnknownContainerType { key: &'static str, value: String },
    #[error("annotation {type_key}={container_type} needs {id_key} to name its pod sandbox, but it is missing or empty")]
    MissingSandboxId {
        type_key: &'static str,
        container_type: &'static str,
        id_key: &'static str,
    },
    #[error("annotation {id_key}={sandbox_id:?} names a pod sandbox, but no {type_key} annotation says whether this is the sandbox or a container in it")]
    SandboxIdWithoutType {
        id_key: &'static str,
        type_key: &'static str,
        sandbox_id: String,
    },
    #[error("sandbox id {sandbox_id:?} (annotation {key}) is not a valid identifier: {reason}")]
    InvalidSandboxId {
        key: &'static str,
        sandbox_id: String,
        reason: &'static str,
    },
    #[error("containerd and cri-o annotations disagree: {cri_key}={cri_value:?} but {crio_key}={crio_value:?}")]
    Conflict {
        cri_key: &'static str,
        cri_value: String,
        crio_key: &'static str,
        crio_value: String,
    },
}

/// The two annotation dialects, so containerd's and cri-o's are read by the same code.
struct Dialect {
    type_key: &'static str,
    id_key: &'static str,
}

const CRI: Dialect = Dialect {
    type_key: CRI_CONTAINER_TYPE,
    id_key: CRI_SANDBOX_ID,
};
const CRIO: Dialect = Dialect {
    type_key: CRIO_CONTAINER_TYPE,
    id_key: CRIO_SANDBOX_ID,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Sandbox,
    Container,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Sandbox => TYPE_SANDBOX,
            Kind::Container => TYPE_CONTAINER,
        }
    }
}

impl Role {
    /// Decides the role from an OCI spec's annotations.
    ///
    /// Inconsistent annotations are errors rather than a fallback to
    /// [`Role::Standalone`]: running a pod's container in a VM of its own would
    /// silently cut it off from the pod's network and volumes.
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Result<Role, RoleError> {
        let cri = read_dialect(annotations, &CRI)?;
        let crio = read_dialect(annotations, &CRIO)?;
        let (kind, sandbox_id) = match (cri, crio) {
            (None, None) => return Ok(Role::Standalone),
            (Some(only), None) | (None, Some(only)) => only,
            // Both present (e.g. an engine that sets both for compatibility):
            // fine as long as they tell the same story.
            (Some((cri_kind, cri_id)), Some((crio_kind, crio_id))) => {
                if cri_kind != crio_kind {
                    return Err(RoleError::Conflict {
                        cri_key: CRI_CONTAINER_TYPE,
                        cri_value: cri_kind.as_str().to_owned(),
                        crio_key: CRIO_CONTAINER_TYPE,
                        crio_value: crio_kind.as_str().to_owned(),
                    });
                }
                if cri_id != crio_id {
                    return Err(RoleError::Conflict {
                        cri_key: CRI_SANDBOX_ID,
                        cri_value: cri_id,
                        crio_key: CRIO_SANDBOX_ID,
                        crio_value: crio_id,
                    });
                }
                (cri_kind, cri_id)
            }
        };
        Ok(match kind {
            Kind::Sandbox => Role::PodSandbox { sandbox_id },
            Kind::Container => Role::PodContainer { sandbox_id },
        })
    }

    /// The pod sandbox this container belongs to, if it is part of a pod.
    pub fn sandbox_id(&self) -> Option<&str> {
        match self {
            Role::PodSandbox { sandbox_id } | Role::PodContainer { sandbox_id } => Some(sandbox_id),
            Role::Standalone => None,
        }
    }
}

/// The okvm container (under `root`) that booted pod `sandbox_id`'s VM: the
/// container of that id (containerd, cri-o), or else the one whose
/// annotations make it that pod's sandbox, or else (podman, whose pod ids are
/// not its infra container's, and which does not mark the infra container)
/// the running VM whose sandbox process is in `netns`, the network namespace
/// the pod's container is given.
pub fn sandbox_container(
    root: &Path,
    sandbox_id: &str,
    netns: Option<&Path>,
) -> anyhow::Result<String> {
    let is_it = |c: &Container| {
        c.load().is_ok_and(|s| {
            matches!(Role::from_annotations(&s.annotations),
                Ok(Role::PodSandbox { sandbox_id: ref id }) if id == sandbox_id)
        })
    };
    if let Ok(c) = Container::open(root, sandbox_id) {
        if is_it(&c) {
            return Ok(c.id);
        }
    }
    let all = crate::state::list(root)?;
    let by_netns = || {
        let want = namespace_id(netns?)?;
        all.iter()
            .find(|c| {
                let own_vm = c.current().is_ok_and(|s| {
                    s.pod.is_none() && matches!(s.status, Status::Created | Status::Running)
                });
                own_vm
                    && Procs::load(&c.dir).sandbox.is_some_and(|p| {
                        namespace_id(Path::new(&format!("/proc/{}/ns/net", p.pid))) == Some(want)
                    })
            })
            .map(|c| c.id.clone())
    };
    all.iter()
        .find(|c| is_it(c))
        .map(|c| c.id.clone())
        .or_else(by_netns)
        .ok_or_else(|| {
            anyhow::anyhow!(
                "pod sandbox {sandbox_id} is not an okvm container under {}: a pod's containers run in the VM its sandbox booted",
                root.display()
            )
        })
}

/// A namespace's identity (device and inode of its nsfs file).
fn namespace_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// Kubernetes' name for the pod, from containerd's annotations; for logs and
/// VM names only, never for deciding anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodName {
    pub namespace: String,
    pub name: String,
}

impl PodName {
    pub fn from_annotations(annotations: &BTreeMap<String, String>) -> Option<PodName> {
        let name = annotations.get(CRI_SANDBOX_NAME)?;
        let namespace = annotations.get(CRI_SANDBOX_NAMESPACE)?;
        Some(PodName {
            namespace: namespace.clone(),
            name: name.clone(),
        })
    }
}

/// One dialect's reading: `None` when it has no container-type annotation.
fn read_dialect(
    annotations: &BTreeMap<String, String>,
    dialect: &Dialect,
) -> Result<Option<(Kind, String)>, RoleError> {
    let id = annotations
        .get(dialect.id_key)
        .map(String::as_str)
        // Blank counts as missing; padded ids are left for validate_id to refuse.
        .filter(|id| !id.trim().is_empty());
    let Some(value) = annotations.get(dialect.type_key) else {
        return match id {
            Some(id) => Err(RoleError::SandboxIdWithoutType {
                id_key: dialect.id_key,
                type_key: dialect.type_key,
                sandbox_id: id.to_owned(),
            }),
            None => Ok(None),
        };
    };
    let kind = match value.as_str() {
        TYPE_SANDBOX => Kind::Sandbox,
        TYPE_CONTAINER => Kind::Container,
        _ => {
            return Err(RoleError::UnknownContainerType {
                key: dialect.type_key,
                value: value.clone(),
            })
        }
    };
    // Both engines set the sandbox id on the sandbox itself too, so its
    // absence means the annotations were not written by one of them.
    let id = id.ok_or(RoleError::MissingSandboxId {
        type_key: dialect.type_key,
        container_type: kind.as_str(),
        id_key: dialect.id_key,
    })?;
    validate_id(id).map_err(|reason| RoleError::InvalidSandboxId {
        key: dialect.id_key,
        sandbox_id: id.to_owned(),
        reason,
    })?;
    Ok(Some((kind, id.to_owned())))
}

/// containerd's identifier rule: alphanumeric runs joined by single '.', '_'
/// or '-', at most 76 bytes. The id will name state directories and sockets,
/// so anything that could traverse paths must be refused here.
fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.len() > MAX_ID_LEN {
        return Err("longer than 76 bytes");
    }
    let mut prev_separator = true; // a separator may not come first
    for c in id.chars() {
        if c.is_ascii_alphanumeric() {
            prev_separator = false;
        } else if matches!(c, '.' | '_' | '-') {
            if prev_separator {
                return Err("'.', '_' and '-' must sit between letters or digits");
            }
            prev_separator = true;
        } else {
            return Err("only letters, digits, '.', '_' and '-' are allowed");
        }
    }
    if prev_separator {
        return Err("'.', '_' and '-' must sit between letters or digits");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: &str = "5f0c1a2b3c4d5e6f";

    fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn role(pairs: &[(&str, &str)]) -> Result<Role, RoleError> {
        Role::from_annotations(&ann(pairs))
    }

    #[test]
    fn no_pod_annotations_means_standalone() {
        assert_eq!(role(&[]), Ok(Role::Standalone));
        assert_eq!(
            role(&[
                ("io.okvm.vcpus", "2"),
                ("org.opencontainers.image.title", "x")
            ]),
            Ok(Role::Standalone)
        );
        assert_eq!(Role::Standalone.sandbox_id(), None);
    }

    #[test]
    fn containerd_sandbox_and_container() {
        let sandbox = role(&[
            (CRI_CONTAINER_TYPE, "sandbox"),
            (CRI_SANDBOX_ID, POD),
            (CRI_SANDBOX_NAME, "web-0"),
            (CRI_SANDBOX_NAMESPACE, "default"),
        ]);
        assert_eq!(
            sandbox,
            Ok(Role::PodSandbox {
                sandbox_id: POD.into()
            })
        );
        let container = role(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, POD)]);
        assert_eq!(
            container,
            Ok(Role::PodContainer {
                sandbox_id: POD.into()
            })
        );
        assert_eq!(
            container.map(|r| r.sandbox_id().map(str::to_owned)),
            Ok(Some(POD.into()))
        );
    }

    #[test]
    fn crio_sandbox_and_container() {
        assert_eq!(
            role(&[(CRIO_CONTAINER_TYPE, "sandbox"), (CRIO_SANDBOX_ID, POD)]),
            Ok(Role::PodSandbox {
                sandbox_id: POD.into()
            })
        );
        assert_eq!(
            role(&[(CRIO_CONTAINER_TYPE, "container"), (CRIO_SANDBOX_ID, POD)]),
            Ok(Role::PodContainer {
                sandbox_id: POD.into()
            })
        );
    }

    #[test]
    fn both_dialects_agreeing_is_fine() {
        assert_eq!(
            role(&[
                (CRI_CONTAINER_TYPE, "container"),
                (CRI_SANDBOX_ID, POD),
                (CRIO_CONTAINER_TYPE, "container"),
                (CRIO_SANDBOX_ID, POD),
            ]),
            Ok(Role::PodContainer {
                sandbox_id: POD.into()
            })
        );
    }

    #[test]
    fn dialects_that_disagree_are_a_conflict() {
        let err = role(&[
            (CRI_CONTAINER_TYPE, "container"),
            (CRI_SANDBOX_ID, POD),
            (CRIO_CONTAINER_TYPE, "sandbox"),
            (CRIO_SANDBOX_ID, POD),
        ]);
        assert!(
            matches!(
                err,
                Err(RoleError::Conflict {
                    cri_key: CRI_CONTAINER_TYPE,
                    ..
                })
            ),
            "{err:?}"
        );
        let err = role(&[
            (CRI_CONTAINER_TYPE, "container"),
            (CRI_SANDBOX_ID, POD),
            (CRIO_CONTAINER_TYPE, "container"),
            (CRIO_SANDBOX_ID, "other"),
        ]);
        assert!(
            matches!(
                err,
                Err(RoleError::Conflict {
                    cri_key: CRI_SANDBOX_ID,
                    ..
                })
            ),
            "{err:?}"
        );
    }

    #[test]
    fn container_without_sandbox_id_is_an_error() {
        for pairs in [
            &[(CRI_CONTAINER_TYPE, "container")][..],
            &[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "")][..],
            &[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "  ")][..],
            &[(CRIO_CONTAINER_TYPE, "container")][..],
            // The id of the *other* dialect does not count.
            &[(CRIO_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, POD)][..],
        ] {
            let err = role(pairs);
            assert!(
                matches!(
                    err,
                    Err(RoleError::MissingSandboxId { .. })
                        | Err(RoleError::SandboxIdWithoutType { .. })
                ),
                "{pairs:?} gave {err:?}"
            );
        }
        assert_eq!(
            role(&[(CRI_CONTAINER_TYPE, "container")])
                .expect_err("missing id")
                .to_string(),
            "annotation io.kubernetes.cri.container-type=container needs io.kubernetes.cri.sandbox-id \
             to name its pod sandbox, but it is missing or empty"
        );
    }

    #[test]
    fn unknown_container_type_is_an_error() {
        for value in ["Sandbox", "pod", "", "container "] {
            assert_eq!(
                role(&[(CRI_CONTAINER_TYPE, value), (CRI_SANDBOX_ID, POD)]),
                Err(RoleError::UnknownContainerType {
                    key: CRI_CONTAINER_TYPE,
                    value: value.into()
                }),
                "{value:?}"
            );
        }
        assert!(matches!(
            role(&[(CRIO_CONTAINER_TYPE, "infra"), (CRIO_SANDBOX_ID, POD)]),
            Err(RoleError::UnknownContainerType {
                key: CRIO_CONTAINER_TYPE,
                ..
            })
        ));
    }

    #[test]
    fn sandbox_id_without_container_type_is_an_error() {
        assert_eq!(
            role(&[(CRI_SANDBOX_ID, POD)]),
            Err(RoleError::SandboxIdWithoutType {
                id_key: CRI_SANDBOX_ID,
                type_key: CRI_CONTAINER_TYPE,
                sandbox_id: POD.into()
            })
        );
    }

    #[test]
    fn sandbox_ids_that_could_escape_a_directory_are_refused() {
        for bad in [
            "../etc",
            "a/b",
            ".hidden",
            "trailing-",
            "a..b",
            "sp ace",
            " padded ",
            &"x".repeat(77),
        ] {
            let err = role(&[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, bad)]);
            assert!(
                matches!(err, Err(RoleError::InvalidSandboxId { .. })),
                "{bad:?} gave {err:?}"
            );
        }
        for good in ["a", "pod-1.web_x", &"0".repeat(64), &"x".repeat(76)] {
            assert!(validate_id(good).is_ok(), "{good:?} refused");
        }
    }

    #[test]
    fn a_pods_sandbox_is_found_by_its_id_or_by_its_annotations() {
        use crate::state::{State, Status};
        let root = tempfile::tempdir().unwrap();
        let save = |id: &str, pairs: &[(&str, &str)]| {
            let c = Container::create(root.path(), id).unwrap();
            c.save(&State {
                oci_version: "1.2.0".into(),
                id: id.into(),
                status: Status::Running,
                pid: None,
                bundle: "/b".into(),
                annotations: ann(pairs),
                created: "t".into(),
                pod: None,
            })
            .unwrap();
        };
        // containerd: the sandbox container's id is the sandbox id.
        save(
            "sb1",
            &[(CRI_CONTAINER_TYPE, "sandbox"), (CRI_SANDBOX_ID, "sb1")],
        );
        // podman: the pod's id is not its infra container's.
        save(
            "infra",
            &[(CRIO_CONTAINER_TYPE, "sandbox"), (CRIO_SANDBOX_ID, "pod7")],
        );
        // A container of pod sb1 is not a sandbox for anyone.
        save(
            "pod7",
            &[(CRI_CONTAINER_TYPE, "container"), (CRI_SANDBOX_ID, "sb1")],
        );
        assert_eq!(sandbox_container(root.path(), "sb1", None).unwrap(), "sb1");
        assert_eq!(
            sandbox_container(root.path(), "pod7", None).unwrap(),
            "infra"
        );
        // podman's infra container carries no annotation: its VM is the one
        // whose sandbox process is in the pod's network namespace (here this
        // test process, in its own).
        save("podman-infra", &[]);
        Procs {
            sandbox: Some(crate::procs::Proc::me()),
            helpers: vec![],
            creator: None,
        }
        .save(&root.path().join("podman-infra"))
        .unwrap();
        let mine = Path::new("/proc/self/ns/net");
        assert_eq!(
            sandbox_container(root.path(), "podman-pod", Some(mine)).unwrap(),
            "podman-infra"
        );
        let e = sandbox_container(root.path(), "nope", None)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("pod sandbox nope is not an okvm container under"),
            "{e}"
        );
    }

    #[test]
    fn pod_name_needs_both_name_and_namespace() {
        assert_eq!(
            PodName::from_annotations(&ann(&[
                (CRI_SANDBOX_NAME, "web-0"),
                (CRI_SANDBOX_NAMESPACE, "prod")
            ])),
            Some(PodName {
                namespace: "prod".into(),
                name: "web-0".into()
            })
        );
        assert_eq!(
            PodName::from_annotations(&ann(&[(CRI_SANDBOX_NAME, "web-0")])),
            None
        );
    }
}
