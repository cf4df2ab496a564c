//! okvm-init running OCI containers, end to end inside the test host: the
//! guest protocol's Create, Start, Wait, Exec, Signal, Resize and Processes
//! driven directly (no `okvm create`) against the busybox image in a
//! virtio-fs share, with stdio over raw vsock streams and ptys.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use okvm::guest::host_port_path;
use okvm_integration::guest::{unpack_busybox, BootedGuest};
use okvm_integration::{require_testhost, text};
use okvm_protocol::{ContainerSpec, RequestBody, ResponseBody, Stdio as GuestStdio};
use serde_json::json;

const LIMIT: Duration = Duration::from_secs(120);
/// The share's virtio-fs tag.
const TAG: &str = "okvm";

/// `okvm boot` with a vsock device and one share laid out as the runtime lays
/// out a sandbox's: `rootfs/` (the busybox image) and `binds/data/` (a host
/// directory a bind mount brings in).
struct Guest {
    booted: BootedGuest,
}

impl Guest {
    fn boot() -> Guest {
        require_testhost();
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        unpack_busybox(&share.join("rootfs"));
        let data = share.join("binds/data");
        std::fs::create_dir_all(&data).unwrap();
        std::fs::write(data.join("from-host"), "placed by the host\n").unwrap();
        let args = ["--share".to_string(), format!("{TAG}={}", share.display())];
        Guest {
            booted: BootedGuest::boot(dir, &args, LIMIT),
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.booted.dir.path().join("share/binds/data")
    }

    fn request(&mut self, body: RequestBody) -> ResponseBody {
        self.booted.request(body)
    }

    fn create(&mut self, spec: ContainerSpec, stdio: GuestStdio) -> u32 {
        match self.request(RequestBody::Create {
            container: Box::new(spec),
            stdio,
        }) {
            ResponseBody::Created { pid } => pid,
            other => panic!("create: {other:?}\n{}", self.booted.diagnostics()),
        }
    }

    /// Exec's `args` as `uid` in the running container.
    fn exec(&mut self, args: &[&str], uid: u32, stdio: GuestStdio) -> u32 {
        match self.request(RequestBody::Exec {
            process: Box::new(process(args, uid)),
            stdio,
        }) {
            ResponseBody::Started { pid } => pid,
            other => panic!("exec: {other:?}\n{}", self.booted.diagnostics()),
        }
    }

    fn done(&mut self, body: RequestBody) {
        let r = self.request(body);
        assert_eq!(r, ResponseBody::Done, "\n{}", self.booted.diagnostics());
    }

    /// Waits for process `pid` (the container's when None): (code, signal).
    fn wait(&mut self, pid: Option<u32>) -> (Option<i32>, Option<i32>) {
        match self.request(RequestBody::Wait { pid }) {
            ResponseBody::Exited { code, signal, .. } => (code, signal),
            other => panic!("wait: {other:?}"),
        }
    }

    fn pids(&mut self) -> Vec<u32> {
        match self.request(RequestBody::Processes) {
            ResponseBody::Pids { pids } => pids,
            other => panic!("processes: {other:?}"),
        }
    }

    /// Everything the guest sends to host `port` until it closes the stream.
    fn output(&self, port: u32) -> JoinHandle<String> {
        let listener = UnixListener::bind(host_port_path(&self.booted.uds, port)).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut out = Vec::new();
            s.read_to_end(&mut out).unwrap();
            text(&out)
        })
    }

    /// The stream the guest opens to host `port` (a terminal's).
    fn stream(&self, port: u32) -> mpsc::Receiver<UnixStream> {
        let listener = UnixListener::bind(host_port_path(&self.booted.uds, port)).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            if let Ok((s, _)) = listener.accept() {
                let _ = tx.send(s);
            }
        });
        rx
    }

    fn shutdown(self) {
        let (st, _) = self.booted.shutdown(LIMIT);
        assert_eq!(st.code(), Some(0));
    }
}

