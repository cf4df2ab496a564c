//! The sandbox process: one per container, started detached by `create`.
//!
//! It assembles the share in a mount namespace of its own, starts virtiofsd,
//! boots the VM on a thread, has okvm-init prepare the container process, and
//! tells `create` (over the sync pipe, fd 3) that the container exists. It then
//! carries the process's stdio, relays the signals it receives, and when the
//! process ends exits the same way (its code, or death by its signal), so that
//! conmon or containerd see what runc would have shown.

pub mod ending;
mod member;
pub mod share;

use std::io::{Read, Write};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use nix::sys::signal::{SigSet, Signal};
use okvm_protocol::{RequestBody, ResponseBody, CONTROL_PORT};
use serde::{Deserialize, Serialize};

use crate::bundle::{Bundle, SHARE_TAG};
use crate::guest::{host_port_path, Address, Client};
use crate::procs::{Proc, Procs};
use crate::relay::Ports;
use crate::virtiofsd::Virtiofsd;
use crate::{assets, network, relay};
pub use ending::Ending;
pub use member::{handed_to_guest, remove_part_main, PartArgs};

/// The write end of the pipe `create` reads the outcome from.
pub const SYNC_FD: RawFd = 3;
/// Files in the state directory.
pub const VSOCK: &str = "vsock";
pub const CONSOLE: &str = "console.log";
pub const LOG: &str = "sandbox.log";
pub const SHARE: &str = "share";
const FS_SOCKET: &str = "fs.sock";
/// Host vsock ports of the container process's streams (`base..base+3`).
pub const CONTAINER_PORTS: u32 = 1100;
/// How the sandbox (a pod container's helper, an exec proxy) exits when the
/// process it stands for ended in a way nobody saw: the VM failed, the guest
/// was lost, virtiofsd died (docs/oci.md, "Crashes").
pub const LOST: u8 = ending::NONSENSE;
/// After the process ended, its last output may still be on its way.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The default guest command line (okvm-init and the VMM add the rest).
pub const CMDLINE: &str = "console=ttyS0 reboot=k panic=-1 quiet";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Args {
    pub root: PathBuf,
    pub id: String,
    pub bundle: PathBuf,
    pub console_socket: Option<PathBuf>,
    /// The pod's sandbox container whose VM this container joins (None: the
    /// container boots a VM of its own).
    #[serde(default)]
    pub pod: Option<String>,
    /// The host's policy, as `create` read and checked it.
    pub config: crate::config::Config,
}

/// What a helper (the sandbox, an exec proxy) tells the process that
/// started it, over [`SYNC_FD`].
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub error: Option<String>,
    /// The process's pid in the guest, once it exists.
    #[serde(default)]
    pub guest_pid: Option<u32>,
    /// The error is a deadline the guest missed, and nothing more: the
    /// starter gets it typed again (the shim answers DeadlineExceeded).
    #[serde(default)]
    pub timed_out: Option<crate::guest::TimedOut>,
}

impl Outcome {
    /// Sends the outcome of start-up to the starter and lets go of the pipe;
    /// fails when the starter is gone.
    pub fn report<T>(
        result: &anyhow::Result<T>,
        guest_pid: impl Fn(&T) -> u32,
    ) -> std::io::Result<()> {
        // SAFETY: the starter passed the pipe as fd 3 and nothing else in this
        // process uses that number; the File takes ownership of it.
        let mut sync = unsafe { std::fs::File::from_raw_fd(SYNC_FD) };
        let error = result.as_ref().err();
        let outcome = Outcome {
            error: error.map(|e| format!("{e:#}")),
            guest_pid: result.as_ref().ok().map(guest_pid),
            timed_out: error
                .filter(|e| e.chain().count() == 1)
                .and_then(crate::guest::timed_out)
                .cloned(),
        };
        sync.write_all(&serde_json::to_vec(&outcome).unwrap_or_default())
    }

    /// The helper's error, if it reported one: typed again where it was
    /// a missed deadline.
    pub fn error(&self) -> Option<anyhow::Error> {
        let message = self.error.as_ref()?;
        Some(match &self.timed_out {
            Some(t) if t.to_string() == *message => t.clone().into(),
            _ => anyhow::anyhow!("{message}"),
        })
    }

