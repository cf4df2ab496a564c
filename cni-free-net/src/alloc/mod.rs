//! Per-host IPv4 allocation for CNI-free mode, kept in one plain-text lease file.
//!
//! Every operation is a whole transaction under an exclusive `flock`:
//! lock → read the file → change it in memory → write a temp file in the same
//! directory → fsync → rename over the original → fsync the directory → unlock.
//! Any number of okvm processes (and threads) may therefore use the same file at
//! once, and a crash at any point leaves either the old or the new file, never
//! a torn one.

mod lease_file;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

pub use lease_file::MAX_OWNER_LEN;

use crate::net::Ipv4Net;
use lease_file::LeaseMap;

/// Who holds an address: an owner id (the container or sandbox id) and the pid
/// of the process whose life the lease follows.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub owner: String,
    pub pid: u32,
}

impl Lease {
    /// The default liveness test for [`Allocator::reclaim`]: does `/proc/<pid>` exist?
    ///
    /// A reused pid makes a dead owner look alive; that only delays reclaiming
    /// the address, it never frees one that is still in use.
    pub fn owner_process_exists(&self) -> bool {
        pid_exists(self.pid)
    }
}

/// Whether `/proc/<pid>` exists, i.e. the process is running or not yet reaped,
/// as seen from this process's pid namespace.
pub fn pid_exists(pid: u32) -> bool {
    pid != 0 && Path::new("/proc").join(pid.to_string()).exists()
}

/// Why an owner id was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OwnerError {
    #[error("it is empty")]
    Empty,
    #[error("it is {len} bytes long, more than the {MAX_OWNER_LEN} allowed")]
    TooLong { len: usize },
    #[error("it contains {c:?}; whitespace and control characters are not allowed")]
    BadChar { c: char },
}

/// What is wrong with one line of a lease file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineError {
    #[error("not valid UTF-8")]
    NotUtf8,
    #[error("expected 3 fields `<ip> <owner> <pid>`, found {found}")]
    FieldCount { found: usize },
    #[error("{text:?} is not an IPv4 address")]
    BadAddress { text: String },
    #[error("{addr} is outside the subnet {subnet} (was the configured subnet changed while leases were held?)")]
    OutsideSubnet { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("{addr} is reserved in {subnet} (network, gateway or broadcast address) and can never be leased")]
    ReservedAddress { addr: Ipv4Addr, subnet: Ipv4Net },
    #[error("bad owner id: {0}")]
    BadOwner(OwnerError),
    #[error("{text:?} is not a pid (a positive decimal number)")]
    BadPid { text: String },
    #[error("{addr} is leased twice (first on line {first_line})")]
    DuplicateAddress { addr: Ipv4Addr, first_line: usize },
    #[error("owner {owner:?} holds two leases (first on line {first_line})")]
    DuplicateOwner { owner: String, first_line: usize },
}

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}:{line}: corrupt lease file: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        line: usize,
        reason: LineError,
    },
    #[error("no free address left in {subnet}: all {capacity} are leased in {}; release addresses or reclaim those of dead owners", path.display())]
    Exhausted {
        subnet: Ipv4Net,
        capacity: u32,
        path: PathBuf,
    },
    #[error("owner id {owner:?} cannot be used: {reason}")]
    InvalidOwner { owner: String, reason: OwnerError },
    #[error("pid 0 is not a process and cannot own a lease")]
    InvalidPid,
    #[error("lease file path {} does not name a file", path.display())]
    InvalidPath { path: PathBuf },
}

pub type Result<T, E = AllocError> = std::result::Result<T, E>;

/// Hands out the guest addresses of one subnet, recording them in a lease file.
///
/// The value holds no file or lock itself: each call is a complete transaction,
/// so an `Allocator` may be kept around, cloned or shared between threads freely.
#[derive(Debug, Clone)]
pub struct Allocator {
    path: PathBuf,
    lock_path: PathBuf,
    tmp_path: PathBuf,
    subnet: Ipv4Net,
}