/// The streams given (None: /dev/null).
fn streams(stdin: Option<u32>, stdout: Option<u32>, stderr: Option<u32>) -> GuestStdio {
    GuestStdio::Streams {
        stdin,
        stdout,
        stderr,
    }
}

/// An OCI process as engines write it (runc's default capabilities, PATH).
fn process(args: &[&str], uid: u32) -> oci_spec::runtime::Process {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_KILL",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_NET_BIND_SERVICE"
    ]);
    serde_json::from_value(json!({
        "user": {"uid": uid, "gid": uid, "umask": 0o027},
        "args": args,
        "cwd": "/",
        "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "TERM=xterm"],
        "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
        "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
        "noNewPrivileges": true,
        "oomScoreAdj": 100
    }))
    .unwrap()
}

/// The busybox container, with the mounts podman gives a container and a
/// bind mount of the host's `binds/data` on /data.
fn container(args: &[&str], uid: u32) -> ContainerSpec {
    let mounts = json!([
        {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        {"destination": "/data", "type": "bind", "source": "binds/data", "options": ["rbind", "rw"]}
    ]);
    ContainerSpec {
        id: "c1".into(),
        share_tag: TAG.into(),
        rootfs: "rootfs".into(),
        readonly: false,
        hostname: Some("okvm-box".into()),
        mounts: serde_json::from_value(mounts).unwrap(),
        process: process(args, uid),
        masked_paths: ["/proc/kcore", "/proc/timer_list", "/sys/firmware"]
            .map(String::from)
            .into(),
        readonly_paths: vec!["/proc/sys".into()],
        sysctl: Default::default(),
    }
}

/// Reads `stream` until `needle` shows up; all that was read.
fn read_until(stream: &mut UnixStream, needle: &str) -> String {
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + LIMIT;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !text(&got).contains(needle) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in {:?}",
            text(&got)
        );
        match stream.read(&mut buf) {
            Ok(0) => panic!("stream ended before {needle:?}: {:?}", text(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => panic!("{e}"),
        }
    }
    text(&got)
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn a_container_runs_in_its_own_root_and_its_exit_code_comes_back() {
    let mut g = Guest::boot();
    let refused = |g: &mut Guest, spec: ContainerSpec| match g.request(RequestBody::Create {
        container: Box::new(spec),
        stdio: streams(None, None, None),
    }) {
        ResponseBody::Error { message } => message,
        other => panic!("{other:?}"),
    };
    // An executable the image lacks is refused at Create, in runc's words.
    assert_eq!(
        refused(&mut g, container(&["nosuch"], 0)),
        r#"exec: "nosuch": executable file not found in $PATH"#
    );
    assert_eq!(
        refused(&mut g, container(&["/x"], 0)),
        r#"exec: "/x": stat /x: no such file or directory"#
    );
    // So is a filesystem the guest kernel lacks.
    let mut spec = container(&["true"], 0);
    spec.mounts[0].set_typ(Some("nosuchfs".into()));
    assert_eq!(
        refused(&mut g, spec),
        r#"mount type "nosuchfs" (on /proc) is not supported by the guest kernel"#
    );

    let script = "echo pid $$; hostname; cat /data/from-host; \
                  echo $(umask) $(cat /proc/self/oom_score_adj) $(ulimit -n) \
                       $(cat /proc/sys/kernel/domainname); ls /dev; \
                  grep -c ' /data ' /proc/mounts; cat /proc/timer_list | wc -c; \
                  ls /sys/firmware | wc -l; \
                  echo written > /data/from-guest; echo oops >&2; exit 7";
    let mut spec = container(&["sh", "-c", script], 0);
    // Applied before /proc/sys turns read-only.
    spec.sysctl
        .insert("kernel.domainname".into(), "okvm.test".into());
    let out = g.output(7001);
    let err = g.output(7002);
    let pid = g.create(spec, streams(None, Some(7001), Some(7002)));
    assert_eq!(g.pids(), [pid], "created: only the prepared process");
    // Several Waits may be pending, on other connections too.
    let mut other = okvm::guest::Client::connect(&g.booted.uds).unwrap();
    other.set_timeout(Some(LIMIT));
    let early_wait = std::thread::spawn(move || other.request(RequestBody::Wait { pid: None }));
    g.done(RequestBody::Start);
    assert_eq!(g.wait(None), (Some(7), None));
    // A Wait after the end still gets the status.
    assert_eq!(g.wait(Some(pid)), (Some(7), None));
    assert!(matches!(
        early_wait.join().unwrap(),
        Ok(ResponseBody::Exited { code: Some(7), .. })
    ));
    let out = out.join().unwrap();
    let err = err.join().unwrap();
    let head = "pid 1\nokvm-box\nplaced by the host\n0027 100 1024 okvm.test\n";
    assert!(out.starts_with(head), "{out}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "ptmx", "pts", "fd", "stdin",
    ] {
        assert!(out.lines().any(|l| l == dev), "/dev/{dev} missing: {out}");
    }
    assert!(
        out.ends_with("1\n0\n0\n"),
        "one /data mount, a masked file and a masked directory: {out}"
    );
    assert_eq!(err, "oops\n");
    // Synced before the exit was reported.
    let written = std::fs::read_to_string(g.data_dir().join("from-guest")).unwrap();
    assert_eq!(written, "written\n");
    // okvm-init re-rooted the initramfs, so the stage could pivot_root.
    let console = std::fs::read_to_string(g.booted.console()).unwrap();
    assert!(!console.contains("pivot_root refused"), "{console}");
    g.shutdown();
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn exec_users_readonly_root_and_signals_to_pid_1() {
    let mut g = Guest::boot();
    let mut spec = container(&["sleep", "1000"], 1000);
    spec.readonly = true;
    let pid = g.create(spec, streams(None, None, None));
    g.done(RequestBody::Start);

    // The container process runs as uid 1000.
    let out = g.output(7101);
    let id = g.exec(
        &["sh", "-c", "id -u; grep Uid /proc/1/status"],
        1000,
        streams(None, Some(7101), None),
    );
    assert_eq!(g.wait(Some(id)), (Some(0), None));
    let out = out.join().unwrap();
    assert!(
        out.starts_with("1000\nUid:\t1000\t1000\t1000\t1000"),
        "{out}"
    );

    // Exec'd processes run in the container; its root is read-only.
    let out = g.output(7102);
    let err = g.output(7103);
    let e = g.exec(
        &["sh", "-c", "echo hi; hostname; touch /x"],
        0,
        streams(None, Some(7102), Some(7103)),
    );
    assert_eq!(g.wait(Some(e)), (Some(1), None));
    assert_eq!(out.join().unwrap(), "hi\nokvm-box\n");
    assert!(err.join().unwrap().contains("Read-only file system"));

    // An exec'd process with a terminal of the size asked for.
    let term = g.stream(7104);
    let t = g.exec(
        &["sh", "-c", "stty size; read line; stty size"],
        0,
        GuestStdio::Terminal {
            port: 7104,
            rows: 33,
            cols: 101,
        },
    );
    let mut s = term.recv_timeout(LIMIT).unwrap();
    assert!(read_until(&mut s, "33 101").contains("33 101"));
    g.done(RequestBody::Resize {
        pid: Some(t),
        rows: 40,
        cols: 120,
    });
    s.write_all(b"go\n").unwrap();
    read_until(&mut s, "40 120");
    assert_eq!(g.wait(Some(t)), (Some(0), None));

    // SIGTERM to a PID 1 without a handler is ignored, as under runc.
    g.done(RequestBody::Signal {
        pid: None,
        signal: 15,
        all: false,
    });
    std::thread::sleep(Duration::from_secs(1));
    assert!(g.pids().contains(&pid), "sleep ignored SIGTERM");
    g.done(RequestBody::Signal {
        pid: None,
        signal: 9,
        all: false,
    });
    assert_eq!(g.wait(None), (None, Some(9)));
    assert_eq!(g.pids(), Vec::<u32>::new());
    g.shutdown();
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn a_terminal_container_resizes_and_its_sigterm_trap_sets_the_exit_code() {
    let mut g = Guest::boot();
    let script = "trap 'stty size' WINCH; trap 'exit 3' TERM; tty; stty size; echo ready; \
                  while :; do sleep 1; done";
    let term = g.stream(7201);
    g.create(
        container(&["sh", "-c", script], 0),
        GuestStdio::Terminal {
            port: 7201,
            rows: 25,
            cols: 90,
        },
    );
    g.done(RequestBody::Start);
    let mut s = term.recv_timeout(LIMIT).unwrap();
    let seen = read_until(&mut s, "ready");
    assert!(seen.contains("/dev/pts/0\r\n25 90\r\n"), "{seen:?}");
    g.done(RequestBody::Resize {
        pid: None,
        rows: 50,
        cols: 132,
    });
    read_until(&mut s, "50 132");
    g.done(RequestBody::Signal {
        pid: None,
        signal: 15,
        all: false,
    });
    assert_eq!(g.wait(None), (Some(3), None));
    // The terminal's stream ends with the process.
    let mut rest = Vec::new();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.read_to_end(&mut rest).unwrap();
    g.shutdown();
}

#[test]
#[ignore = "boots a guest: runs inside the test host (make test-e2e)"]
fn one_guest_holds_several_containers_each_addressed_by_its_id() {
    let mut g = Guest::boot();
    let first = container(&["sh", "-c", "echo first $$; exit 3"], 0);
    let mut second = container(&["sh", "-c", "echo second $$; exit 4"], 0);
    second.id = "c2".into();
    let (out1, out2) = (g.output(7101), g.output(7201));
    g.create(first, streams(None, Some(7101), None));
    g.create(second.clone(), streams(None, None, None));
    // A second container with a taken id is refused; the first one is intact.
    match g.request(RequestBody::Create {
        container: Box::new(second.clone()),
        stdio: streams(None, None, None),
    }) {
        ResponseBody::Error { message } => {
            assert_eq!(message, r#"this guest already has container "c2""#)
        }
        other => panic!("{other:?}"),
    }
    let connect = |id: &str| {
        let mut c = okvm::guest::Client::connect(&g.booted.uds)
            .unwrap()
            .for_container(id);
        c.set_timeout(Some(LIMIT));
        c
    };
    let mut unknown = connect("c9");
    assert_eq!(
        unknown.request(RequestBody::Processes).unwrap(),
        ResponseBody::Error {
            message: r#"there is no container "c9" in this guest"#.into()
        }
    );
    drop(unknown);
    // A third container, created and followed over a connection addressed to
    // it (c2 stays created, never started, until the guest powers off).
    let mut c3 = connect("c3");
    second.id = "c3".into();
    match c3
        .request(RequestBody::Create {
            container: Box::new(second),
            stdio: streams(None, Some(7201), None),
        })
        .unwrap()
    {
        ResponseBody::Created { .. } => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c3.request(RequestBody::Start).unwrap(), ResponseBody::Done);
    // Requests without a container id are about the first one.
    g.done(RequestBody::Start);
    assert_eq!(g.wait(None), (Some(3), None));
    match c3.request(RequestBody::Wait { pid: None }).unwrap() {
        ResponseBody::Exited { code, .. } => assert_eq!(code, Some(4)),
        other => panic!("{other:?}"),
    }
    // Each is PID 1 of a pid namespace of its own.
    assert_eq!(out1.join().unwrap(), "first 1\n");
    assert_eq!(out2.join().unwrap(), "second 1\n");
    drop(c3);
    g.shutdown();
}
