//! A container's state directory, `<root>/<id>/`, and the state it records.
//!
//! The OCI lifecycle is enforced here, in one table ([`Status::allows`]), so
//! that every verb asks the same question before acting: starting a running
//! container or deleting one without `--force` fails with one clear message,
//! as with runc. `state.json` is replaced atomically, so a reader never sees a
//! half-written file, and the directory is created exclusively, so two
//! `create`s of one id cannot both succeed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Where runc-compatible runtimes keep state unless `--root` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/okvm";
const STATE_FILE: &str = "state.json";

/// The OCI runtime spec's container states, plus `paused` as runc reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

/// What a verb wants to do to a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Kill,
    Pause,
    Resume,
    Exec,
    /// Ask the guest for its resource usage (`events`).
    Stats,
    Delete,
    ForceDelete,
}

impl Status {
    /// Whether `action` is allowed in this state (runc's rules).
    pub fn allows(self, action: Action) -> bool {
        use Action::*;
        use Status::*;
        matches!(
            (self, action),
            (Created, Start)
                | (Created | Running | Paused, Kill)
                | (Running, Pause)
                | (Paused, Resume)
                | (Running, Exec)
                | (Created | Running, Stats)
                | (Created | Stopped, Delete)
                | (_, ForceDelete)
        )
    }
}

impl Status {
    /// What the recorded status means now, given the recorded processes and
    /// which of them are `alive`: a container whose sandbox process is gone
    /// has stopped, and so has one still `creating` whose creator (`okvm
    /// create`, the shim) is gone, as no one will ever finish creating it.
    /// (Its sandbox, should it still run, notices and ends; `delete` kills
    /// it all the same.)
    pub fn now(
        self,
        procs: &crate::procs::Procs,
        alive: impl Fn(&crate::procs::Proc) -> bool,
    ) -> Status {
        let gone = |p: Option<crate::procs::Proc>| !p.as_ref().is_some_and(&alive);
        match self {
            Status::Created | Status::Running | Status::Paused if gone(procs.sandbox) => {
                Status::Stopped
            }
            Status::Creating if procs.creator.is_some() && gone(procs.creator) => Status::Stopped,
            other => other,
        }
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        };
        f.write_str(s)
    }
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            Action::Start => "start",
            Action::Kill => "kill",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Exec => "exec in",
            Action::Stats => "get the stats of",
            Action::Delete | Action::ForceDelete => "delete",
        };
        f.write_str(s)
    }
}

/// The state `okvm state` prints (the OCI state JSON) plus what okvm itself
/// needs to find the sandbox again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct State {
    pub oci_version: String,
    pub id: String,
    pub status: Status,
    /// The sandbox (VMM) process, once it exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    pub bundle: PathBuf,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// RFC 3339, as runc's `state` prints it.
    pub created: String,
    /// The container whose VM this one runs in (its pod's sandbox), when it
    /// does not have a VM of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container id {0:?} is invalid: use letters, digits, '_', '-', '.', '+' and ':' (not starting with '.')")]
    BadId(String),
    #[error("container with id {0} already exists")]
    Exists(String),
    #[error("container {0} does not exist")]
    NotFound(String),
    #[error("cannot {action} container {id}: it is {status}")]
    Transition {
        id: String,
        status: Status,
        action: Action,
    },
    #[error("container {id}: state file {path}: {err}")]
    Corrupt {
        id: String,
        path: PathBuf,
        err: serde_json::Error,
    },
    #[error("{what} {path}: {err}")]
    Io {
        what: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

/// Container ids become directory names: runc's character set, no path tricks.
pub fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+:".contains(c));
    if ok {
        Ok(())
    } else {
        Err(Error::BadId(id.into()))
    }
}

/// Makes the runtime root (and its parents) if missing. It and every
/// container's directory are root's alone, as runc keeps its root: the
/// sockets in there drive the VM, and console.log holds what the guest printed.
pub fn create_root(root: &Path) -> Result<(), Error> {
    private_dir()
        .recursive(true)
        .create(root)
        .map_err(|err| Error::Io {
            what: "cannot create the state root",
            path: root.into(),
            err,
        })
}

fn private_dir() -> std::fs::DirBuilder {
    use std::os::unix::fs::DirBuilderExt;
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700);
    b
}

/// One container's directory under the runtime root.
#[derive(Debug, Clone)]
pub struct Container {
    pub id: String,
    pub dir: PathBuf,
}

