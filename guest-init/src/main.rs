//! okvm-init, PID 1 of an okvm guest.
//!
//! It brings up the pseudo filesystems and reports on the console that the
//! guest is ready and how long the kernel took. With a vsock device it then
//! announces itself to the host (a connection to host port 1024) and serves
//! control requests (on that connection and on its own port 1024) until asked
//! to power off; without one there is nothing to serve and it powers off at
//! once. Power-off is a reset, which the VMM (or QEMU with -no-reboot) takes as
//! the end: a microVM has no ACPI, so a reset through the kernel's `reboot=`
//! method is the one exit every VMM sees.

use std::process::ExitCode;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

use okvm_init::container::stage;
use okvm_init::{banner, reaper, root, server, uptime, vsock};

fn main() -> ExitCode {
    // okvm-init re-executes itself to prepare each container process (it is
    // then PID 1 of a new pid namespace, so this comes first).
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some(stage::MARKER) {
        return stage::main(args.get(2).map(String::as_str));
    }
    if std::process::id() != 1 {
        eprintln!("okvm-init: must run as PID 1 inside an okvm guest");
        return ExitCode::from(2);
    }
    if let Err(e) = root::make_pivotable() {
        // Containers then fall back to moving their root over / and chroot.
        eprintln!("okvm-init: {e}");
    }
    for (fstype, target, flags) in [
        (
            "proc",
            "/proc",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        ),
        (
            "sysfs",
            "/sys",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        ),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID),
    ] {
        if let Err(e) = std::fs::create_dir_all(target) {
            eprintln!("okvm-init: cannot create {target}: {e}");
        }
        match mount(Some(fstype), target, Some(fstype), flags, None::<&str>) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => eprintln!("okvm-init: cannot mount {fstype} on {target}: {e}"),
        }
    }
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let up = uptime::read();
    match &up {
        Ok(up) => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            println!("{}", banner::banner(*up, &release, cpus))
        }
        Err(e) => eprintln!("okvm-init: {e}"),
    }
    if holds() {
        // Benchmarks measure a booted guest's host-side memory: stay up.
        loop {
            std::thread::park();
        }
    }
    if !vsock::device_present() {
        power_off()
    }
    if let Err(e) = reaper::block_sigchld() {
        eprintln!("okvm-init: cannot block SIGCHLD: {e}");
    }
    let uptime_ms = up.map_or(0, |u| u.as_millis() as u64);
    start_serving(uptime_ms);
    reaper::run()
}

/// The control connections: the one okvm-init opens to announce itself, and
/// any the host opens to port 1024. Each is served on its own thread.
fn start_serving(uptime_ms: u64) {
    let spawn = |name: &str, f: Box<dyn FnOnce() + Send>| {
        if let Err(e) = std::thread::Builder::new().name(name.into()).spawn(f) {
            eprintln!("okvm-init: cannot start {name}: {e}");
        }
    };
    let listener = match vsock::Listener::bind(okvm_protocol::CONTROL_PORT) {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("okvm-init: cannot listen on vsock port 1024: {e}");
            // Still announce: the announcing connection serves requests too.
            None
        }
    };
    spawn(
        "announce",
        Box::new(move || {
            // Nobody listening on the host is fine: the host may connect later.
            let Ok(mut conn) = vsock::connect_host(okvm_protocol::CONTROL_PORT) else {
                return;
            };
            let ready = okvm_protocol::Event::Ready {
                uptime_ms,
                version: env!("CARGO_PKG_VERSION").into(),
            };
            if okvm_protocol::write_message(&mut conn, okvm_protocol::Kind::Event, &ready).is_ok() {
                finish(server::serve(conn));
            }
        }),
    );
    let Some(listener) = listener else { return };
    spawn(
        "listen",
        Box::new(move || loop {
            match listener.accept() {
                Ok(conn) => {
                    let _ = std::thread::Builder::new()
                        .name("control".into())
                        .spawn(move || finish(server::serve(conn)));
                }
                Err(e) => eprintln!("okvm-init: vsock accept: {e}"),
            }
        }),
    );
}

/// `okvm.hold` on the kernel command line: stay up after the banner, serving
/// nothing, until the VMM is stopped.
fn holds() -> bool {
    std::fs::read_to_string("/proc/cmdline")
        .map(|c| c.split_whitespace().any(|w| w == "okvm.hold"))
        .unwrap_or(false)
}

fn finish(after: server::After) {
    if let server::After::PowerOff = after {
        power_off()
    }
}

fn power_off() -> ! {
    // The console is a tty whose driver sends in the background (UART interrupts);
    // without draining it, a reset can cut off what was just printed.
    let _ = nix::sys::termios::tcdrain(std::io::stdout());
    let _ = nix::sys::termios::tcdrain(std::io::stderr());
    nix::unistd::sync();
    let err = reboot(RebootMode::RB_AUTOBOOT).unwrap_err();
    eprintln!("okvm-init: reboot failed: {err}");
    // PID 1 must not return; the kernel would panic, which also ends the VM.
    loop {
        std::thread::park();
    }
}
