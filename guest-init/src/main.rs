//! okvm-init, PID 1 of an okvm guest.
//!
//! For now it brings up the pseudo filesystems, reports on the console that the
//! guest is ready and how long the kernel took, and resets the machine, which the
//! VMM (or QEMU with -no-reboot) takes as power-off: a microVM has no ACPI, so a
//! reset through the kernel's `reboot=` method is the one exit every VMM sees.

use std::process::ExitCode;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, RebootMode};

use okvm_init::{banner, uptime};

fn main() -> ExitCode {
    if std::process::id() != 1 {
        eprintln!("okvm-init: must run as PID 1 inside an okvm guest");
        return ExitCode::from(2);
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
    match uptime::read() {
        Ok(up) => {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            println!("{}", banner::banner(up, &release, cpus))
        }
        Err(e) => eprintln!("okvm-init: {e}"),
    }
    power_off()
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
