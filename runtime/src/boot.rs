//! `okvm boot`: one microVM in the foreground, with its virtiofsd(s) started
//! before the guest and stopped after it. This is the VMM on its own, as the
//! benchmarks and the VMM's end-to-end tests use it.

use std::path::PathBuf;

use anyhow::Context;
use okvm_vmm::vm::{FsShare, VmConfig};

/// Every okvm guest is CID 3: each VM has its own vsock device and socket, so
/// CIDs never meet (the first CID a guest may have).
pub const GUEST_CID: u64 = 3;

use crate::virtiofsd::{self, Virtiofsd};

/// A `xx:xx:xx:xx:xx:xx` argument; it must be a unicast address.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let bad = || format!("{s:?} is not a MAC address like 02:00:00:00:00:01");
    let parts: Vec<_> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(bad());
    }
    let mut mac = [0u8; 6];
    for (b, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if mac[0] & 1 != 0 {
        return Err(format!(
            "{s} is a multicast address; a NIC needs a unicast one"
        ));
    }
    Ok(mac)
}

/// A stable, locally administered unicast MAC for a tap name, so the same tap
/// gives the guest the same address every boot.
pub fn mac_for(tap: &str) -> [u8; 6] {
    // FNV-1a: tiny, stable across Rust versions (unlike DefaultHasher).
    let h = tap.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    let b = h.to_be_bytes();
    [0x02, 0x6f, b[0], b[1], b[2], b[3]]
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
        let dir = std::env::temp_dir().join(format!("okvm-boot-{}", std::process::id()));
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

/// Boots `vm` with one virtiofsd per (tag, host directory) in `shares`, and
/// returns when the guest powers off or resets. `vm.fs` is filled in here.
pub fn run(mut vm: VmConfig, shares: &[(String, PathBuf)]) -> anyhow::Result<()> {
    // Fail on a bad kernel before starting any helper process.
    std::fs::metadata(&vm.kernel)
        .with_context(|| format!("cannot open kernel {}", vm.kernel.display()))?;
    if let Some(initrd) = &vm.initrd {
        std::fs::metadata(initrd)
            .with_context(|| format!("cannot open initramfs {}", initrd.display()))?;
    }
    let rundir = RunDir::create()?;
    let mut daemons = Vec::new();
    if !shares.is_empty() {
        let bin = virtiofsd::find()?;
        for (i, (tag, dir)) in shares.iter().enumerate() {
            let socket = rundir.0.join(format!("fs{i}.sock"));
            let log = rundir.0.join(format!("fs{i}.log"));
            let d = Virtiofsd::start(&bin, dir, &socket, &log, vm.mem_mib)?;
            vm.fs.push(FsShare {
                tag: tag.clone(),
                socket: d.socket().into(),
            });
            daemons.push(d);
        }
    }
    // After virtiofsd started: it sets its own limit.
    if let Err(e) = okvm_vmm::vm::limit_open_files() {
        log::warn!("cannot limit the VMM's open files: {e}");
    }
    let result = okvm_vmm::vm::run(&vm);
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

    #[test]
    fn macs_parse_and_derived_ones_are_local_unicast() {
        assert_eq!(
            parse_mac("02:00:0a:ff:00:01").unwrap(),
            [2, 0, 10, 255, 0, 1]
        );
        for bad in [
            "02:00:00:00:00",
            "0g:00:00:00:00:01",
            "01:00:00:00:00:01",
            "2:0:0:0:0:1",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        let m = mac_for("tap0");
        assert_eq!(m[0] & 0b11, 0b10);
        assert_eq!(m, mac_for("tap0"));
        assert_ne!(m, mac_for("tap1"));
    }
}
