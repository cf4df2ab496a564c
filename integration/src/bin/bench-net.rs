//! `make bench` (network part), run inside the test host: TCP between the
//! test host and a container, okvm (the guest behind podman's veth, mirrored
//! into its tap) against crun (the same veth, no VM), interleaved in one run.
//!
//! Usage: bench-net [RUNS] [MIB] — prints a Markdown table on stdout.
//! - connect latency: TCP handshakes with the container's server (medians of
//!   RUNS × 20 connects);
//! - throughput each way: MIB MiB through one TCP connection, container ↔
//!   test host, by the container's busybox nc (medians of RUNS).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use okvm_integration::bench::{median, podman_with_okvm, sh, IMAGE, RUNTIMES};

const CONNECTS_PER_RUN: usize = 20;

/// A container of runtime `rt` serving: port 80 accepts connections (httpd),
/// port 5001 sends MIB MiB to whoever connects, port 5002 swallows what it gets.
fn start_server(rt: &str, mib: u64) -> String {
    let name = format!("benchnet-{rt}");
    sh(&format!(
        "podman rm -f -t 0 {name} >/dev/null 2>&1; podman run -d --runtime {rt} --name {name} {IMAGE} sh -c '\
         mkdir -p /www; httpd -p 80 -h /www; \
         (while :; do dd if=/dev/zero bs=1M count={mib} 2>/dev/null | nc -l -p 5001; done) & \
         while :; do nc -l -p 5002 >/dev/null; done' >/dev/null"
    ));
    let ip = String::from_utf8_lossy(
        &sh(&format!(
            "podman inspect -f '{{{{.NetworkSettings.IPAddress}}}}' {name}"
        ))
        .stdout,
    )
    .trim()
    .to_string();
    // Up when all three ports answer.
    let deadline = Instant::now() + Duration::from_secs(300);
    for port in [80, 5001, 5002] {
        let addr: SocketAddr = format!("{ip}:{port}").parse().unwrap();
        while TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err() {
            assert!(Instant::now() < deadline, "{name} never listened on {port}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    // The probe of 5001 consumed one stream; let the loop restart nc.
    std::thread::sleep(Duration::from_secs(1));
    ip
}

fn connect_time(ip: &str) -> Duration {
    let addr: SocketAddr = format!("{ip}:80").parse().unwrap();
    let t = Instant::now();
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    let d = t.elapsed();
    drop(s);
    d
}

/// Reads the container's MIB MiB (container → host).
fn receive(ip: &str, mib: u64) -> Duration {
    let addr: SocketAddr = format!("{ip}:5001").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0u64;
        while let Ok(k) = s.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        if n == mib << 20 {
            return t.elapsed();
        }
        // Caught nc between two rounds: try again.
        assert!(Instant::now() < deadline, "got {n} bytes from {ip}:5001");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Sends MIB MiB to the container (host → container), until it has them all:
/// the container's nc closes only after the last byte.
fn send(ip: &str, mib: u64) -> Duration {
    let addr: SocketAddr = format!("{ip}:5002").parse().unwrap();
    let chunk = vec![0u8; 1 << 20];
    let t = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).unwrap();
    for _ in 0..mib {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    t.elapsed()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(64);
    podman_with_okvm();
    let ips: Vec<String> = RUNTIMES.iter().map(|rt| start_server(rt, mib)).collect();

    let mut connect: [Vec<Duration>; 2] = Default::default();
    let mut down: [Vec<Duration>; 2] = Default::default();
    let mut up: [Vec<Duration>; 2] = Default::default();
    for _ in 0..runs {
        for (i, ip) in ips.iter().enumerate() {
            for _ in 0..CONNECTS_PER_RUN {
                connect[i].push(connect_time(ip));
            }
            down[i].push(receive(ip, mib));
            up[i].push(send(ip, mib));
        }
    }
    for rt in RUNTIMES {
        sh(&format!("podman rm -f -t 0 benchnet-{rt} >/dev/null"));
    }

    println!("| TCP, test host ↔ container (medians of {runs} runs) | okvm | crun | okvm / crun |");
    println!("|---|---:|---:|---:|");
    let (o, c) = (median(connect[0].clone()), median(connect[1].clone()));
    println!(
        "| connect latency ({} handshakes) | {:.3} ms | {:.3} ms | {:.2} |",
        runs * CONNECTS_PER_RUN,
        o.as_secs_f64() * 1e3,
        c.as_secs_f64() * 1e3,
        o.as_secs_f64() / c.as_secs_f64()
    );
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    for (what, t) in [
        ("throughput container → host", &down),
        ("throughput host → container", &up),
    ] {
        let (o, c) = (rate(median(t[0].clone())), rate(median(t[1].clone())));
        println!(
            "| {what}, {mib} MiB | {o:.1} MiB/s | {c:.1} MiB/s | {:.2} |",
            o / c
        );
    }
}