impl Allocator {
    /// Prepares the allocator for the lease file at `path`, creating its
    /// directory if needed, and checks that an existing file is readable and
    /// consistent with `subnet`, so configuration mistakes surface at start-up
    /// rather than at the first container.
    pub fn open(path: impl Into<PathBuf>, subnet: Ipv4Net) -> Result<Self> {
        let path = path.into();
        let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
            return Err(AllocError::InvalidPath { path });
        };
        // The lock lives in a file of its own because the lease file is
        // replaced by rename: a lock on it would stay behind on the old inode
        // while the next writer locks the new one.
        let lock_path = path.with_file_name(format!("{name}.lock"));
        // One fixed temp name is enough: only the lock holder ever writes it,
        // and a leftover from a crash is simply truncated by the next writer.
        let tmp_path = path.with_file_name(format!(".{name}.tmp"));
        let allocator = Self {
            path,
            lock_path,
            tmp_path,
            subnet,
        };
        let dir = allocator.dir();
        fs::create_dir_all(&dir).map_err(|source| AllocError::Io {
            action: "create the lease directory",
            path: dir,
            source,
        })?;
        allocator.transact(|_| Ok(((), false)))?;
        Ok(allocator)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn subnet(&self) -> Ipv4Net {
        self.subnet
    }

    /// Leases an address to `owner` for the calling process (see [`Self::allocate_for`]).
    pub fn allocate(&self, owner: &str) -> Result<Ipv4Addr> {
        self.allocate_for(owner, std::process::id())
    }

    /// Leases the lowest free guest address to `owner`, recording `pid` as the
    /// process whose life the lease follows.
    ///
    /// Idempotent: an owner that already holds a lease gets the same address
    /// back, and the lease is handed to `pid` (the process that asked last is
    /// the one that will need it).
    pub fn allocate_for(&self, owner: &str, pid: u32) -> Result<Ipv4Addr> {
        check_owner(owner)?;
        if pid == 0 {
            return Err(AllocError::InvalidPid);
        }
        let subnet = self.subnet;
        self.transact(|leases| {
            if let Some((addr, lease)) = leases.iter_mut().find(|(_, l)| l.owner == owner) {
                let changed = lease.pid != pid;
                lease.pid = pid;
                return Ok((*addr, changed));
            }
            let addr = subnet
                .guest_addresses()
                .find(|addr| !leases.contains_key(addr))
                .ok_or_else(|| AllocError::Exhausted {
                    subnet,
                    capacity: subnet.guest_capacity(),
                    path: self.path.clone(),
                })?;
            leases.insert(
                addr,
                Lease {
                    owner: owner.to_owned(),
                    pid,
                },
            );
            Ok((addr, true))
        })
    }

    /// Frees the address held by `owner`. Returns whether it held one, so that
    /// releasing twice (e.g. a retried `delete`) is not an error.
    pub fn release(&self, owner: &str) -> Result<bool> {
        check_owner(owner)?;
        self.transact(|leases| {
            let before = leases.len();
            leases.retain(|_, lease| lease.owner != owner);
            let released = leases.len() != before;
            Ok((released, released))
        })
    }

    /// The address `owner` holds, if any.
    pub fn lookup(&self, owner: &str) -> Result<Option<Ipv4Addr>> {
        check_owner(owner)?;
        self.transact(|leases| {
            let found = leases
                .iter()
                .find(|(_, lease)| lease.owner == owner)
                .map(|(addr, _)| *addr);
            Ok((found, false))
        })
    }

    /// All leases, lowest address first.
    pub fn list(&self) -> Result<Vec<(Ipv4Addr, Lease)>> {
        self.transact(|leases| Ok((leases.clone().into_iter().collect(), false)))
    }

    /// Frees every lease for which `is_alive` returns false, and returns the
    /// freed leases. `is_alive` runs while the lock is held: keep it quick.
    pub fn reclaim(&self, is_alive: impl Fn(&Lease) -> bool) -> Result<Vec<(Ipv4Addr, Lease)>> {
        self.transact(|leases| {
            let dead: Vec<(Ipv4Addr, Lease)> = leases
                .iter()
                .filter(|(_, lease)| !is_alive(lease))
                .map(|(addr, lease)| (*addr, lease.clone()))
                .collect();
            for (addr, _) in &dead {
                leases.remove(addr);
            }
            let changed = !dead.is_empty();
            Ok((dead, changed))
        })
    }

    /// [`Self::reclaim`] with the default liveness test, [`Lease::owner_process_exists`].
    pub fn reclaim_dead(&self) -> Result<Vec<(Ipv4Addr, Lease)>> {
        self.reclaim(Lease::owner_process_exists)
    }