    /// Reads what the helper reported: None when it ended without a word.
    pub fn read(read: std::os::fd::OwnedFd) -> Option<Outcome> {
        let mut buf = Vec::new();
        std::fs::File::from(read).read_to_end(&mut buf).ok()?;
        serde_json::from_slice(&buf).ok()
    }
}

/// Signals the sandbox passes on to the container process (not SIGCHLD,
/// SIGPIPE or the stop/continue family, which are about the sandbox itself).
pub fn relayed_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGHUP,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGUSR1,
        Signal::SIGUSR2,
        Signal::SIGALRM,
        Signal::SIGTERM,
        Signal::SIGWINCH,
    ] {
        set.add(s);
    }
    set
}

/// The sandbox's whole life; never returns.
pub fn main(args: Args) -> ! {
    if let Some(pod) = args.pod.clone() {
        member::main(args, pod)
    }
    crate::internal::created(prepare(&args), |r| r.guest_pid).run()
}

struct Running {
    client: Client,
    guest_pid: u32,
    address: Address,
    attached: relay::Attached,
    // Dropped (stopped) only when the process exits.
    _virtiofsd: Virtiofsd,
}

fn prepare(args: &Args) -> anyhow::Result<Running> {
    let dir = args.root.join(&args.id);
    // First of all, so that `delete` finds whatever this process makes
    // from here on, whenever it comes.
    let mut procs =
        Procs::record_sandbox(&dir).with_context(|| format!("cannot write {}", dir.display()))?;
    let bundle = Bundle::load(&args.bundle)?;
    let mut plan = bundle.plan(&args.id, &args.config)?;
    let net_mode = network::Mode::of(&bundle.spec)?;
    check_console(plan.terminal, args.console_socket.as_deref())?;
    if bundle
        .spec
        .linux()
        .as_ref()
        .is_some_and(|l| l.seccomp().is_some())
    {
        // docs/oci.md: the VM is the boundary; the guest kernel serves only
        // this container.
        log::warn!(
            "container {}: the seccomp profile is not applied in the guest",
            args.id
        );
    }
    let kernel = assets::kernel()?;
    let initrd = assets::initrd()?;
    let fsd_bin = crate::virtiofsd::find()?;

    // Before any thread: mirror mode moves this process into the engine's
    // network namespace.
    let net = network::setup(&net_mode, &args.id, &dir)?;
    if let Some(resolv) = &net.resolv_conf {
        plan.bind_unless_mounted(resolv.clone(), "/etc/resolv.conf");
    }
    share::private_namespace()?;
    let share = dir.join(SHARE);
    share::assemble(&share, share::take(&plan.entries)?)?;
    let virtiofsd = Virtiofsd::start(
        &fsd_bin,
        &share,
        &dir.join(FS_SOCKET),
        &dir.join("virtiofsd.log"),
        plan.mem_mib,
    )?;
    // The container's files are virtiofsd's to serve: without it the
    // container cannot go on (it would hang on its next file access), so
    // its end ends the container, with the reason in this log.
    virtiofsd.on_exit(|how| {
        log::error!(
            "virtiofsd exited ({how}): the container's root filesystem is gone; ending the container"
        );
        std::process::exit(LOST.into())
    });
    // After virtiofsd started: it sets its own limit.
    okvm_vmm::vm::limit_open_files().context("cannot limit the sandbox's open files")?;
    procs.helpers = Proc::of(virtiofsd.pid() as i32).into_iter().collect();
    procs
        .save(&dir)
        .with_context(|| format!("cannot write {}", dir.display()))?;

    let uds = dir.join(VSOCK);
    let ready = UnixListener::bind(host_port_path(&uds, CONTROL_PORT))
        .with_context(|| format!("cannot listen on {}", uds.display()))?;
    let pending = relay::prepare(
        &uds,
        Ports::At(CONTAINER_PORTS),
        args.console_socket.as_deref(),
    )?;

    let vm = okvm_vmm::vm::VmConfig {
        kernel,
        initrd: Some(initrd),
        cmdline: CMDLINE.into(),
        vcpus: plan.vcpus,
        mem_mib: plan.mem_mib,
        console: okvm_vmm::vm::Console::File(dir.join(CONSOLE)),
        fs: vec![okvm_vmm::vm::FsShare {
            tag: SHARE_TAG.into(),
            socket: virtiofsd.socket().into(),
        }],
        net: net.nic.clone(),
        vsock: Some(okvm_vmm::vm::VsockConfig {
            guest_cid: crate::boot::GUEST_CID,
            uds: uds.clone(),
        }),
    };
    log::debug!(
        "container {}: booting {} vCPU(s), {} MiB",
        args.id,
        vm.vcpus,
        vm.mem_mib
    );
    let console = dir.join(CONSOLE);
    let vmm = std::thread::Builder::new()
        .name("vmm".into())
        .spawn(move || {
            // The container's end exits the process; the VM never ends first
            // unless something went wrong.
            let outcome = okvm_vmm::vm::run(&vm);
            let tail = console_tail(&console);
            match outcome {
                Ok(_) => log::error!("the guest powered off before the container ended{tail}"),
                Err(e) => log::error!("the VM failed: {e}{tail}"),
            }
            std::process::exit(LOST.into())
        })
        .context("cannot start the VMM thread")?;

    let stream = accept_ready(&ready, &vmm, &dir.join(CONSOLE))?;
    drop(ready);
    let _ = std::fs::remove_file(host_port_path(&uds, CONTROL_PORT));
    let (mut client, _ready) = Client::announced(stream)?;
    match client.request(RequestBody::Network {
        interfaces: net.guest,
    })? {
        ResponseBody::Done => {}
        ResponseBody::Error { message } => bail!("cannot configure the guest's network: {message}"),
        other => bail!(crate::guest::unexpected("the network settings", &other)),
    }
    let (guest_pid, attached) = create_in_guest(&mut client, plan.container, pending)?;
    Ok(Running {
        client,
        guest_pid,
        address: Address {
            uds,
            container: None,
        },
        attached,
        _virtiofsd: virtiofsd,
    })
}

