//! `containerd-shim-okvm-v2`: the program containerd runs for the
//! `io.containerd.okvm.v2` runtime.

use std::process::ExitCode;

use containerd_shim_okvm_v2::flags::{self, Invocation, USAGE};

const NAME: &str = env!("CARGO_BIN_NAME");

fn main() -> ExitCode {
    match flags::parse(std::env::args_os().skip(1)) {
        Ok(Invocation::Version) => {
            println!("{NAME} {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Ok(Invocation::Help) => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        Ok(Invocation::Run { flags, .. }) => {
            // Check what containerd must always pass before saying anything
            // else, so that a broken invocation is reported as such.
            if let Err(err) = flags.check_required() {
                return usage_error(&err);
            }
            eprintln!(
                "{NAME}: the Task service is not implemented yet (see issue: containerd shim)"
            );
            ExitCode::FAILURE
        }
        Err(err) => usage_error(&err),
    }
}

/// Go's flag package exits with status 2 on a usage error; containerd only
/// checks for non-zero, but people comparing shims may look for the same.
fn usage_error(err: &flags::FlagError) -> ExitCode {
    eprintln!("{NAME}: {err}\n\n{USAGE}");
    ExitCode::from(2)
}