    fn dir(&self) -> PathBuf {
        match self.path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Runs `change` on the current leases under the lock; `change` returns its
    /// result and whether it modified the leases, in which case they are written back.
    fn transact<T>(&self, change: impl FnOnce(&mut LeaseMap) -> Result<(T, bool)>) -> Result<T> {
        let _lock = self.lock()?;
        let mut leases = self.read()?;
        let (result, changed) = change(&mut leases)?;
        if changed {
            self.write(&leases)?;
        }
        Ok(result)
        // _lock drops here, after the rename, releasing the flock.
    }

    fn lock(&self) -> Result<Flock<File>> {
        let io_err = |source| AllocError::Io {
            action: "lock",
            path: self.lock_path.clone(),
            source,
        };
        // std opens with O_CLOEXEC, so a VMM forked while we hold the lock does
        // not inherit it and keep other okvm processes waiting.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&self.lock_path)
            .map_err(io_err)?;
        // flock belongs to the open file description, so two threads of one
        // process exclude each other too: each call opens the file afresh.
        loop {
            match Flock::lock(file, FlockArg::LockExclusive) {
                Ok(lock) => return Ok(lock),
                Err((returned, Errno::EINTR)) => file = returned,
                Err((_, errno)) => return Err(io_err(io::Error::from(errno))),
            }
        }
    }

    fn read(&self) -> Result<LeaseMap> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            // No file yet simply means no leases yet.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LeaseMap::new()),
            Err(source) => {
                return Err(AllocError::Io {
                    action: "read",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        lease_file::parse(&bytes, &self.subnet).map_err(|(line, reason)| AllocError::Corrupt {
            path: self.path.clone(),
            line,
            reason,
        })
    }

    fn write(&self, leases: &LeaseMap) -> Result<()> {
        let text = lease_file::render(&self.subnet, leases);
        let written = write_tmp(&self.tmp_path, text.as_bytes());
        if written.is_err() {
            // Best effort: the next writer truncates it anyway.
            let _ = fs::remove_file(&self.tmp_path);
        }
        written.map_err(|source| AllocError::Io {
            action: "write",
            path: self.tmp_path.clone(),
            source,
        })?;
        fs::rename(&self.tmp_path, &self.path).map_err(|source| AllocError::Io {
            action: "replace",
            path: self.path.clone(),
            source,
        })?;
        // Without this the rename itself may be lost in a power cut, bringing
        // back leases that were already released (or losing new ones).
        let dir = self.dir();
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| AllocError::Io {
                action: "sync the lease directory",
                path: dir,
                source,
            })
    }
}

fn write_tmp(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        // Readable by all: the lease file is meant to be read with `cat`.
        .mode(0o644)
        .open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

fn check_owner(owner: &str) -> Result<()> {
    lease_file::validate_owner(owner).map_err(|reason| AllocError::InvalidOwner {
        owner: owner.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{HashMap, HashSet};

    fn subnet(s: &str) -> Ipv4Net {
        s.parse().expect("valid subnet")
    }

    fn open(dir: &tempfile::TempDir, net: &str) -> Allocator {
        Allocator::open(dir.path().join("leases"), subnet(net)).expect("open allocator")
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().expect("valid address")
    }

    #[test]
    fn allocates_lowest_free_address_skipping_reserved_ones() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        assert_eq!(a.allocate("one").expect("allocate"), ip("10.88.90.2"));
        assert_eq!(a.allocate("two").expect("allocate"), ip("10.88.90.3"));
        assert!(a.release("one").expect("release"));
        // The hole is filled before the range grows.
        assert_eq!(a.allocate("three").expect("allocate"), ip("10.88.90.2"));
    }

    #[test]
    fn allocate_is_idempotent_and_follows_the_latest_pid() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        let first = a.allocate_for("ctr", 100).expect("allocate");
        let again = a.allocate_for("ctr", 200).expect("allocate again");
        assert_eq!(first, again);
        assert_eq!(
            a.list().expect("list"),
            [(
                first,
                Lease {
                    owner: "ctr".into(),
                    pid: 200
                }
            )]
        );
        assert_eq!(a.lookup("ctr").expect("lookup"), Some(first));
        assert_eq!(a.lookup("other").expect("lookup"), None);
    }

    #[test]
    fn release_reports_whether_anything_was_held() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        assert!(!a.release("nobody").expect("release"));
        a.allocate("ctr").expect("allocate");
        assert!(a.release("ctr").expect("release"));
        assert!(!a.release("ctr").expect("second release"));
        assert!(a.list().expect("list").is_empty());
    }

    #[test]
    fn exhaustion_is_a_typed_error_and_release_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A /29 has 8 addresses: network, gateway, broadcast and 5 for guests.
        let a = open(&dir, "10.1.2.8/29");
        let got: Vec<_> = (0..5)
            .map(|i| a.allocate(&format!("c{i}")).expect("allocate"))
            .collect();
        assert_eq!(got.first(), Some(&ip("10.1.2.10")));
        assert_eq!(got.last(), Some(&ip("10.1.2.14")));
        let err = a.allocate("c5").expect_err("subnet is full");
        assert!(
            matches!(err, AllocError::Exhausted { capacity: 5, .. }),
            "{err:?}"
        );
        assert!(err
            .to_string()
            .starts_with("no free address left in 10.1.2.8/29"));
        // Asking again for an existing owner still works when full.
        assert_eq!(a.allocate("c4").expect("idempotent"), ip("10.1.2.14"));
        a.release("c2").expect("release");
        assert_eq!(a.allocate("c5").expect("allocate"), ip("10.1.2.12"));
    }

    #[test]
    fn the_file_is_human_readable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        a.allocate_for("web", 41).expect("allocate");
        a.allocate_for("db", 42).expect("allocate");
        let text = fs::read_to_string(a.path()).expect("read lease file");
        let leases: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(leases, ["10.88.90.2 web 41", "10.88.90.3 db 42"]);
        assert!(text.starts_with("# okvm cni-free-net leases for 10.88.90.0/24"));
        assert!(
            !dir.path().join(".leases.tmp").exists(),
            "temp file left behind"
        );
    }

