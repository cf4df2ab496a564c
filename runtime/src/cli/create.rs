//! `okvm create`: check the bundle, claim the state directory, start the
//! sandbox process, and return once the container process waits for `start`.

use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _};

use super::Context;
use crate::bundle::Bundle;
use crate::config::Config;
use crate::pod::Role;
use crate::sandbox::{self, Outcome};
use crate::state::{Container, State, Status};

pub struct Options<'a> {
    pub id: &'a str,
    pub bundle: &'a Path,
    pub console_socket: Option<&'a Path>,
    pub pid_file: Option<&'a Path>,
    /// The sandbox's stdin, stdout and stderr (the container process's,
    /// without a terminal); None: this process's own.
    pub stdio: Option<[BorrowedFd<'a>; 3]>,
}

pub fn run(ctx: &Context, args: liboci_cli::Create) -> anyhow::Result<()> {
    create(
        ctx,
        &Options {
            id: &args.container_id,
            bundle: &args.bundle,
            console_socket: args.console_socket.as_deref(),
            pid_file: args.pid_file.as_deref(),
            stdio: None,
        },
    )
    .map(drop)
}

/// Creates the container; returns the sandbox process's pid.
pub fn create(ctx: &Context, opts: &Options) -> anyhow::Result<u32> {
    crate::state::validate_id(opts.id)?;
    // Everything that can be checked is checked before anything is made:
    // the bundle, and what it asks for against the host's policy.
    let config = Config::load()?;
    let bundle = Bundle::load(opts.bundle)?;
    bundle.plan(opts.id, &config)?;
    // A pod's container runs in the VM its sandbox booted.
    let pod = match Role::from_annotations(&bundle.annotations())? {
        Role::PodContainer { sandbox_id } => {
            let netns = match crate::network::Mode::of(&bundle.spec)? {
                crate::network::Mode::Engine(path) => Some(path),
                _ => None,
            };
            Some(crate::pod::sandbox_container(
                &ctx.root,
                &sandbox_id,
                netns.as_deref(),
            )?)
        }
        Role::PodSandbox { .. } | Role::Standalone => None,
    };
    let container = Container::create(&ctx.root, opts.id)?;
    let result = start_sandbox(ctx, &container, &bundle, opts, pod, config);
    match result {
        Ok(pid) => Ok(pid),
        Err(e) => {
            // Nothing of a failed create stays behind.
            super::delete::destroy(ctx, container);
            Err(e)
        }
    }
}

fn start_sandbox(
    ctx: &Context,
    container: &Container,
    bundle: &Bundle,
    opts: &Options,
    pod: Option<String>,
    config: Config,
) -> anyhow::Result<u32> {
    let mut state = State {
        oci_version: super::OCI_VERSION.into(),
        id: opts.id.into(),
        status: Status::Creating,
        pid: None,
        bundle: bundle.dir.clone(),
        annotations: bundle.annotations(),
        created: now_rfc3339(),
        pod: pod.clone(),
    };
    // Until it is created, the container lives as long as this process:
    // `state` reports one whose creator is gone as stopped.
    crate::procs::Procs {
        creator: Some(crate::procs::Proc::me()),
        ..Default::default()
    }
    .save(&container.dir)
    .with_context(|| format!("cannot write {}", container.dir.display()))?;
    container.save(&state)?;

    let task = crate::internal::Task::Sandbox(sandbox::Args {
        root: ctx.root.clone(),
        id: opts.id.into(),
        bundle: bundle.dir.clone(),
        console_socket: opts.console_socket.map(absolute),
        pod,
        config,
    });
    let (pid, outcome) = crate::internal::spawn(ctx, task, opts.stdio)?;
    match outcome.as_ref().map(Outcome::error) {
        Some(None) => {}
        Some(Some(e)) => {
            // It exits once it reported: gone before its remains are removed.
            if let Some(helper) = crate::procs::Proc::of(pid as i32) {
                helper.wait_gone(std::time::Duration::from_secs(10));
            }
            return Err(e);
        }
        None => bail!(
            "the sandbox process ended during start-up{}{}",
            crate::internal::how_it_ended(pid),
            log_hint(&container.dir)
        ),
    }
    if let Some(p) = opts.pid_file {
        write_pid_file(p, pid)?;
    }
    state.status = Status::Created;
    state.pid = Some(pid as i32);
    container.save(&state)?;
    Ok(pid)
}

fn log_hint(dir: &Path) -> String {
    crate::logger::last_lines(&dir.join(sandbox::LOG), 1)
        .pop()
        .map(|l| format!(": {l}"))
        .unwrap_or_default()
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.into())
}

/// Written atomically, as runc does: conmon may read it at any moment.
pub fn write_pid_file(path: &Path, pid: u32) -> anyhow::Result<()> {
    let path = absolute(path);
    let tmp = path.with_file_name(format!(
        ".{}.okvm-tmp",
        path.file_name().unwrap_or_default().to_string_lossy()
    ));
    std::fs::write(&tmp, pid.to_string())
        .and_then(|()| std::fs::rename(&tmp, &path))
        .with_context(|| format!("cannot write pid file {}", path.display()))
}

/// RFC 3339 in UTC with nanoseconds, like runc's `created`.
pub fn now_rfc3339() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    // Civil date from days since 1970-01-01 (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        now.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z') && t.as_bytes()[10] == b'T');
    }
}
