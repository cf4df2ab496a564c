//! `make bench` (VMM part), run inside the test host: okvm's own VMM against
//! QEMU `-M microvm`, booting the same vmlinux + okvm-init initramfs, measured
//! side by side in one run, and the VMM's own memory beside the guest's.
//!
//! Usage: bench-vmm [RUNS] — prints a Markdown table on stdout.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use okvm_init::banner;
use okvm_integration::bench::median;
use okvm_integration::{artifact, okvm_bin};

const MEM_MIB: u64 = 256;

fn okvm(extra_cmdline: &str) -> Command {
    let mut c = Command::new(okvm_bin());
    c.arg("boot")
        .arg("--kernel")
        .arg(artifact("vmlinux"))
        .arg("--initrd")
        .arg(artifact("okvm-initrd.img"))
        .arg("--mem")
        .arg(MEM_MIB.to_string())
        .arg("--cmdline")
        .arg(format!(
            "console=ttyS0 reboot=k panic=-1 quiet{extra_cmdline}"
        ));
    c
}

fn qemu(extra_cmdline: &str) -> Command {
    let mut c = Command::new("qemu-system-x86_64");
    c.args(["-M", "microvm,accel=kvm,acpi=off", "-cpu", "host"])
        .args(["-m", &MEM_MIB.to_string(), "-smp", "1"])
        .args(["-nodefaults", "-no-user-config", "-display", "none"])
        .args(["-serial", "stdio", "-no-reboot"])
        .arg("-kernel")
        .arg(artifact("vmlinux"))
        .arg("-initrd")
        .arg(artifact("okvm-initrd.img"))
        .arg("-append")
        .arg(format!(
            "console=ttyS0 reboot=t panic=-1 quiet{extra_cmdline}"
        ));
    c
}

/// Which figure of a [`Boot`] a table row shows.
type Metric = fn(&Boot) -> Duration;

/// One boot: (host time to the banner on the console, guest uptime in the
/// banner, host time until the VMM exited).
struct Boot {
    to_banner: Duration,
    guest_uptime: Duration,
    to_exit: Duration,
}

fn spawn(mut cmd: Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start the VMM")
}

/// Reads the console until the banner; returns when it was seen.
fn wait_banner(
    child: &mut Child,
    start: Instant,
) -> (Duration, Duration, BufReader<std::process::ChildStdout>) {
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if out.read_line(&mut line).unwrap() == 0 {
            panic!("the console ended without the okvm-init banner");
        }
        if line.contains(banner::PREFIX) {
            let t = start.elapsed();
            let up = banner::parse_uptime(&line).expect("banner carries the uptime");
            return (t, up, out);
        }
    }
}

fn boot_once(cmd: Command) -> Boot {
    let start = Instant::now();
    let mut child = spawn(cmd);
    let (to_banner, guest_uptime, mut rest) = wait_banner(&mut child, start);
    std::io::copy(&mut rest, &mut std::io::sink()).unwrap();
    let st = child.wait().unwrap();
    assert!(st.success(), "the VMM failed: {st}");
    Boot {
        to_banner,
        guest_uptime,
        to_exit: start.elapsed(),
    }
}

/// okvm with a vsock device: time until okvm-init's announcement arrives.
fn okvm_ready_once(dir: &std::path::Path, i: usize) -> Duration {
    let uds = dir.join(format!("v{i}.sock"));
    let listener = UnixListener::bind(okvm::guest::host_port_path(&uds, 1024)).unwrap();
    let mut cmd = okvm("");
    cmd.arg("--vsock-uds").arg(&uds).arg("--console").arg("off");
    let start = Instant::now();
    let mut child = spawn(cmd);
    let (mut client, _) = okvm::guest::Client::accept_ready(&listener).expect("announcement");
    let t = start.elapsed();
    client
        .request(okvm_protocol::RequestBody::Shutdown)
        .expect("shutdown");
    child.wait().unwrap();
    t
}