/// A terminal needs a console socket, and a console socket a terminal.
fn check_console(terminal: bool, console_socket: Option<&Path>) -> anyhow::Result<()> {
    match (terminal, console_socket) {
        (true, None) => bail!("process.terminal is set, but no --console-socket was given"),
        (false, Some(_)) => bail!("--console-socket was given, but process.terminal is not set"),
        _ => Ok(()),
    }
}

/// Has okvm-init prepare `container` (up to its exec) with the stdio
/// `pending` waits for; returns its guest pid and its attached streams.
fn create_in_guest(
    client: &mut Client,
    container: okvm_protocol::ContainerSpec,
    pending: relay::Pending,
) -> anyhow::Result<(u32, relay::Attached)> {
    let id = container.id.clone();
    let created = client.request(RequestBody::Create {
        container: Box::new(container),
        stdio: pending.stdio.clone(),
    })?;
    let guest_pid = match created {
        ResponseBody::Created { pid } => {
            log::debug!("container {id}: guest pid {pid}");
            pid
        }
        ResponseBody::Error { message } => bail!("{message}"),
        other => bail!(crate::guest::unexpected("create", &other)),
    };
    Ok((guest_pid, pending.attach_session()?))
}

fn accept_ready(
    listener: &UnixListener,
    vmm: &std::thread::JoinHandle<()>,
    console: &Path,
) -> anyhow::Result<std::os::unix::net::UnixStream> {
    let limit = crate::guest::boot_timeout();
    let deadline = Instant::now() + limit;
    let stream = relay::accept_while(listener, || {
        !vmm.is_finished() && Instant::now() < deadline && !crate::internal::starter_gone()
    })
    .context("waiting for the guest")?;
    match stream {
        Some(s) => Ok(s),
        None if crate::internal::starter_gone() => Err(crate::internal::StarterGone.into()),
        None if vmm.is_finished() => bail!("the VM stopped before the guest was ready"),
        None => bail!(
            "the guest was not ready within {} s{}",
            limit.as_secs(),
            console_tail(console)
        ),
    }
}

