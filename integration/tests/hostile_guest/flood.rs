//! Floods: a guest that writes to its console without end, and one that
//! floods the vsock device. What the host's administrator would check: the
//! console file and the sandbox's log stay within their bounds, so does the
//! memory of the sandbox process (the VMM), and other containers keep
//! working (docs/security.md, "Bounds").

use std::io::{ErrorKind, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use okvm_integration::podman::{run, setup, sh, stdout, wait_for_log, SandboxProcess, IMAGE};
use okvm_integration::repo_root;
use okvm_vmm::console::MAX_FILE;
use okvm_vmm::ratelimit::{BURST, REFILL};
use okvm_vmm::virtio::vsock::{MAX_BUFFERED, MAX_GUEST_CONNECTIONS};

/// How long an attack may take to reach its goal in the (slow, emulated)
/// test host.
const LIMIT: Duration = Duration::from_secs(400);
/// What the VMM may allocate beyond its bounded buffers while a flood goes
/// on (connection records, hash tables, allocator slack).
const SLACK_KIB: u64 = 16 * 1024;

/// The VMM's own memory, in KiB: RSS less the guest RAM it maps shared.
fn private_kib(sb: &SandboxProcess) -> u64 {
    sb.status_kib("RssAnon") + sb.status_kib("RssFile")
}

fn line_count(path: &Path) -> usize {
    std::fs::read_to_string(path).map_or(0, |s| s.lines().count())
}

/// The number right after `prefix` at the start of `text` (0 if none).
fn number_after(text: &str, prefix: &str) -> u64 {
    text.strip_prefix(prefix)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// What the console file's first line says was dropped (0: nothing yet).
fn console_dropped(path: &Path) -> u64 {
    let head = std::fs::read(path).unwrap_or_default();
    let first = head.split(|&b| b == b'\n').next().unwrap_or_default();
    number_after(&String::from_utf8_lossy(first), "[okvm: ")
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_guest_writing_its_console_without_end_fills_only_a_bounded_file() {
    let _cleanup = setup();
    let line = "console-flood-0123456789-abcdefghijklmnopqrstuvwxyz";
    // A privileged container may make the console device in its own /dev.
    let out = sh(&format!(
        "podman run -d --runtime okvm --privileged --name flood-console {IMAGE} \
         sh -c '[ -e /dev/console ] || mknod /dev/console c 5 1; echo flooding; yes {line} >/dev/console'"
    ));
    assert!(out.status.success(), "{out:?}");
    wait_for_log("flood-console", "flooding");
    let sb = SandboxProcess::of("flood-console");
    let console = sb.state_dir.join(okvm::sandbox::CONSOLE);
    let (base, log_before) = (private_kib(&sb), line_count(&sb.log));
    // Another container, started while the flood goes on.
    let second = std::thread::spawn(|| run("", "echo second-ok"));

    let started = Instant::now();
    let (mut peak, mut peak_rss) = (base, 0);
    // Until the guest has written twice the bound beyond what the file holds.
    while console_dropped(&console) < 2 * MAX_FILE {
        let size = std::fs::metadata(&console).unwrap().len();
        assert!(size <= MAX_FILE, "console.log holds {size} bytes");
        peak = peak.max(private_kib(&sb));
        peak_rss = peak_rss.max(sb.status_kib("VmRSS"));
        assert!(
            started.elapsed() < LIMIT,
            "the guest dropped only {} console bytes in {LIMIT:?}",
            console_dropped(&console)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let elapsed = started.elapsed();
    let second = second.join().unwrap();
    assert_eq!(stdout(&second), "second-ok\n", "{second:?}");
    // The file keeps the newest output: its last whole line is the flood's.
    let tail = okvm::logger::last_lines(&console, 2);
    assert_eq!(tail.first().map(String::as_str), Some(line), "{tail:?}");
    assert!(
        peak <= base + SLACK_KIB,
        "the VMM's own memory grew from {base} to {peak} KiB"
    );
    let logged = line_count(&sb.log) - log_before;
    assert!(logged <= 2, "the console flood was logged ({logged} lines)");
    eprintln!(
        "console flood: {} bytes dropped in {elapsed:?}; VMM private memory {base} -> {peak} KiB, VmRSS peak {peak_rss} KiB",
        console_dropped(&console)
    );
    let out = sh("podman rm -f -t 0 flood-console");
    assert!(out.status.success(), "{out:?}");
}

/// Raises this process's soft RLIMIT_NOFILE to its hard one: the stand-in
/// host service below holds a socket for every connection the guest opens.
fn raise_open_files() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write one rlimit struct we own.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        lim.rlim_cur = lim.rlim_max;
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &lim), 0);
    }
}

/// The attacker's last report: how many connections it holds open.
fn attacker_open(name: &str) -> usize {
    let out = sh(&format!("podman logs --tail 1 {name}"));
    number_after(stdout(&out).trim(), "open=") as usize
}

#[test]
#[ignore = "runs inside the test host (make test-e2e)"]
fn a_guest_flooding_vsock_gets_bounded_memory_connections_and_log_lines() {
    let _cleanup = setup();
    raise_open_files();
    let bin = repo_root().join("target/x86_64-unknown-linux-gnu/release/okvm-hostile");
    assert!(
        bin.is_file(),
        "{} missing: `make init` builds it",
        bin.display()
    );
    // A host service the test stands in for (below), okvm-init's control
    // port, the container's stdio ports, and ports nobody listens on.
    const SERVICE: u32 = 7000;
    let ports = format!("{SERVICE} 1024 1100 1101 1102 1103 50000 50001 50002");
    let out = sh(&format!(
        "podman run -d --runtime okvm --privileged -v {}:/okvm-hostile:ro --name flood-vsock {IMAGE} /okvm-hostile vsock {ports}",
        bin.display()
    ));
    assert!(out.status.success(), "{out:?}");
    wait_for_log("flood-vsock", "open=");
    let sb = SandboxProcess::of("flood-vsock");
    let (base, log_before) = (private_kib(&sb), line_count(&sb.log));

    // A host service at its worst: it takes every connection, sends on each,
    // and never reads, so the VMM holds whatever the guest sends.
    let listener = UnixListener::bind(sb.state_dir.join(format!("vsock_{SERVICE}"))).unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let service = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        s.set_nonblocking(true).unwrap();
                        let _ = (&s).write(&[0x5a; 256 * 1024]);
                        held.push(s);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(10))
                    }
                    Err(e) => panic!("the stand-in service cannot accept: {e}"),
                }
            }
            held.len()
        })
    };

    // Until the guest holds all the connections it may, and half a minute on.
    let started = Instant::now();
    let (mut peak, mut peak_rss, mut saturated) = (base, 0, None);
    let mut second = None;
    let mut open = 0;
    loop {
        peak = peak.max(private_kib(&sb));
        peak_rss = peak_rss.max(sb.status_kib("VmRSS"));
        open = attacker_open("flood-vsock").max(open);
        if open + 16 >= MAX_GUEST_CONNECTIONS && saturated.is_none() {
            saturated = Some(Instant::now());
            // Another container, started while the flood goes on.
            second = Some(std::thread::spawn(|| run("", "echo second-ok")));
        }
        if saturated.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
            break;
        }
        assert!(
            started.elapsed() < LIMIT,
            "the attacker opened only {open} connections in {LIMIT:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let elapsed = started.elapsed();
    let second = second.unwrap().join().unwrap();
    assert_eq!(stdout(&second), "second-ok\n", "{second:?}");
    let log = std::fs::read_to_string(&sb.log).unwrap();
    let logged = log.lines().count() - log_before;

    // The host still reaches the flooding guest: stop delivers SIGTERM.
    let out = sh("podman stop -t 30 flood-vsock >/dev/null && podman inspect -f '{{.State.ExitCode}}' flood-vsock");
    assert_eq!(stdout(&out).trim(), "143", "{out:?}");
    stop.store(true, Ordering::Relaxed);
    let accepted = service.join().unwrap();

    let bound = MAX_BUFFERED as u64 / 1024 + SLACK_KIB;
    assert!(
        peak <= base + bound,
        "the VMM's own memory grew from {base} to {peak} KiB (bound: +{bound} KiB)"
    );
    let budget = BURST as usize + (elapsed.as_secs() / REFILL.as_secs()) as usize + 1;
    assert!(
        logged <= budget,
        "{logged} log lines in {elapsed:?}, above the budget of {budget}: {log}"
    );
    eprintln!(
        "vsock flood: {open} guest connections ({accepted} accepted by the service) in {elapsed:?}; \
         VMM private memory {base} -> {peak} KiB, VmRSS peak {peak_rss} KiB; {logged} log lines"
    );
    let out = sh("podman rm -f -t 0 flood-vsock");
    assert!(out.status.success(), "{out:?}");
}
