//! `okvm`: the runc-compatible command line of the okvm runtime.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "okvm",
    version,
    about = "OCI runtime that runs each container as a KVM microVM"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Say in one line whether /dev/kvm is usable at hardware speed; exit 0 if so, 1 if not.
    CheckKvm,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("okvm: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::CheckKvm => {
            let verdict = okvm::kvm_check::check(&okvm::kvm_check::Probe::default());
            println!("{verdict}");
            Ok(if verdict.is_hardware() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
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
fn write_atomically(path: &std::path::Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = dir.unwrap_or_else(|| std::path::Path::new("."));
    let mut tmp = tempfile_in(dir)?;
    std::io::Write::write_all(&mut tmp.1, data)?;
    tmp.1.sync_all()?;
    std::fs::rename(&tmp.0, path)
}

fn tempfile_in(dir: &std::path::Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = dir.join(format!(".okvm-tmp-{}", std::process::id()));
    let f = std::fs::File::create(&name)?;
    Ok((name, f))
}
