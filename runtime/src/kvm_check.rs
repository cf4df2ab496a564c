//! Is `/dev/kvm` usable at hardware speed here?
//!
//! Some machines expose `/dev/kvm` through PVM (software nested virtualization,
//! `kvm_pvm`): `KVM_CREATE_VM` works, but an ordinary guest runs about a thousand
//! times too slowly to boot. okvm reports this up front in one line instead of
//! letting a container hang.

use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};

/// Where the facts come from; a test points these into a temporary directory.
#[derive(Debug, Clone)]
pub struct Probe {
    pub dev_kvm: PathBuf,
    pub sys_module: PathBuf,
    pub cpuinfo: PathBuf,
}

impl Default for Probe {
    fn default() -> Self {
        Probe {
            dev_kvm: "/dev/kvm".into(),
            sys_module: "/sys/module".into(),
            cpuinfo: "/proc/cpuinfo".into(),
        }
    }
}

/// The verdict, with the reason when KVM is not usable at hardware speed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Hardware virtualization backs `/dev/kvm` (the CPU flag that proves it).
    Hardware {
        cpu_flag: &'static str,
    },
    NoDevice {
        path: PathBuf,
    },
    NoPermission {
        path: PathBuf,
    },
    Pvm,
    NoVirtFlags,
    Unusable {
        reason: String,
    },
}

impl Verdict {
    pub fn is_hardware(&self) -> bool {
        matches!(self, Verdict::Hardware { .. })
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Verdict::Hardware { cpu_flag } => {
                write!(f, "kvm: usable at hardware speed ({cpu_flag})")
            }
            Verdict::NoDevice { path } => write!(
                f,
                "kvm: not usable: {} does not exist (no KVM module loaded, or this machine exposes none)",
                path.display()
            ),
            Verdict::NoPermission { path } => write!(
                f,
                "kvm: not usable: no permission to open {} (run as root or join the kvm group)",
                path.display()
            ),
            Verdict::Pvm => write!(
                f,
                "kvm: not usable at hardware speed: PVM detected (kvm_pvm): /dev/kvm is software nested virtualization and ordinary guests run ~1000x slower; use the emulated test host (integration/testhost/run)"
            ),
            Verdict::NoVirtFlags => write!(
                f,
                "kvm: not usable at hardware speed: the CPU shows neither vmx nor svm, so /dev/kvm is not backed by hardware virtualization"
            ),
            Verdict::Unusable { reason } => write!(f, "kvm: not usable: {reason}"),
        }
    }
}

/// Judges the machine from the probe's files, then confirms with the KVM API.
pub fn check(probe: &Probe) -> Verdict {
    let verdict = check_files(probe);
    if verdict.is_hardware() {
        if let Err(e) = check_api() {
            return Verdict::Unusable { reason: e };
        }
    }
    verdict
}

/// The part of the check that only reads files.
pub fn check_files(probe: &Probe) -> Verdict {
    if let Err(e) = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&probe.dev_kvm)
    {
        return match e.kind() {
            io::ErrorKind::NotFound => Verdict::NoDevice {
                path: probe.dev_kvm.clone(),
            },
            io::ErrorKind::PermissionDenied => Verdict::NoPermission {
                path: probe.dev_kvm.clone(),
            },
            _ => Verdict::Unusable {
                reason: format!("cannot open {}: {e}", probe.dev_kvm.display()),
            },
        };
    }
    // PVM first: it is the specific, actionable diagnosis.
    if probe.sys_module.join("kvm_pvm").exists() {
        return Verdict::Pvm;
    }
    match virt_flag(&probe.cpuinfo) {
        Some(cpu_flag) => Verdict::Hardware { cpu_flag },
        None => Verdict::NoVirtFlags,
    }
}

/// The hardware virtualization flag in the first CPU's flags line, if any.
fn virt_flag(cpuinfo: &Path) -> Option<&'static str> {
    let text = std::fs::read_to_string(cpuinfo).ok()?;
    let flags = text
        .lines()
        .find(|l| l.starts_with("flags"))?
        .split_once(':')?
        .1;
    flags.split_whitespace().find_map(|f| match f {
        "vmx" => Some("vmx"),
        "svm" => Some("svm"),
        _ => None,
    })
}

/// Asks the kernel itself: stable API version and a VM can be created.
fn check_api() -> Result<(), String> {
    let kvm = kvm_ioctls::Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let version = kvm.get_api_version();
    if version != 12 {
        return Err(format!("unexpected KVM API version {version} (want 12)"));
    }
    kvm.create_vm()
        .map_err(|e| format!("KVM_CREATE_VM failed: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn fake(dev: bool, pvm: bool, flags: &str) -> (tempfile::TempDir, Probe) {
        let dir = tempfile::tempdir().unwrap();
        let probe = Probe {
            dev_kvm: dir.path().join("kvm"),
            sys_module: dir.path().join("module"),
            cpuinfo: dir.path().join("cpuinfo"),
        };
        if dev {
            fs::write(&probe.dev_kvm, b"").unwrap();
        }
        fs::create_dir_all(&probe.sys_module).unwrap();
        if pvm {
            fs::create_dir(probe.sys_module.join("kvm_pvm")).unwrap();
        }
        fs::write(
            &probe.cpuinfo,
            format!("processor\t: 0\nflags\t\t: fpu sse2 {flags}\n\nprocessor\t: 1\n"),
        )
        .unwrap();
        (dir, probe)
    }

    #[test]
    fn missing_device_is_named() {
        let (_d, p) = fake(false, false, "vmx");
        let v = check_files(&p);
        assert_eq!(
            v,
            Verdict::NoDevice {
                path: p.dev_kvm.clone()
            }
        );
        assert!(v.to_string().contains("does not exist"));
    }

    #[test]
    fn pvm_wins_over_flags() {
        let (_d, p) = fake(true, true, "svm");
        let v = check_files(&p);
        assert_eq!(v, Verdict::Pvm);
        assert!(v.to_string().contains("PVM detected"));
        assert_eq!(v.to_string().lines().count(), 1);
    }

    #[test]
    fn no_flags_is_not_hardware() {
        let (_d, p) = fake(true, false, "avx2");
        assert_eq!(check_files(&p), Verdict::NoVirtFlags);
    }

    #[test]
    fn vmx_or_svm_is_hardware() {
        let (_d, p) = fake(true, false, "vmx ept");
        assert_eq!(check_files(&p), Verdict::Hardware { cpu_flag: "vmx" });
        let (_d, p) = fake(true, false, "svm npt");
        assert_eq!(check_files(&p), Verdict::Hardware { cpu_flag: "svm" });
    }

    #[test]
    fn flag_must_be_a_whole_word() {
        let (_d, p) = fake(true, false, "svmx vmxx");
        assert_eq!(check_files(&p), Verdict::NoVirtFlags);
    }
}
