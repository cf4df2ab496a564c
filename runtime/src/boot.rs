//! `okvm boot`: one microVM in the foreground, with its virtiofsd(s) started
//! before the guest and stopped after it. This is the VMM on its own, as the
//! benchmarks and the VMM's end-to-end tests use it.

use std::path::PathBuf;

use anyhow::Context;
use okvm_vmm::vm::{Console, FsShare, VmConfig};

use crate::virtiofsd::{self, Virtiofsd};

/// What `okvm boot` was asked for.
#[derive(Debug, Clone)]
pub struct BootOptions {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub cmdline: String,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub console: Console,
    /// (tag, host directory) pairs, one virtio-fs device each.
    pub shares: Vec<(String, PathBuf)>,
}

/// A `TAG=DIR` argument.
pub fn parse_share(s: &str) -> Result<(String, PathBuf), String> {
    let (tag, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not TAG=DIR"))?;
    if tag.is_empty() || dir.is_empty() {
        return Err(format!("{s:?} is not TAG=DIR"));
    }
    if tag.len() > okvm_vmm::virtio::fs::MAX_TAG_LEN {
        return Err(format!(
            "tag {tag:?} is longer than {} bytes",
            okvm_vmm::virtio::fs::MAX_TAG_LEN
        ));
    }
    Ok((tag.into(), dir.into()))
}

/// A private directory for the VM's sockets, removed with everything in it.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> anyhow::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let dir = base.join(format!("okvm-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(RunDir(dir))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Boots the guest and returns when it powers off or resets.
pub fn run(opts: BootOptions) -> anyhow::Result<()> {
    // Fail on a bad kernel before starting any helper process.
    std::fs::metadata(&opts.kernel)
        .with_context(|| format!("cannot read the kernel {}", opts.kernel.display()))?;
    if let Some(initrd) = &opts.initrd {
        std::fs::metadata(initrd)
            .with_context(|| format!("cannot read the initramfs {}", initrd.display()))?;
    }
    let rundir = RunDir::create()?;
    let mut daemons = Vec::new();
    let mut fs = Vec::new();
    if !opts.shares.is_empty() {
        let bin = virtiofsd::find()?;
        for (i, (tag, dir)) in opts.shares.iter().enumerate() {
            let socket = rundir.0.join(format!("fs{i}.sock"));
            let log = rundir.0.join(format!("fs{i}.log"));
            let d = Virtiofsd::start(&bin, dir, &socket, &log)?;
            fs.push(FsShare {
                tag: tag.clone(),
                socket: d.socket().into(),
            });
            daemons.push(d);
        }
    }
    let config = VmConfig {
        kernel: opts.kernel,
        initrd: opts.initrd,
        cmdline: opts.cmdline,
        vcpus: opts.vcpus,
        mem_mib: opts.mem_mib,
        console: opts.console,
        fs,
    };
    let result = okvm_vmm::vm::run(&config);
    // The daemons go before the run directory that holds their sockets.
    drop(daemons);
    drop(rundir);
    result?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_tag_equals_dir() {
        assert_eq!(
            parse_share("root=/srv/x").unwrap(),
            ("root".into(), "/srv/x".into())
        );
        assert_eq!(parse_share("a=b=c").unwrap().1, PathBuf::from("b=c"));
        for bad in ["root", "=/x", "root=", &format!("{}=/x", "t".repeat(37))] {
            assert!(parse_share(bad).is_err(), "{bad}");
        }
    }
}
