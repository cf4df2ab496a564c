//! Read-only means read-only on the host: a `:ro` volume with a submount
//! below it is read-only all the way down in the share itself, so root in
//! the guest (which could remount the container's view read-write, or mount
//! the share afresh) still cannot write to it. And the container's state
//! directory on the host is root's alone.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use okvm_integration::{hostile, require_testhost};
use okvm_tests::oci::{run_to_files, Sandbox};
use serde_json::json;

const VOLUME: &str = "/run/okvm-hostile-ro";
const LIMIT: Duration = Duration::from_secs(300);

fn sh(script: &str) {
    let out = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(out.status.success(), "{script}: {out:?}");
}

/// Root in the guest: mount the share's root and write into the volume,
/// at its top and in the submount below it.
/// It uses okvm-init's own mount of the share (a fresh `mount -t virtiofs`
/// is handed the newest superblock, and walking into the volume first would
/// make that the volume's, which okvm-init would then get), reached through
/// pid 1's root: the attacker was started before okvm-init re-rooted itself,
/// so its own `/` is the bare initramfs, with a proc of its own.
const ATTACK: &str = r#"mkdir -p /proc && mount -t proc proc /proc
until root=$(awk '$1=="okvm" && $3=="virtiofs" {print $2; exit}' /proc/1/mounts 2>/dev/null) && [ -n "$root" ]; do sleep 0.1; done
ln -s "/proc/1/root$root" /hostile
try() { if "$@" 2>/tmp/err; then echo "hostile: planted: $*"; else echo "hostile: refused: $* ($(cat /tmp/err))"; fi; }
for v in /hostile/mounts/*; do
  if [ -e "$v/sub/inner" ]; then
    try touch "$v/evil-top"
    try touch "$v/sub/evil-sub"
    try sh -c "echo changed > $v/sub/inner"
  fi
done
echo "hostile: done"
"#;

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_read_only_volume_is_read_only_in_the_share_down_to_its_submounts() {
    require_testhost();
    let _ = Command::new("umount")
        .arg(format!("{VOLUME}/sub"))
        .stderr(std::process::Stdio::null())
        .status();
    let _ = std::fs::remove_dir_all(VOLUME);
    std::fs::create_dir_all(format!("{VOLUME}/sub")).unwrap();
    sh(&format!(
        "mount -t tmpfs okvm-ro-sub {VOLUME}/sub && echo original > {VOLUME}/sub/inner"
    ));
    let sb = Sandbox::new();
    let initrd = sb.work_file("hostile-initrd.img");
    hostile::initramfs(ATTACK, &initrd);
    let id = sb.new_id("ro");
    let bundle = sb.bundle(
        "ro",
        &[
            "sh",
            "-c",
            "cat /vol/sub/inner; touch /vol/sub/x 2>/dev/null && echo wrote || echo refused; sleep 1000",
        ],
    );
    let mut config = bundle.config();
    config["mounts"].as_array_mut().unwrap().push(json!({
        "destination": "/vol", "type": "bind", "source": VOLUME, "options": ["rbind", "ro"]
    }));
    bundle.write_config(&config);
    let mut create = sb.command();
    create
        .env("OKVM_INITRD", &initrd)
        .args(["create", "--bundle"])
        .arg(bundle.path())
        .arg(&id);
    run_to_files(&mut create, &sb.work_file("create-ro"), LIMIT).assert_success();
    sb.invoke(&["start", &id]).assert_success();

    let dir = sb.root().join(&id);
    let log = hostile::wait_for_console(&dir.join("console.log"), "hostile: done", LIMIT);
    let hostile: Vec<&str> = log.lines().filter(|l| l.contains("hostile: ")).collect();
    assert!(
        !hostile.iter().any(|l| l.contains("planted")),
        "{hostile:#?}"
    );
    for target in ["/evil-top", "/sub/evil-sub", "/sub/inner"] {
        assert!(
            hostile.iter().any(|l| l.contains("refused")
                && l.contains(target)
                && l.contains("Read-only file system")),
            "{target}: {hostile:#?}"
        );
    }
    assert_eq!(
        std::fs::read_to_string(format!("{VOLUME}/sub/inner")).unwrap(),
        "original\n"
    );
    let left: Vec<_> = std::fs::read_dir(VOLUME)
        .unwrap()
        .chain(std::fs::read_dir(format!("{VOLUME}/sub")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left.len(), 2, "the guest wrote to the volume: {left:?}");

    // The state directory and what the sandbox made in it: root's alone.
    // (A --root that exists already keeps its mode, as under runc.)
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700, "{}", dir.display());
    let mut sockets = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        let (path, kind) = (e.path(), e.file_type().unwrap());
        if kind.is_socket() || path.ends_with("console.log") {
            sockets += usize::from(kind.is_socket());
            assert_eq!(
                mode(&path) & 0o077,
                0,
                "{} is open to others",
                path.display()
            );
        }
    }
    assert!(sockets >= 2, "the VM's and virtiofsd's sockets not found");
    sb.invoke(&["delete", "--force", &id]).assert_success();
    sh(&format!("umount {VOLUME}/sub"));
    let _ = std::fs::remove_dir_all(VOLUME);
}
