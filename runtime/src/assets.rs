//! Where the guest kernel and okvm-init's initramfs are: `$OKVM_KERNEL` and
//! `$OKVM_INITRD`, else beside the installed binary (`make install`:
//! `<prefix>/bin/okvm` with `<prefix>/share/okvm/`), else the build tree
//! (`target/release/okvm` with `target/okvm/`).

use std::path::{Path, PathBuf};

pub const KERNEL: &str = "vmlinux";
pub const INITRD: &str = "okvm-initrd.img";

#[derive(Debug, thiserror::Error)]
#[error("guest {what} not found (looked for {}; set {var} or run `make install`)", .looked.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
pub struct NotFound {
    what: &'static str,
    var: &'static str,
    looked: Vec<PathBuf>,
}

fn candidates(exe: &Path, name: &str) -> Vec<PathBuf> {
    let dir = exe.parent().unwrap_or(Path::new("/"));
    vec![
        dir.join("../share/okvm").join(name),
        dir.join("../okvm").join(name),
        Path::new("/usr/local/share/okvm").join(name),
        Path::new("/usr/share/okvm").join(name),
    ]
}

fn find(what: &'static str, var: &'static str, name: &str) -> Result<PathBuf, NotFound> {
    if let Some(p) = std::env::var_os(var) {
        return Ok(p.into());
    }
    let exe = std::env::current_exe().unwrap_or_default();
    let looked = candidates(&exe, name);
    looked
        .iter()
        .find(|p| p.is_file())
        .map(|p| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone()))
        .ok_or(NotFound { what, var, looked })
}

pub fn kernel() -> Result<PathBuf, NotFound> {
    find("kernel", "OKVM_KERNEL", KERNEL)
}

pub fn initrd() -> Result<PathBuf, NotFound> {
    find("initramfs", "OKVM_INITRD", INITRD)
}
