//! `okvm events [--stats] [--interval N] ID`: the container's resource usage
//! as runc prints it, one JSON object a line.
//!
//! The numbers are okvm-init's answer to `Stats` and are the whole guest's:
//! the VM is the container's cgroup, so its memory and CPU time are what runc
//! would read from the cgroup. runc's other events (OOM notices) have no
//! counterpart yet: only `stats` events are printed.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail};
use okvm_protocol::{GuestStats, RequestBody, ResponseBody};
use serde::Serialize;

use super::Context;
use crate::guest::Address;
use crate::state::{Action, Container, Error as StateError, Status};

/// The guest's resource usage now. The container must be created or
/// running: a paused guest cannot answer, a stopped one has nothing to tell.
pub fn stats(ctx: &Context, id: &str) -> anyhow::Result<GuestStats> {
    let container = Container::open(&ctx.root, id)?;
    let state = match container.check(Action::Stats) {
        Err(StateError::Transition {
            status: Status::Paused,
            ..
        }) => bail!("container {id} is paused: its guest cannot answer until it is resumed"),
        r => r?,
    };
    ask(&container.address(&state))
}

fn ask(address: &Address) -> anyhow::Result<GuestStats> {
    match address.call(RequestBody::Stats)? {
        ResponseBody::Stats(stats) => Ok(stats),
        ResponseBody::Error { message } => Err(anyhow!("{message}")),
        other => bail!(crate::guest::unexpected("stats", &other)),
    }
}

pub fn run(ctx: &Context, args: liboci_cli::Events) -> anyhow::Result<()> {
    let id = &args.container_id;
    if args.stats {
        let line = event_line(id, &stats(ctx, id)?)?;
        return match emit(&line) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
            _ => Ok(()),
        };
    }
    if args.interval == 0 {
        bail!("--interval must be at least 1 second");
    }
    let interval = Duration::from_secs(args.interval.into());
    let container = Container::open(&ctx.root, id)?;
    let status = container.current()?.status;
    // As runc: a stream is for a container that can still change.
    if status == Status::Stopped {
        return Err(StateError::Transition {
            id: id.clone(),
            status,
            action: Action::Stats,
        }
        .into());
    }
    loop {
        match reading(&container)? {
            Reading::Stats(stats) => match emit(&event_line(id, &stats)?) {
                Ok(()) => {}
                // Whoever read the stream has gone: nothing more to do.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
                Err(e) => return Err(e.into()),
            },
            Reading::NotNow => {}
            Reading::Ended => return Ok(()),
        }
        std::thread::sleep(interval);
    }
}

/// One look at a container being followed, which may pause, stop or be
/// deleted between two looks.
enum Reading {
    Stats(GuestStats),
    /// Paused (or not yet created): its guest cannot answer this time.
    NotNow,
    Ended,
}

fn reading(container: &Container) -> anyhow::Result<Reading> {
    let ended = |c: &Container| match c.current() {
        Ok(state) => Ok(state.status == Status::Stopped),
        Err(StateError::NotFound(_)) => Ok(true),
        Err(e) => Err(e),
    };
    let state = match container.current() {
        Err(StateError::NotFound(_)) => return Ok(Reading::Ended),
        Err(e) => return Err(e.into()),
        Ok(state) if state.status == Status::Stopped => return Ok(Reading::Ended),
        Ok(state) if !state.status.allows(Action::Stats) => return Ok(Reading::NotNow),
        Ok(state) => state,
    };
    match ask(&container.address(&state)) {
        Ok(stats) => Ok(Reading::Stats(stats)),
        // The guest powers off when the container ends, which can be while
        // it is being asked: that is the end of the stream, not an error.
        Err(_) if ended(container)? => Ok(Reading::Ended),
        Err(e) => Err(e),
    }
}

fn emit(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}")?;
    out.flush()
}

/// runc's `events` JSON (its `types.Event` and `types.Stats`), with the
/// parts a guest can tell.
#[derive(Debug, Serialize)]
struct Event<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    data: Stats,
}

#[derive(Debug, Serialize)]
struct Stats {
    cpu: Cpu,
    memory: Memory,
    pids: Pids,
}

#[derive(Debug, Serialize)]
struct Cpu {
    usage: CpuUsage,
}

