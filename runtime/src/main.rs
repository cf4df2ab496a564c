//! `okvm`: the runc-compatible command line of the okvm runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "okvm",
    about = "OCI runtime that runs each container as a KVM microVM",
    disable_version_flag = true,
    subcommand_required = false,
    arg_required_else_help = true
)]
struct Cli {
    #[command(flatten)]
    global: liboci_cli::GlobalOpts,
    /// Print the version (runc's format).
    #[arg(short = 'v', long)]
    version: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Standard(Box<liboci_cli::StandardCmd>),
    #[command(flatten)]
    Common(Box<liboci_cli::CommonCmd>),
    /// Say in one line whether /dev/kvm is usable at hardware speed; exit 0 if so, 1 if not.
    CheckKvm,
    /// Boot a kernel in a microVM in the foreground; exit 0 when the guest powers off.
    Boot(BootArgs),
    /// Pack okvm-init into the guest's uncompressed initramfs.
    Initramfs {
        /// The static okvm-init binary.
        #[arg(long)]
        init: PathBuf,
        /// Where to write the initramfs.
        #[arg(long, short)]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct BootArgs {
    /// Guest kernel: an uncompressed ELF vmlinux or a bzImage.
    #[arg(long)]
    kernel: PathBuf,
    /// Initramfs (uncompressed cpio, or whatever the kernel can unpack).
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line (okvm appends `acpi=off` and the virtio-mmio device list).
    #[arg(long, default_value = okvm::sandbox::CMDLINE)]
    cmdline: String,
    /// Number of vCPUs (1 to 8).
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256)]
    mem: u64,
    /// Serial console: stdio, off, or a file path.
    #[arg(long, default_value = "stdio")]
    console: String,
    /// Share host directory DIR with the guest as virtio-fs tag TAG (repeatable;
    /// one virtiofsd each). In the guest: mount -t virtiofs TAG /mnt.
    #[arg(long = "share", value_name = "TAG=DIR", value_parser = okvm::boot::parse_share)]
    shares: Vec<(String, PathBuf)>,
    /// Give the guest a virtio-vsock device, reached from the host through the
    /// Unix socket PATH: connect and send `CONNECT <port>\n` to reach a guest
    /// port; the guest's connections to host port P arrive at PATH_P.
    #[arg(long, value_name = "PATH")]
    vsock_uds: Option<PathBuf>,
    /// Give the guest a virtio-net NIC on this existing tap interface (okvm
    /// does not create it: `ip tuntap add NAME mode tap`).
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// The NIC's MAC address (default: derived from the tap's name).
    #[arg(long, requires = "tap", value_parser = okvm::boot::parse_mac)]
    mac: Option<[u8; 6]>,
}

fn main() -> ExitCode {
    okvm::internal::dispatch();
    let cli = parse();
    let format = match cli.global.log_format.as_deref().unwrap_or("text").parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("okvm: error: {e}");
            return ExitCode::from(2);
        }
    };
    let level = if cli.global.debug {
        log::LevelFilter::Debug
    } else {
        log::LevelFilter::Warn
    };
    let mut ctx = okvm::cli::Context::new(cli.global.root.clone());
    okvm::logger::init(level, cli.global.log.as_deref(), format);
    if cli.version {
        println!(
            "okvm version {}\nspec: {}",
            env!("CARGO_PKG_VERSION"),
            okvm::cli::OCI_VERSION
        );
        return ExitCode::SUCCESS;
    }
    let cli_log_is_file = cli.global.log.is_some();
    ctx.log = cli.global.log.clone();
    ctx.log_format = cli.global.log_format.clone();
    ctx.debug = cli.global.debug;
    let Some(command) = cli.command else {
        eprintln!("okvm: error: no command given (okvm --help lists them)");
        return ExitCode::from(2);
    };
    match run(&ctx, command) {
        Ok(code) => code,
        // runc exits 1 on any error; usage errors (clap) exit 2.
        Err(e) => {
            // On stderr for a person, and in the log for conmon/containerd,
            // which read the runtime's error from the --log file.
            eprintln!("okvm: error: {e:#}");
            if cli_log_is_file {
                log::error!("{e:#}");
            }
            ExitCode::from(1)
        }
    }
}