impl Container {
    /// Claims `<root>/<id>/` for a new container; fails if the id is taken.
    pub fn create(root: &Path, id: &str) -> Result<Self, Error> {
        validate_id(id)?;
        create_root(root)?;
        let dir = root.join(id);
        match private_dir().create(&dir) {
            Ok(()) => Ok(Container { id: id.into(), dir }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                Err(Error::Exists(id.into()))
            }
            Err(err) => Err(Error::Io {
                what: "cannot create the state directory",
                path: dir,
                err,
            }),
        }
    }

    /// An existing container's directory.
    pub fn open(root: &Path, id: &str) -> Result<Self, Error> {
        validate_id(id)?;
        let dir = root.join(id);
        if !dir.join(STATE_FILE).is_file() {
            return Err(Error::NotFound(id.into()));
        }
        Ok(Container { id: id.into(), dir })
    }

    pub fn load(&self) -> Result<State, Error> {
        let path = self.dir.join(STATE_FILE);
        let bytes = std::fs::read(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound => Error::NotFound(self.id.clone()),
            _ => Error::Io {
                what: "cannot read",
                path: path.clone(),
                err,
            },
        })?;
        serde_json::from_slice(&bytes).map_err(|err| Error::Corrupt {
            id: self.id.clone(),
            path,
            err,
        })
    }

    /// Replaces state.json atomically (write beside it, fsync, rename).
    pub fn save(&self, state: &State) -> Result<(), Error> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(".state.json.tmp");
        let io = |what, err| Error::Io {
            what,
            path: path.clone(),
            err,
        };
        let bytes = serde_json::to_vec_pretty(state).expect("state serializes");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("cannot write", e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("cannot write", e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("cannot replace", e))
    }

    /// The recorded state, corrected by what is true now (see
    /// [`Status::now`]).
    pub fn current(&self) -> Result<State, Error> {
        let mut state = self.load()?;
        state.status = state.status.now(
            &crate::procs::Procs::load(&self.dir),
            crate::procs::Proc::alive,
        );
        Ok(state)
    }

    /// The current state, after checking that `action` is allowed in it.
    pub fn check(&self, action: Action) -> Result<State, Error> {
        let state = self.current()?;
        if state.status.allows(action) {
            Ok(state)
        } else {
            Err(Error::Transition {
                id: self.id.clone(),
                status: state.status,
                action,
            })
        }
    }

    /// Where this container's guest side is reached.
    pub fn address(&self, state: &State) -> crate::guest::Address {
        use crate::sandbox::VSOCK;
        match &state.pod {
            Some(pod) => crate::guest::Address {
                uds: self.dir.with_file_name(pod).join(VSOCK),
                container: Some(self.id.clone()),
            },
            None => crate::guest::Address {
                uds: self.dir.join(VSOCK),
                container: None,
            },
        }
    }

    /// Removes the directory and everything in it.
    pub fn remove(self) -> Result<(), Error> {
        std::fs::remove_dir_all(&self.dir).map_err(|err| Error::Io {
            what: "cannot remove the state directory",
            path: self.dir,
            err,
        })
    }
}

