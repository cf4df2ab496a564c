//! The allocator against real processes: many allocating at once, a lock
//! holder killed mid-transaction, and leases of processes that have exited.
//!
//! Child processes are this very test binary, re-run with a filter that
//! selects one test and an environment variable that puts it in child mode.

use std::collections::HashSet;
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Barrier};
use std::time::{Duration, Instant};

use cni_free_net::{Allocator, Ipv4Net};

const CHILD_LEASES: &str = "CNI_FREE_NET_TEST_LEASES";
const CHILD_OWNER: &str = "CNI_FREE_NET_TEST_OWNER";
const CHILD_GO: &str = "CNI_FREE_NET_TEST_GO";
// Children report through stdout; the test harness may print its own text on
// the same line ("test foo ... "), so markers are searched for, not matched.
const ALLOCATED_MARKER: &str = "child-allocated:";
const LOCKED_MARKER: &str = "child-holds-the-lock";

fn subnet() -> Ipv4Net {
    "10.88.90.0/24".parse().expect("valid subnet")
}

/// Re-runs this test binary so that only `test_name` runs, in child mode.
fn spawn_child(test_name: &str, envs: &[(&str, &Path)], owner: &str) -> Child {
    let exe = std::env::current_exe().expect("path of the test binary");
    let mut cmd = Command::new(exe);
    cmd.args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_OWNER, owner)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (key, value) in envs {
        cmd.env(key, value);
    }
    cmd.spawn().expect("spawn child test process")
}

fn child_env(key: &str) -> Option<PathBuf> {
    std::env::var_os(key).map(PathBuf::from)
}

/// Waits (bounded) until `path` exists, so that all children start their
/// allocation at nearly the same moment instead of one after another.
fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "start signal never came");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn twenty_processes_allocate_concurrently() {
    if let Some(leases) = child_env(CHILD_LEASES) {
        // Child mode: one allocation, reported on stdout.
        let owner = std::env::var(CHILD_OWNER).expect("owner for child");
        wait_for_file(&child_env(CHILD_GO).expect("start signal path"));
        let allocator = Allocator::open(&leases, subnet()).expect("child opens allocator");
        let addr = allocator.allocate(&owner).expect("child allocates");
        // Asking again must give the same answer even under contention.
        assert_eq!(allocator.allocate(&owner).expect("re-allocate"), addr);
        println!("{ALLOCATED_MARKER}{addr}");
        return;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let leases = dir.path().join("leases");
    let go = dir.path().join("go");
    let children: Vec<(String, Child)> = (0..20)
        .map(|i| {
            let owner = format!("ctr-{i}");
            let child = spawn_child(
                "twenty_processes_allocate_concurrently",
                &[(CHILD_LEASES, &leases), (CHILD_GO, &go)],
                &owner,
            );
            (owner, child)
        })
        .collect();
    std::fs::write(&go, "").expect("signal children to start");

    let mut addrs = HashSet::new();
    for (owner, child) in children {
        let out = child.wait_with_output().expect("wait for child");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "child {owner} failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let addr: Ipv4Addr = stdout
            .lines()
            .find_map(|l| l.split_once(ALLOCATED_MARKER))
            .map(|(_, addr)| addr.trim())
            .unwrap_or_else(|| panic!("child {owner} reported no address:\n{stdout}"))
            .parse()
            .expect("child printed an IPv4 address");
        assert!(addrs.insert(addr), "{addr} was handed out twice");
    }
    assert_eq!(addrs.len(), 20);

    let listed = Allocator::open(&leases, subnet())
        .expect("open")
        .list()
        .expect("list");
    assert_eq!(listed.len(), 20, "lease file: {listed:?}");
    let listed_addrs: HashSet<_> = listed.iter().map(|(addr, _)| *addr).collect();
    assert_eq!(listed_addrs, addrs);
    let owners: HashSet<_> = listed.iter().map(|(_, l)| l.owner.clone()).collect();
    assert_eq!(owners, (0..20).map(|i| format!("ctr-{i}")).collect());
}

#[test]
fn twenty_threads_allocate_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allocator = Allocator::open(dir.path().join("leases"), subnet()).expect("open");
    let barrier = Arc::new(Barrier::new(20));
    let threads: Vec<_> = (0..20)
        .map(|i| {
            let allocator = allocator.clone();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                barrier.wait();
                allocator.allocate(&format!("thread-{i}"))
            })
        })
        .collect();
    let addrs: HashSet<Ipv4Addr> = threads
        .into_iter()
        .map(|t| {
            t.join()
                .expect("thread panicked")
                .expect("thread allocates")
        })
        .collect();
    assert_eq!(addrs.len(), 20);
    assert_eq!(allocator.list().expect("list").len(), 20);
}

#[test]
fn a_lock_holder_killed_mid_transaction_blocks_no_one() {
    if let Some(leases) = child_env(CHILD_LEASES) {
        // Child mode: hold the lock inside a transaction until killed.
        let allocator = Allocator::open(&leases, subnet()).expect("child opens allocator");
        let _ = allocator.reclaim(|_| {
            println!("{LOCKED_MARKER}");
            loop {
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        unreachable!("the child is killed while holding the lock");
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let leases = dir.path().join("leases");
    let allocator = Allocator::open(&leases, subnet()).expect("open");
    let held = allocator.allocate("held").expect("allocate");

    let mut child = spawn_child(
        "a_lock_holder_killed_mid_transaction_blocks_no_one",
        &[(CHILD_LEASES, &leases)],
        "unused",
    );
    // Read the child's output on a thread so that a child that never takes
    // the lock fails the test after a while instead of hanging it.
    let stdout = child.stdout.take().expect("piped stdout");
    let (locked_tx, locked_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(LOCKED_MARKER) {
                let _ = locked_tx.send(());
            }
        }
    });
    let locked = locked_rx.recv_timeout(Duration::from_secs(30)).is_ok();
    child.kill().expect("kill child");
    child.wait().expect("reap child");
    assert!(locked, "child never took the lock");

    // The kernel drops a dead process's flock; if it did not, this would
    // block forever, so it runs on a thread with a deadline.
    let (done_tx, done_rx) = mpsc::channel();
    let after = allocator.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(after.allocate("after-crash"));
    });
    let next = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("lock still held after its holder was killed")
        .expect("allocate after crash");
    assert_ne!(next, held);
    assert_eq!(allocator.lookup("held").expect("lookup"), Some(held));
}

#[test]
fn reclaim_frees_leases_of_exited_processes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let allocator = Allocator::open(dir.path().join("leases"), subnet()).expect("open");

    let mut child = Command::new("true").spawn().expect("spawn `true`");
    let dead_pid = child.id();
    child.wait().expect("reap `true`");

    let dead = allocator
        .allocate_for("exited", dead_pid)
        .expect("allocate for dead pid");
    let alive = allocator.allocate("this-test").expect("allocate for self");

    let freed = allocator.reclaim_dead().expect("reclaim");
    assert_eq!(freed.len(), 1, "freed {freed:?}");
    assert_eq!(freed[0].0, dead);
    assert_eq!(freed[0].1.owner, "exited");
    assert_eq!(freed[0].1.pid, dead_pid);

    let left = allocator.list().expect("list");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].0, alive);
    assert!(allocator.reclaim_dead().expect("reclaim again").is_empty());
}
