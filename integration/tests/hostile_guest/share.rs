//! The pod's virtio-fs share, from the guest's side: the attacker (root in
//! the guest, standing for a guest kernel it owns) mounts the share's root
//! and plants symlinks wherever the host still has work to do — at the top
//! of the share, in place of the `containers/` directory new pod containers
//! go in, inside the `mounts/` of each part as it appears — while containers
//! with volumes join the pod. The host must follow none of them.
//!
//! (A `--privileged` container that mounts the share's tag is handed the
//! most recently made virtio-fs superblock, one of the containers' own
//! trees, rather than the share's root; the guest kernel itself can reach
//! the root, so that is the attacker played here.)

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use okvm_integration::{hostile, require_testhost};
use okvm_tests::oci::{run_to_files, set_pod, Bundle, Sandbox};
use serde_json::{json, Value};

/// Host files the attacker's links point at: any change to them means root
/// on the host followed a guest-planted link.
const DECOY: &str = "/run/okvm-decoy";
const VOLUME: &str = "/run/okvm-hostile-volume";
const LIMIT: Duration = Duration::from_secs(300);

/// Every entry below `dir`: its type, size, mode, mtime and contents.
fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut all = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let contents = if m.is_file() {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            } else {
                String::new()
            };
            let entry = format!(
                "{:?} {} {:o} {}.{} {contents}",
                m.file_type(),
                m.len(),
                m.mode(),
                m.mtime(),
                m.mtime_nsec()
            );
            all.insert(p.display().to_string(), entry);
            if m.is_dir() {
                todo.push(p);
            }
        }
    }
    all
}

/// Root in the guest: mount the share's root, try each plant once (saying
/// what happened on the console), then keep racing every part that appears.
fn attack() -> String {
    format!(
        r#"mkdir -p /hostile
until mount -t virtiofs okvm /hostile; do sleep 0.1; done
say() {{ echo "hostile: $*"; }}
try() {{ if "$@" 2>/tmp/err; then say "planted: $*"; else say "refused: $* ($(cat /tmp/err))"; fi; }}
try ln -s {DECOY}/etc /hostile/evil
try touch /hostile/evil-file
try mv /hostile/containers /hostile/containers.old
try ln -s {DECOY}/etc /hostile/containers/next
say "ready"
seen=
while :; do
  for d in /hostile/containers/*; do
    [ -d "$d" ] || continue
    case " $seen " in *" $d "*) ;; *)
      seen="$seen $d"
      say "part: $d"
      try ln -s {DECOY}/etc/shadow "$d/mounts/x"
      try touch "$d/new-file"
      try rm -rf "$d/mounts"
      say "part-done: $d"
    ;; esac
    rm -rf "$d/mounts" 2>/dev/null && ln -s {DECOY}/etc/shadow "$d/mounts" 2>/dev/null && say "planted: $d/mounts"
  done
  if [ ! -L /hostile/containers ]; then
    rm -rf /hostile/containers 2>/dev/null && ln -s {DECOY}/etc /hostile/containers 2>/dev/null && say "planted: containers link"
  fi
  usleep 500
done
"#
    )
}

/// Marks a bundle as a CRI pod's sandbox or one of its containers.
fn in_pod(b: &Bundle, kind: &str, pod: &str, mounts: &[Value]) {
    let mut config = b.config();
    set_pod(&mut config, kind, pod);
    let list = config["mounts"].as_array_mut().unwrap();
    list.extend(mounts.iter().cloned());
    b.write_config(&config);
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn symlinks_a_guest_plants_in_the_pod_share_are_never_followed_by_the_host() {
    require_testhost();
    let sb = Sandbox::new();
    let _ = std::fs::remove_dir_all(DECOY);
    std::fs::create_dir_all(format!("{DECOY}/etc")).unwrap();
    std::fs::write(format!("{DECOY}/etc/shadow"), "root:secret:0:0\n").unwrap();
    std::fs::write(format!("{DECOY}/etc/file"), "decoy\n").unwrap();
    let _ = std::fs::remove_dir_all(VOLUME);
    std::fs::create_dir_all(VOLUME).unwrap();
    std::fs::write(format!("{VOLUME}/hello"), "hello from the host\n").unwrap();
    let before = snapshot(Path::new(DECOY));
    let initrd = sb.work_file("hostile-initrd.img");
    hostile::initramfs(&attack(), &initrd);

    let pod = sb.new_id("pod");
    let sandbox = sb.bundle("pod", &["sleep", "1000"]);
    in_pod(&sandbox, "sandbox", &pod, &[]);
    let mut create = sb.command();
    create
        .env("OKVM_INITRD", &initrd)
        .args(["create", "--bundle"])
        .arg(sandbox.path())
        .arg(&pod);
    run_to_files(&mut create, &sb.work_file("create-pod"), LIMIT).assert_success();
    sb.invoke(&["start", &pod]).assert_success();
    let console = sb.root().join(&pod).join("console.log");
    hostile::wait_for_console(&console, "hostile: ready", LIMIT);

    // Containers with a directory and a file volume join the pod while the
    // attacker races each part as it appears.
    for round in 0..3 {
        let id = sb.new_id(&format!("member{round}"));
        let member = sb.bundle(
            &format!("member{round}"),
            &["sh", "-c", "cat /vol/hello /hello-file; echo joined"],
        );
        in_pod(
            &member,
            "container",
            &pod,
            &[
                json!({"destination": "/vol", "type": "bind", "source": VOLUME, "options": ["rbind", "ro"]}),
                json!({"destination": "/hello-file", "type": "bind", "source": format!("{VOLUME}/hello"), "options": ["bind", "ro"]}),
            ],
        );
        let out = sb.run_foreground(&id, &member);
        // The attacker owns this pod's guest and may deny it new containers
        // (a part it looked up before the host mounted it stays stale in its
        // cache for a moment): then the container fails with one clear line.
        if out.code() == Some(0) {
            assert_eq!(
                out.stdout, "hello from the host\nhello from the host\njoined\n",
                "{out:#?}"
            );
        } else {
            assert_eq!(out.stderr.lines().count(), 1, "{out:#?}");
            assert!(out.stderr.starts_with("okvm: error: "), "{out:#?}");
        }
        assert!(!sb.root().join(&id).exists(), "state of {id} left");
    }

    let log = hostile::wait_for_console(&console, "part-done: ", LIMIT);
    let hostile: Vec<&str> = log.lines().filter(|l| l.contains("hostile: ")).collect();
    // The attacker really had the share's root: it saw the parts appear.
    assert!(
        hostile
            .iter()
            .any(|l| l.contains("part: /hostile/containers/")),
        "{hostile:#?}"
    );
    assert!(
        !hostile.iter().any(|l| l.contains("planted")),
        "{hostile:#?}"
    );
    for plant in [
        "/hostile/evil",
        "/hostile/containers /hostile/containers.old",
        "/mounts/x",
        "/new-file",
    ] {
        assert!(
            hostile.iter().any(|l| l.contains("refused: ")
                && l.contains(plant)
                && l.contains("Read-only file system")),
            "{plant}: {hostile:#?}"
        );
    }
    assert_eq!(snapshot(Path::new(DECOY)), before, "a host file changed");
    sb.invoke(&["delete", "--force", &pod]).assert_success();
    assert!(!sb.root().join(&pod).exists(), "state of the pod left");
    let _ = std::fs::remove_dir_all(DECOY);
    let _ = std::fs::remove_dir_all(VOLUME);
}