/// Every container under `root`, by id (for `list`).
pub fn list(root: &Path) -> Result<Vec<Container>, Error> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => {
            return Err(Error::Io {
                what: "cannot list",
                path: root.into(),
                err,
            })
        }
    };
    let mut out: Vec<_> = entries
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().to_str()?.to_string();
            Container::open(root, &id).ok()
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, status: Status) -> State {
        State {
            oci_version: "1.2.0".into(),
            id: id.into(),
            status,
            pid: Some(42),
            bundle: "/b".into(),
            annotations: BTreeMap::new(),
            created: "2026-11-22T00:00:00Z".into(),
            pod: None,
        }
    }

    #[test]
    fn lifecycle_rules_match_runc() {
        use Action::*;
        use Status::*;
        assert!(Created.allows(Start));
        assert!(!Running.allows(Start));
        assert!(!Stopped.allows(Start));
        assert!(!Running.allows(Delete));
        assert!(Running.allows(ForceDelete));
        assert!(Stopped.allows(Delete));
        assert!(!Stopped.allows(Kill));
        assert!(Running.allows(Pause) && Paused.allows(Resume));
        assert!(!Created.allows(Exec));
        // A paused guest cannot answer; a stopped one has no usage.
        assert!(Created.allows(Stats) && Running.allows(Stats));
        assert!(!Paused.allows(Stats) && !Stopped.allows(Stats));
    }

    #[test]
    fn a_container_whose_processes_are_gone_has_stopped() {
        use crate::procs::{Proc, Procs};
        use Status::*;
        let (live, dead) = (Proc { pid: 1, start: 1 }, Proc { pid: 2, start: 2 });
        let alive = |p: &Proc| p.pid == live.pid;
        let procs = |sandbox, creator| Procs {
            sandbox,
            helpers: vec![],
            creator,
        };
        for status in [Created, Running, Paused] {
            assert_eq!(status.now(&procs(Some(live), None), alive), status);
            assert_eq!(status.now(&procs(Some(dead), None), alive), Stopped);
            assert_eq!(status.now(&procs(None, None), alive), Stopped);
            // The creator no longer matters once created.
            assert_eq!(status.now(&procs(Some(live), Some(dead)), alive), status);
        }
        // Creating: its creator decides, whether or not a sandbox runs yet.
        assert_eq!(Creating.now(&procs(None, Some(live)), alive), Creating);
        assert_eq!(
            Creating.now(&procs(Some(dead), Some(live)), alive),
            Creating
        );
        assert_eq!(Creating.now(&procs(None, Some(dead)), alive), Stopped);
        assert_eq!(Creating.now(&procs(Some(live), Some(dead)), alive), Stopped);
        // Recorded by an okvm that did not record creators: as before.
        assert_eq!(Creating.now(&procs(None, None), alive), Creating);
        assert_eq!(Stopped.now(&procs(Some(live), Some(live)), alive), Stopped);
        // A stopped container may be deleted without --force.
        assert!(Stopped.allows(Action::Delete) && !Creating.allows(Action::Delete));
    }

    #[test]
    fn ids_are_checked_before_touching_the_disk() {
        for bad in ["", "../x", "a/b", ".hidden", "sp ace", "nul\0"] {
            assert!(matches!(validate_id(bad), Err(Error::BadId(_))), "{bad:?}");
        }
        for good in ["abc", "A-1_2.3+4:5", "0123456789abcdef"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn a_second_create_of_one_id_fails_and_state_round_trips() {
        let root = tempfile::tempdir().unwrap();
        let c = Container::create(root.path(), "c1").unwrap();
        assert!(matches!(
            Container::create(root.path(), "c1"),
            Err(Error::Exists(_))
        ));
        // Not visible until its state is written.
        assert!(matches!(
            Container::open(root.path(), "c1"),
            Err(Error::NotFound(_))
        ));
        c.save(&state("c1", Status::Created)).unwrap();
        let c = Container::open(root.path(), "c1").unwrap();
        assert_eq!(c.load().unwrap(), state("c1", Status::Created));
        // No live sandbox: it has stopped, whatever the file says.
        assert_eq!(c.current().unwrap().status, Status::Stopped);
        let sandbox = crate::procs::Proc::me();
        crate::procs::Procs {
            sandbox: Some(sandbox),
            helpers: vec![],
            creator: None,
        }
        .save(&c.dir)
        .unwrap();
        assert_eq!(c.current().unwrap().status, Status::Created);
        let e = c.check(Action::Resume).unwrap_err().to_string();
        assert_eq!(e, "cannot resume container c1: it is created");
        c.check(Action::Start).unwrap();
        assert_eq!(list(root.path()).unwrap().len(), 1);
        c.remove().unwrap();
        assert!(list(root.path()).unwrap().is_empty());
        assert!(matches!(
            Container::open(root.path(), "c1"),
            Err(Error::NotFound(_))
        ));
    }

    #[test]
    fn a_pod_container_is_reached_through_its_pods_vm() {
        let c = Container {
            id: "c2".into(),
            dir: "/run/okvm/c2".into(),
        };
        let mut s = state("c2", Status::Running);
        let own = c.address(&s);
        assert_eq!(
            (own.uds, own.container),
            ("/run/okvm/c2/vsock".into(), None)
        );
        s.pod = Some("sb".into());
        let member = c.address(&s);
        assert_eq!(member.uds, Path::new("/run/okvm/sb/vsock"));
        assert_eq!(member.container.as_deref(), Some("c2"));
    }

    #[test]
    fn the_state_json_is_the_oci_shape() {
        let v = serde_json::to_value(state("c", Status::Running)).unwrap();
        assert_eq!(v["ociVersion"], "1.2.0");
        assert_eq!(v["status"], "running");
        assert_eq!(v["pid"], 42);
        assert_eq!(v["bundle"], "/b");
        assert!(v.get("annotations").is_none());
    }

    #[test]
    fn a_corrupt_state_file_is_named() {
        let root = tempfile::tempdir().unwrap();
        let c = Container::create(root.path(), "c").unwrap();
        std::fs::write(c.dir.join(STATE_FILE), b"{not json").unwrap();
        let e = Container::open(root.path(), "c")
            .unwrap()
            .load()
            .unwrap_err()
            .to_string();
        assert!(e.contains("state.json"), "{e}");
    }

    #[test]
    fn listing_a_missing_root_is_empty() {
        assert!(list(Path::new("/nonexistent/okvm-root"))
            .unwrap()
            .is_empty());
    }
}