/// (RSS minus guest RAM, private pages outside guest RAM), in KiB, of a VMM
/// whose guest has booted and then holds still.
fn memory_kib(cmd: Command) -> (u64, u64) {
    let mut child = spawn(cmd);
    let _ = wait_banner(&mut child, Instant::now());
    std::thread::sleep(Duration::from_millis(500));
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", child.id())).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    smaps_outside_guest_ram(&smaps)
}

fn smaps_outside_guest_ram(smaps: &str) -> (u64, u64) {
    let (mut rss, mut private) = (0u64, 0u64);
    let (mut cur_size, mut cur_rss, mut cur_priv) = (0u64, 0u64, 0u64);
    let mut flush = |size: u64, r: u64, p: u64| {
        // The guest's RAM is the one mapping at least as large as the guest.
        if size < MEM_MIB * 1024 {
            rss += r;
            private += p;
        }
    };
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        let key = f.next().unwrap_or("");
        let val: u64 = f.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        match key {
            "Size:" => {
                flush(cur_size, cur_rss, cur_priv);
                (cur_size, cur_rss, cur_priv) = (val, 0, 0);
            }
            "Rss:" => cur_rss = val,
            "Private_Clean:" | "Private_Dirty:" => cur_priv += val,
            _ => {}
        }
    }
    flush(cur_size, cur_rss, cur_priv);
    (rss, private)
}

fn ms(d: Duration) -> String {
    format!("{:.0} ms", d.as_secs_f64() * 1000.0)
}

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let (mut ok, mut qe, mut ready) = (Vec::new(), Vec::new(), Vec::new());
    // Interleaved, so that a slow stretch of the machine hits both alike.
    for i in 0..runs {
        ok.push(boot_once(okvm("")));
        qe.push(boot_once(qemu("")));
        ready.push(okvm_ready_once(dir.path(), i));
        eprintln!("bench-vmm: run {}/{runs} done", i + 1);
    }
    let col = |v: &[Boot], f: fn(&Boot) -> Duration| median(v.iter().map(f).collect());
    let rows: [(&str, Metric); 3] = [
        (
            "start → okvm-init banner on the console (host clock)",
            |b| b.to_banner,
        ),
        ("kernel uptime at the banner (guest clock)", |b| {
            b.guest_uptime
        }),
        ("start → VMM exited after the guest powered off", |b| {
            b.to_exit
        }),
    ];
    println!("| median of {runs} runs | okvm | QEMU microvm | okvm / QEMU |");
    println!("|---|---:|---:|---:|");
    for (name, f) in rows {
        let (a, b) = (col(&ok, f), col(&qe, f));
        println!(
            "| {name} | {} | {} | {:.2} |",
            ms(a),
            ms(b),
            a.as_secs_f64() / b.as_secs_f64()
        );
    }
    println!(
        "| start → okvm-init ready over vsock (okvm only) | {} | – | – |",
        ms(median(ready))
    );
    let (o_rss, o_priv) = memory_kib(okvm(" okvm.hold"));
    let (q_rss, q_priv) = memory_kib(qemu(" okvm.hold"));
    println!(
        "| VMM RSS minus guest RAM ({MEM_MIB} MiB guest, booted) | {:.1} MiB | {:.1} MiB | {:.2} |",
        o_rss as f64 / 1024.0,
        q_rss as f64 / 1024.0,
        o_rss as f64 / q_rss as f64
    );
    println!(
        "| VMM private memory outside guest RAM (smaps Private_*) | {:.1} MiB | {:.1} MiB | {:.2} |",
        o_priv as f64 / 1024.0,
        q_priv as f64 / 1024.0,
        o_priv as f64 / q_priv as f64
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_ram_is_left_out_of_the_vmm_figures() {
        let smaps = "\
7f0-7f1 rw-s 0 0 0 /memfd:okvm-guest-ram (deleted)
Size:             262144 kB
Rss:               40000 kB
Private_Clean:         0 kB
Private_Dirty:     40000 kB
55-56 r-xp 0 0 0 /okvm
Size:               2048 kB
Rss:                1500 kB
Private_Clean:      1000 kB
Private_Dirty:       200 kB
";
        assert_eq!(smaps_outside_guest_ram(smaps), (1500, 1200));
    }
}
