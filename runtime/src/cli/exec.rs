//! `okvm exec`: run another process in a running container.
//!
//! okvm-init starts the process in the container; this side is its proxy on
//! the host: it carries the process's stdio (or terminal), passes on the
//! signals it receives, and exits as the process did. With `--detach` the
//! proxy forks into the background and `--pid-file` names it, which is how
//! conmon runs `podman exec` and learns the exit code.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::{anyhow, bail, Context as _};
use oci_spec::runtime::{Process, User};
use okvm_protocol::{RequestBody, ResponseBody};

use super::create::write_pid_file;
use super::Context;
use crate::bundle::Bundle;
use crate::guest::{Address, Client};
use crate::relay;
use crate::sandbox::{follow, relayed_signals};
use crate::state::{Action, Container};

pub fn run(ctx: &Context, args: liboci_cli::Exec) -> anyhow::Result<ExitCode> {
    let container = Container::open(&ctx.root, &args.container_id)?;
    let state = container.check(Action::Exec)?;
    let process = process_for(&args, &state.bundle)?;
    let address = container.address(&state);
    let console = args.console_socket.as_deref();
    if process.terminal().unwrap_or(false) && console.is_none() {
        bail!("exec with a terminal needs --console-socket");
    }
    if !args.detach {
        let _ = relayed_signals().thread_block();
        let proxy = Proxy::start(&address, process, console)?;
        if let Some(p) = &args.pid_file {
            write_pid_file(p, std::process::id())?;
        }
        proxy.run();
    }
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    // SAFETY: this process is single-threaded here (no thread was started
    // before), so the child may run arbitrary code after fork.
    match unsafe { nix::unistd::fork() }.context("cannot fork the exec proxy")? {
        nix::unistd::ForkResult::Child => {
            drop(read);
            let _ = relayed_signals().thread_block();
            let _ = nix::unistd::setsid();
            let mut sync = std::fs::File::from(write);
            match Proxy::start(&address, process, console) {
                Ok(proxy) => {
                    let _ = sync.write_all(b"ok");
                    drop(sync);
                    proxy.run()
                }
                Err(e) => {
                    let _ = sync.write_all(format!("{e:#}").as_bytes());
                    std::process::exit(1)
                }
            }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(write);
            let mut msg = String::new();
            std::fs::File::from(read).read_to_string(&mut msg)?;
            if msg != "ok" {
                let _ = nix::sys::wait::waitpid(child, None);
                if msg.is_empty() {
                    bail!("the exec proxy ended during start-up");
                }
                bail!("{msg}");
            }
            if let Some(p) = &args.pid_file {
                write_pid_file(p, child.as_raw() as u32)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// What the shim starts an exec proxy with (see [`crate::internal`]).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ProxyArgs {
    pub root: std::path::PathBuf,
    pub id: String,
    /// The OCI process to run, as JSON.
    pub process: std::path::PathBuf,
    pub console_socket: Option<std::path::PathBuf>,
}

/// Starts an exec proxy for the shim, with `stdio` as the process's; returns
/// the proxy's pid (which exits as the process does) and the process's pid
/// in the guest.
pub fn start_proxy(
    ctx: &Context,
    args: ProxyArgs,
    stdio: Option<[std::os::fd::BorrowedFd<'_>; 3]>,
) -> anyhow::Result<(u32, u32)> {
    let (pid, outcome) =
        crate::internal::spawn(ctx, crate::internal::Task::ExecProxy(args), stdio)?;
    match outcome {
        Some(o) => match (o.error(), o.guest_pid) {
            (Some(e), _) => Err(e),
            (None, Some(guest)) => Ok((pid, guest)),
            (None, None) => bail!("the exec proxy reported no process"),
        },
        None => bail!("the exec proxy ended during start-up"),
    }
}

/// An exec proxy started by the shim: reports its start-up over the sync fd
/// (with the process's guest pid), then follows the process to its end.
pub fn proxy_main(args: ProxyArgs) -> ! {
    let started = (|| {
        let container = Container::open(&args.root, &args.id)?;
        let state = container.check(Action::Exec)?;
        let process = read_process(&args.process)?;
        Proxy::start(
            &container.address(&state),
            process,
            args.console_socket.as_deref(),
        )
    })();
    crate::internal::started(started, |p| p.pid).run()
}

fn read_process(path: &Path) -> anyhow::Result<Process> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("cannot parse {}", path.display()))
}

/// The process to run: `--process` as given, or the container's own process
/// with the command line's args and flags applied (as runc builds it).
fn process_for(args: &liboci_cli::Exec, bundle: &Path) -> anyhow::Result<Process> {
    if let Some(path) = &args.process {
        return read_process(path);
    }
    if args.command.is_empty() {
        bail!("exec needs a command, or --process");
    }
    let spec = Bundle::load(bundle)?.spec;
    let mut p = spec.process().clone().unwrap_or_default();
    p.set_args(Some(args.command.clone()));
    p.set_terminal(Some(args.tty));
    let mut env = p.env().clone().unwrap_or_default();
    env.extend(args.env.iter().map(|(k, v)| format!("{k}={v}")));
    p.set_env(Some(env));
    if let Some(cwd) = &args.cwd {
        p.set_cwd(cwd.clone());
    }
    if let Some((uid, gid)) = args.user {
        let mut user = User::default();
        user.set_uid(uid);
        user.set_gid(gid.unwrap_or(0));
        if !args.additional_gids.is_empty() {
            user.set_additional_gids(Some(args.additional_gids.clone()));
        }
        p.set_user(user);
    }
    if args.no_new_privs {
        p.set_no_new_privileges(Some(true));
    }
    if !args.cap.is_empty() {
        let mut caps = p.capabilities().clone().unwrap_or_default();
        for name in &args.cap {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap: oci_spec::runtime::Capability =
                serde_json::from_value(serde_json::Value::String(full))
                    .map_err(|_| anyhow!("unknown capability {name:?}"))?;
            let add = |s: &Option<oci_spec::runtime::Capabilities>| {
                let mut s = s.clone().unwrap_or_default();
                s.insert(cap);
                Some(s)
            };
            caps.set_bounding(add(caps.bounding()));
            caps.set_effective(add(caps.effective()));
            caps.set_permitted(add(caps.permitted()));
        }
        p.set_capabilities(Some(caps));
    }
    Ok(p)
}

struct Proxy {
    client: Client,
    address: Address,
    pid: u32,
    attached: relay::Attached,
}

impl Proxy {
    fn start(address: &Address, process: Process, console: Option<&Path>) -> anyhow::Result<Proxy> {
        let pending = relay::prepare(&address.uds, relay::Ports::Free, console)?;
        let mut client = address.connect()?;
        let pid = match client.request(RequestBody::Exec {
            process: Box::new(process),
            stdio: pending.stdio.clone(),
        })? {
            ResponseBody::Started { pid } => pid,
            ResponseBody::Error { message } => bail!("{message}"),
            other => bail!(crate::guest::unexpected("exec", &other)),
        };
        let attached = pending.attach_session()?;
        Ok(Proxy {
            client,
            address: address.clone(),
            pid,
            attached,
        })
    }

    fn run(self) -> ! {
        follow(self.client, &self.address, Some(self.pid), self.attached)
    }
}