/// The command line, with liboci-cli's help texts put in okvm's words.
fn parse() -> Cli {
    use clap::{CommandFactory, FromArgMatches};
    let cmd = Cli::command()
        .mut_arg("log", |a| {
            a.help("Write okvm's log to this file instead of stderr")
        })
        .mut_arg("debug", |a| a.help("Log at debug level"))
        .mut_arg("log_format", |a| {
            a.help("Log format: text (default) or json")
        })
        .mut_arg("systemd_cgroup", |a| {
            a.help("Accepted for runc compatibility (the VM is the boundary)")
        })
        // runc's kill sends SIGTERM when no signal is named.
        .mut_subcommand("kill", |c| {
            c.mut_arg("signal", |a| a.required(false).default_value("SIGTERM"))
        })
        // liboci-cli spells it "checkpointt"; okvm cannot checkpoint anyway.
        .mut_subcommand("checkpointt", |c| c.hide(true));
    let matches = cmd.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// runc's verbs okvm does not offer say so plainly.
fn not_supported(verb: &str, why: &str) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`{verb}` is not supported by okvm: {why}")
}

fn done(r: anyhow::Result<()>) -> anyhow::Result<ExitCode> {
    r.map(|()| ExitCode::SUCCESS)
}

fn run(ctx: &okvm::cli::Context, command: Command) -> anyhow::Result<ExitCode> {
    use liboci_cli::{CommonCmd, StandardCmd};
    match command {
        Command::Standard(cmd) => match *cmd {
            StandardCmd::State(a) => done(okvm::cli::state::run(ctx, a)),
            StandardCmd::Create(a) => done(okvm::cli::create::run(ctx, a)),
            StandardCmd::Start(a) => done(okvm::cli::start::run(ctx, a)),
            StandardCmd::Kill(a) => done(okvm::cli::kill::run(ctx, a)),
            StandardCmd::Delete(a) => done(okvm::cli::delete::run(ctx, a)),
        },
        Command::Common(cmd) => match *cmd {
            CommonCmd::List(a) => done(okvm::cli::list::run(ctx, a)),
            CommonCmd::Spec(a) => done(okvm::cli::spec::run(a)),
            CommonCmd::Features(_) => done(okvm::cli::features::run()),
            CommonCmd::Exec(a) => okvm::cli::exec::run(ctx, a),
            CommonCmd::Run(a) => okvm::cli::run::run(ctx, a),
            CommonCmd::Ps(a) => done(okvm::cli::ps::run(ctx, a)),
            CommonCmd::Pause(a) => done(okvm::cli::pause::pause(ctx, a)),
            CommonCmd::Resume(a) => done(okvm::cli::pause::resume(ctx, a)),
            CommonCmd::Events(a) => done(okvm::cli::events::run(ctx, a)),
            CommonCmd::Update(_) => not_supported("update", "a running VM is not resized yet"),
            CommonCmd::Checkpointt(_) => {
                not_supported("checkpoint", "VM snapshots are not implemented")
            }
        },
        Command::CheckKvm => {
            let verdict = okvm::kvm_check::check(&okvm::kvm_check::Probe::default());
            println!("{verdict}");
            Ok(if verdict.is_hardware() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Boot(a) => {
            // Files only: the VMM itself reports a KVM that does not work, and a
            // throw-away test VM would cost start-up time on every boot.
            let verdict = okvm::kvm_check::check_files(&okvm::kvm_check::Probe::default());
            if !verdict.is_hardware() {
                eprintln!("okvm: warning: {verdict}");
            }
            let console = match a.console.as_str() {
                "stdio" => okvm_vmm::vm::Console::Stdout,
                "off" => okvm_vmm::vm::Console::Off,
                path => okvm_vmm::vm::Console::File(path.into()),
            };
            let vm = okvm_vmm::vm::VmConfig {
                kernel: a.kernel,
                initrd: a.initrd,
                cmdline: a.cmdline,
                vcpus: a.vcpus,
                mem_mib: a.mem,
                console,
                fs: Vec::new(),
                vsock: a.vsock_uds.map(|uds| okvm_vmm::vm::VsockConfig {
                    guest_cid: okvm::boot::GUEST_CID,
                    uds,
                }),
                net: a.tap.map(|tap| okvm_vmm::vm::NetConfig {
                    mac: a.mac.unwrap_or_else(|| okvm::boot::mac_for(&tap)),
                    tap,
                }),
            };
            okvm::boot::run(vm, &a.shares)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Initramfs { init, output } => {
            let bin = std::fs::read(&init)
                .with_context(|| format!("cannot read okvm-init at {}", init.display()))?;
            let image = okvm::initramfs::okvm_initramfs(bin)?;
            write_atomically(&output, &image)
                .with_context(|| format!("cannot write {}", output.display()))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Readers never see a half-written file: write beside the target, then rename.
/// On failure the temporary file is removed.
fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = dir
        .unwrap_or_else(|| std::path::Path::new("."))
        .join(format!(".okvm-tmp-{}", std::process::id()));
    let result = std::fs::File::create(&tmp)
        .and_then(|mut f| {
            std::io::Write::write_all(&mut f, data)?;
            f.sync_all()
        })
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