    #[test]
    fn corrupt_file_names_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("leases");
        fs::write(&path, "# ok\n10.88.90.2 a 5\n10.88.90.3 b\n").expect("write");
        let err = Allocator::open(&path, subnet("10.88.90.0/24")).expect_err("corrupt");
        match &err {
            AllocError::Corrupt { path: p, line, .. } => {
                assert_eq!(p, &path);
                assert_eq!(*line, 3);
            }
            other => panic!("expected Corrupt, got {other:?}"),
        }
        assert_eq!(
            err.to_string(),
            format!(
                "{}:3: corrupt lease file: expected 3 fields `<ip> <owner> <pid>`, found 2",
                path.display()
            )
        );
    }

    #[test]
    fn a_changed_subnet_is_reported_not_silently_reused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        a.allocate("ctr").expect("allocate");
        let err = Allocator::open(a.path(), subnet("10.88.91.0/24")).expect_err("mismatch");
        assert!(
            matches!(
                err,
                AllocError::Corrupt {
                    line: 3,
                    reason: LineError::OutsideSubnet { .. },
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn rejects_bad_owner_ids_and_pid_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        for bad in ["", "two words", "new\nline"] {
            assert!(
                matches!(a.allocate(bad), Err(AllocError::InvalidOwner { .. })),
                "{bad:?} accepted"
            );
        }
        assert!(matches!(
            a.allocate_for("ok", 0),
            Err(AllocError::InvalidPid)
        ));
        assert!(a.list().expect("list").is_empty());
    }

    #[test]
    fn open_creates_missing_directories_and_rejects_pathless_paths() {
        let dir = tempfile::tempdir().expect("tempdir");
        let nested = dir.path().join("run/okvm/net/leases");
        let a = Allocator::open(&nested, subnet("10.88.90.0/24")).expect("open");
        a.allocate("ctr").expect("allocate");
        assert!(nested.exists());
        assert!(matches!(
            Allocator::open("/", subnet("10.88.90.0/24")),
            Err(AllocError::InvalidPath { .. })
        ));
    }

    #[test]
    fn a_stale_temp_file_from_a_crash_is_harmless() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        a.allocate_for("before", 7).expect("allocate");
        // A writer that died after starting its temp file, before the rename.
        fs::write(dir.path().join(".leases.tmp"), "10.88.90.2 half").expect("write");
        assert_eq!(a.list().expect("list").len(), 1);
        a.allocate_for("after", 8).expect("allocate");
        let owners: Vec<_> = a
            .list()
            .expect("list")
            .into_iter()
            .map(|(_, l)| l.owner)
            .collect();
        assert_eq!(owners, ["before", "after"]);
    }

    #[test]
    fn reclaim_uses_the_callers_judgement() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = open(&dir, "10.88.90.0/24");
        a.allocate_for("keep", 10).expect("allocate");
        let gone = a.allocate_for("gone", 11).expect("allocate");
        let freed = a.reclaim(|lease| lease.pid != 11).expect("reclaim");
        assert_eq!(
            freed,
            [(
                gone,
                Lease {
                    owner: "gone".into(),
                    pid: 11
                }
            )]
        );
        assert_eq!(a.lookup("keep").expect("lookup"), Some(ip("10.88.90.2")));
        assert!(a.reclaim(|_| true).expect("reclaim").is_empty());
    }

    #[test]
    fn pid_exists_sees_this_process_and_not_pid_zero() {
        assert!(pid_exists(std::process::id()));
        assert!(!pid_exists(0));
    }

    #[derive(Debug, Clone)]
    enum Op {
        Allocate(usize),
        Release(usize),
        Reclaim(usize),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        // 12 owners competing for the 5 addresses of a /29 reach exhaustion often.
        prop_oneof![
            4 => (0..12usize).prop_map(Op::Allocate),
            2 => (0..12usize).prop_map(Op::Release),
            1 => (0..12usize).prop_map(Op::Reclaim),
        ]
    }

    proptest! {
        // Each operation fsyncs twice; keep the case count modest.
        #![proptest_config(ProptestConfig::with_cases(48))]

        #[test]
        fn never_hands_out_duplicate_or_reserved_addresses(
            ops in proptest::collection::vec(op_strategy(), 1..60)
        ) {
            let dir = tempfile::tempdir().expect("tempdir");
            let net = subnet("10.1.2.8/29");
            let a = Allocator::open(dir.path().join("leases"), net).expect("open");
            // The model: which owner holds which address.
            let mut model: HashMap<String, Ipv4Addr> = HashMap::new();

            for op in ops {
                match op {
                    Op::Allocate(i) => {
                        let owner = format!("owner-{i}");
                        match a.allocate_for(&owner, 1000 + i as u32) {
                            Ok(addr) => {
                                if let Some(prev) = model.get(&owner) {
                                    prop_assert_eq!(*prev, addr, "not idempotent");
                                }
                                prop_assert!(net.contains(addr) && !net.is_reserved(addr));
                                prop_assert!(
                                    model.iter().all(|(o, a)| o == &owner || *a != addr),
                                    "{} handed out twice", addr
                                );
                                model.insert(owner, addr);
                            }
                            Err(AllocError::Exhausted { .. }) => {
                                prop_assert!(!model.contains_key(&owner));
                                prop_assert_eq!(model.len() as u32, net.guest_capacity());
                            }
                            Err(e) => prop_assert!(false, "unexpected error: {}", e),
                        }
                    }
                    Op::Release(i) => {
                        let owner = format!("owner-{i}");
                        let released = a.release(&owner).expect("release");
                        prop_assert_eq!(released, model.remove(&owner).is_some());
                    }
                    Op::Reclaim(i) => {
                        let dead_pid = 1000 + i as u32;
                        let freed = a.reclaim(|l| l.pid != dead_pid).expect("reclaim");
                        let owner = format!("owner-{i}");
                        let expected: Vec<_> = model.remove(&owner).into_iter().collect();
                        let freed: Vec<_> = freed.into_iter().map(|(addr, _)| addr).collect();
                        prop_assert_eq!(freed, expected);
                    }
                }
                let listed = a.list().expect("list");
                let addrs: HashSet<_> = listed.iter().map(|(addr, _)| *addr).collect();
                prop_assert_eq!(addrs.len(), listed.len(), "duplicate address in file");
                prop_assert!(addrs.iter().all(|addr| !net.is_reserved(*addr)));
                let listed: HashMap<String, Ipv4Addr> =
                    listed.into_iter().map(|(addr, l)| (l.owner, addr)).collect();
                prop_assert_eq!(&listed, &model);
            }
        }
    }
}
