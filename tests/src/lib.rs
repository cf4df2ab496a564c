//! Helpers for tests that drive okvm's binaries as a user would.

pub mod net;
pub mod oci;

use std::path::PathBuf;

/// The workspace's target directory's profile dir holding the binaries under test
/// (`target/debug` or `target/release`), found from this test executable's path
/// (`target/<profile>/deps/<test>`), unless `OKVM_BIN_DIR` says otherwise.
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("OKVM_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps")
        .to_path_buf()
}

/// Path of one of okvm's binaries; panics with how to build it when missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.is_file(),
        "{} not found: build it first (`cargo build --workspace`, or `make`), or set OKVM_BIN_DIR",
        path.display()
    );
    path
}