/// The console's last lines, for an error message.
fn console_tail(path: &Path) -> String {
    let lines = crate::logger::last_lines(path, 5);
    if lines.is_empty() {
        return String::new();
    }
    // Guest output: quoted, so it cannot forge lines of the log it lands in.
    let lines: Vec<String> = lines
        .iter()
        .map(|l| okvm_vmm::ratelimit::quote(l).to_string())
        .collect();
    format!(" (guest console: {})", lines.join(" | "))
}

impl Running {
    fn run(self) -> ! {
        follow(self.client, &self.address, None, self.attached)
    }
}

/// The host side of one guest process until its end: passes on the signals
/// this process receives, waits for the process (the container's when `pid`
/// is None), lets its last output through, and ends this process as it ended.
/// Shared by the sandbox and `okvm exec`'s proxy.
pub fn follow(client: Client, address: &Address, pid: Option<u32>, attached: relay::Attached) -> ! {
    match wait_end(client, address, pid, attached) {
        Some((code, signal)) => exit_like(code, signal),
        None => std::process::exit(LOST.into()),
    }
}

/// [`follow`] up to the process's end: its exit code or signal (None: the
/// guest was lost).
fn wait_end(
    mut client: Client,
    address: &Address,
    pid: Option<u32>,
    attached: relay::Attached,
) -> Option<(Option<i32>, Option<i32>)> {
    let (to, tty) = (address.clone(), attached.tty());
    let _ = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || relay_signals(&to, pid, tty));
    match client.request(RequestBody::Wait { pid }) {
        Ok(ResponseBody::Exited { code, signal, .. }) => {
            attached.drain(DRAIN_TIMEOUT);
            return Some((code, signal));
        }
        Ok(other) => log::error!("{}", crate::guest::unexpected("wait", &other)),
        Err(e) => log::error!("lost the guest while waiting for its process: {e}"),
    }
    None
}

/// Passes the signals this process receives on to process `pid` in the guest
/// (the container process when None); SIGWINCH becomes a resize of the
/// terminal `tty`. Runs forever on its own thread.
pub fn relay_signals(address: &Address, pid: Option<u32>, tty: Option<RawFd>) {
    let set = relayed_signals();
    let mut client = None;
    loop {
        let Ok(sig) = set.wait() else { continue };
        let body = if sig == Signal::SIGWINCH {
            let Some((rows, cols)) = tty.and_then(relay::winsize) else {
                continue;
            };
            RequestBody::Resize { pid, rows, cols }
        } else {
            RequestBody::Signal {
                pid,
                signal: sig as i32,
                all: false,
            }
        };
        if client.is_none() {
            client = address.connect().ok();
        }
        let Some(c) = client.as_mut() else {
            okvm_vmm::guest_warn!("cannot reach the guest to pass on {sig}");
            continue;
        };
        if let Err(e) = c.request(body) {
            okvm_vmm::guest_warn!("cannot pass on {sig}: {e}");
            client = None;
        }
    }
}

/// Ends this process the way the guest's process ended (its exit code, or
/// killed by the same signal, without a core dump of okvm), as far as the
/// guest's report is possible at all: [`ending`] says how.
pub fn exit_like(code: Option<i32>, signal: Option<i32>) -> ! {
    let end = Ending::of(code, signal);
    if !end.is_faithful(code, signal) {
        log::warn!(
            "the guest reported an impossible end (exit code {code:?}, signal {signal:?}): \
             ending with {end:?}"
        );
    }
    let n = match end {
        Ending::Code(c) => std::process::exit(c.into()),
        Ending::Signal(n) => n,
    };
    let _ = nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_CORE, 0, 0);
    // The default disposition of a signal whose default action ends the
    // process (Ending::of checked it is one, and none of glibc's own); then
    // it is unblocked in this thread and raised on this thread, so it is
    // delivered here before raise returns.
    // SAFETY: plain libc calls on a valid signal number; only a sigset_t on
    // our stack is written.
    unsafe {
        libc::signal(n, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, n);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(n);
    }
    // Not reached; should the signal be caught after all, as a shell says it.
    std::process::exit(128 + n)
}
