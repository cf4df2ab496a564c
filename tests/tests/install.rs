//! `scripts/install`'s containerd part (`--containerd-only`), on a
//! configuration directory of its own (OKVM_CONTAINERD_DIR): the CRI runtime
//! handler okvm lands in config.toml without losing what the file configured,
//! as containerd itself reads the result (`containerd config dump`).

use std::path::Path;
use std::process::Command;

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// Runs `scripts/install --containerd-only` on `dir`: its stderr.
fn install(dir: &Path) -> String {
    let out = Command::new(repo().join("scripts/install"))
        .arg("--containerd-only")
        .env("OKVM_CONTAINERD_DIR", dir)
        .env_remove("OKVM_TESTHOST")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// containerd's view of `config`, when containerd is installed here.
fn dump(config: &Path) -> Option<String> {
    let out = Command::new("containerd")
        .args(["--config"])
        .arg(config)
        .args(["config", "dump"])
        .output()
        .ok()?;
    assert!(out.status.success(), "{out:?}");
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Debian 12's stock /etc/containerd/config.toml.
const DEBIAN: &str = r#"version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"#;

#[test]
fn the_okvm_handler_joins_the_cri_settings_and_keeps_runc() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    std::fs::write(&config, DEBIAN).unwrap();
    // The drop-in an older install wrote (it wiped the CRI settings).
    std::fs::create_dir(dir.path().join("conf.d")).unwrap();
    let old = dir.path().join("conf.d/okvm.toml");
    std::fs::write(&old, "# Written by okvm's scripts/install.\n").unwrap();

    install(dir.path());
    let first = std::fs::read_to_string(&config).unwrap();
    assert!(first.starts_with(DEBIAN), "{first}");
    assert!(
        first.contains("# okvm: begin") && first.trim_end().ends_with("# okvm: end"),
        "{first}"
    );
    assert!(!old.exists(), "the old drop-in is still there");
    // Again: the block is replaced, not added twice.
    install(dir.path());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), first);

    if let Some(seen) = dump(&config) {
        for want in [
            r#"bin_dir = "/usr/lib/cni""#,
            r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.okvm]"#,
            r#"runtime_type = "io.containerd.okvm.v2""#,
            r#"[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]"#,
            r#"runtime_type = "io.containerd.runc.v2""#,
            r#"pod_annotations = ["io.okvm.*"]"#,
        ] {
            assert!(seen.contains(want), "{want} missing from:\n{seen}");
        }
    }
}

#[test]
fn a_missing_config_is_created_and_a_users_own_okvm_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.toml");
    install(dir.path());
    let made = std::fs::read_to_string(&config).unwrap();
    assert!(made.starts_with("version = 2\n"), "{made}");
    assert!(made.contains("runtimes.okvm]"), "{made}");

    let own = "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.okvm]\n  runtime_type = \"io.containerd.okvm.v2\"\n";
    std::fs::write(&config, own).unwrap();
    let said = install(dir.path());
    assert_eq!(std::fs::read_to_string(&config).unwrap(), own);
    assert!(said.contains("defines the runtime okvm itself"), "{said}");
}
