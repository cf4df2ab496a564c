//! `containerd-shim-okvm-v2`: the program containerd runs for the
//! `io.containerd.okvm.v2` runtime.

use containerd_shim_okvm_v2::service::OkvmShim;
use containerd_shim_okvm_v2::RUNTIME_ID;

fn main() {
    // The sandbox and exec proxies are this binary too.
    okvm::internal::dispatch();
    if let Some(flag) = std::env::args().nth(1) {
        if flag == "-v" || flag == "--version" || flag == "-version" {
            println!("{} {}", env!("CARGO_BIN_NAME"), env!("CARGO_PKG_VERSION"));
            return;
        }
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{}: cannot start: {e}", env!("CARGO_BIN_NAME"));
            std::process::exit(1)
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<OkvmShim>(
        RUNTIME_ID, None,
    ));
}
