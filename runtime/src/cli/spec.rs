//! `okvm spec`: write a starter config.json, as `runc spec` does.

use std::path::Path;

use anyhow::Context as _;

/// Writes `config.json` into `bundle` (the current directory by default);
/// refuses to overwrite one, like runc.
pub fn run(args: liboci_cli::Spec) -> anyhow::Result<()> {
    let dir = args.bundle.unwrap_or_else(|| ".".into());
    let path = dir.join("config.json");
    if path.exists() {
        anyhow::bail!("File {} exists. Remove it first", path.display());
    }
    let spec = if args.rootless {
        // SAFETY: getuid/getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        oci_spec::runtime::Spec::rootless(uid, gid)
    } else {
        oci_spec::runtime::Spec::default()
    };
    write(&spec, &path)
}

fn write(spec: &oci_spec::runtime::Spec, path: &Path) -> anyhow::Result<()> {
    spec.save(path)
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_loadable_spec_once() {
        let dir = tempfile::tempdir().unwrap();
        let args = || liboci_cli::Spec {
            bundle: Some(dir.path().into()),
            rootless: false,
        };
        run(args()).unwrap();
        let spec = oci_spec::runtime::Spec::load(dir.path().join("config.json")).unwrap();
        assert_eq!(spec.root().as_ref().unwrap().path(), Path::new("rootfs"));
        let e = run(args()).unwrap_err().to_string();
        assert!(e.contains("exists"), "{e}");
    }
}