#[derive(Debug, Serialize)]
struct CpuUsage {
    total: u64,
    user: u64,
    kernel: u64,
}

#[derive(Debug, Serialize)]
struct Memory {
    usage: MemoryEntry,
    cache: u64,
}

#[derive(Debug, Serialize)]
struct MemoryEntry {
    usage: u64,
    limit: u64,
}

#[derive(Debug, Serialize)]
struct Pids {
    current: u64,
}

/// One `stats` event, as one line of JSON.
pub fn event_line(id: &str, s: &GuestStats) -> serde_json::Result<String> {
    serde_json::to_string(&Event {
        kind: "stats",
        id,
        data: Stats {
            cpu: Cpu {
                usage: CpuUsage {
                    total: s.cpu_usage_ns,
                    user: s.cpu_user_ns,
                    kernel: s.cpu_system_ns,
                },
            },
            memory: Memory {
                usage: MemoryEntry {
                    usage: s.memory_used_bytes,
                    // The guest's RAM is the container's memory limit.
                    limit: s.memory_total_bytes,
                },
                cache: s.memory_cache_bytes,
            },
            pids: Pids { current: s.pids },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(root: &std::path::Path) -> Context {
        Context::new(Some(root.into()))
    }

    #[test]
    fn the_line_has_runcs_keys() {
        let s = GuestStats {
            memory_total_bytes: 1000,
            memory_used_bytes: 300,
            memory_cache_bytes: 20,
            cpu_usage_ns: 90,
            cpu_user_ns: 60,
            cpu_system_ns: 25,
            pids: 2,
        };
        let line = event_line("c1", &s).unwrap();
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "type": "stats",
                "id": "c1",
                "data": {
                    "cpu": {"usage": {"total": 90, "user": 60, "kernel": 25}},
                    "memory": {"usage": {"usage": 300, "limit": 1000}, "cache": 20},
                    "pids": {"current": 2}
                }
            })
        );
    }

    #[test]
    fn a_missing_container_is_named() {
        let root = tempfile::tempdir().unwrap();
        let e = stats(&ctx(root.path()), "nosuch").unwrap_err().to_string();
        assert_eq!(e, "container nosuch does not exist");
    }

    /// A container in `status` whose sandbox is this test process (alive).
    fn container_in(root: &std::path::Path, status: Status) -> Container {
        let c = Container::create(root, "c").unwrap();
        c.save(&crate::state::State {
            oci_version: super::super::OCI_VERSION.into(),
            id: "c".into(),
            status,
            pid: Some(std::process::id() as i32),
            bundle: "/b".into(),
            annotations: Default::default(),
            created: "2026-01-01T00:00:00Z".into(),
            pod: None,
        })
        .unwrap();
        crate::procs::Procs {
            sandbox: Some(crate::procs::Proc::me()),
            helpers: vec![],
            creator: None,
        }
        .save(&c.dir)
        .unwrap();
        c
    }

    #[test]
    fn a_paused_guest_is_not_asked() {
        let root = tempfile::tempdir().unwrap();
        let c = container_in(root.path(), Status::Paused);
        let e = stats(&ctx(root.path()), "c").unwrap_err().to_string();
        assert!(e.contains("paused") && e.contains("resumed"), "{e}");
        assert!(matches!(reading(&c).unwrap(), Reading::NotNow));
    }

    #[test]
    fn a_stopped_container_ends_the_stream_and_refuses_stats() {
        let root = tempfile::tempdir().unwrap();
        let c = container_in(root.path(), Status::Stopped);
        let e = stats(&ctx(root.path()), "c").unwrap_err().to_string();
        assert_eq!(e, "cannot get the stats of container c: it is stopped");
        assert!(matches!(reading(&c).unwrap(), Reading::Ended));
        c.clone().remove().unwrap();
        assert!(matches!(reading(&c).unwrap(), Reading::Ended));
    }

    #[test]
    fn a_running_container_without_a_guest_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let c = container_in(root.path(), Status::Running);
        let e = format!("{:#}", stats(&ctx(root.path()), "c").unwrap_err());
        assert!(e.contains("cannot reach the guest"), "{e}");
        // Its sandbox (this process) is alive: the stream fails, not ends.
        assert!(reading(&c).is_err());
    }
}
