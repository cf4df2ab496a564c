//! A hostile guest, for the `hostile_guest` suite: okvm's own guest with an
//! attacker running beside okvm-init as root in the guest, before any
//! container exists. It stands for a guest kernel the attacker owns: it can
//! mount the share's root (a container can only reach the superblocks the
//! guest kernel hands it) and send whatever it likes over every channel.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::repo_root;

/// A static guest binary `make` builds (for the explicit host target).
fn guest_binary(name: &str) -> PathBuf {
    repo_root()
        .join("target/x86_64-unknown-linux-gnu/release")
        .join(name)
}

/// The static okvm-init `make` builds for the guest.
pub fn okvm_init() -> PathBuf {
    guest_binary("okvm-init")
}

/// okvm-hostile-init (integration/hostile-init), built beside okvm-init: a
/// guest's PID 1 that speaks okvm-init's protocol and breaks its promises.
pub fn lying_init() -> PathBuf {
    let path = guest_binary("okvm-hostile-init");
    assert!(
        path.is_file(),
        "{} is missing: `make build` builds it",
        path.display()
    );
    path
}

/// Writes to `out` an initramfs whose `/init` starts `attack` (a busybox
/// shell script, with busybox's applets on PATH) in the background and then
/// becomes okvm-init, so that the guest serves containers as usual.
pub fn initramfs(attack: &str, out: &Path) {
    let read = |p: &Path| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    let init = "#!/bin/busybox sh\n\
                /bin/busybox --install -s /bin\n\
                PATH=/bin /bin/busybox sh /attack >/dev/console 2>&1 &\n\
                exec /okvm-init \"$@\"\n";
    let mut b = okvm::initramfs::with_boot_nodes().unwrap();
    // The shell gives a background job /dev/null for stdin, before okvm-init
    // has mounted devtmpfs.
    b.char_device("dev/null", 0o666, 1, 3)
        .unwrap()
        .dir("bin", 0o755)
        .unwrap()
        .file("bin/busybox", 0o755, read(Path::new("/bin/busybox")))
        .unwrap()
        .file("okvm-init", 0o755, read(&okvm_init()))
        .unwrap()
        .file("attack", 0o644, attack.as_bytes().to_vec())
        .unwrap()
        .file("init", 0o755, init.as_bytes().to_vec())
        .unwrap();
    std::fs::write(out, b.to_bytes()).unwrap();
}

/// Waits until the guest console `console` (a state dir's console.log, where
/// the attacker reports) shows `what`; returns all of it.
pub fn wait_for_console(console: &Path, what: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let text =
            String::from_utf8_lossy(&std::fs::read(console).unwrap_or_default()).into_owned();
        if text.contains(what) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "{what:?} never on the console: {text}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
