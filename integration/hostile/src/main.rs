//! The attacker of the hostile_guest suite, run inside a guest by a
//! `--privileged` container (the busybox image has no vsock client). Built
//! static (`make init`), like okvm-init, and bind-mounted into the container.
//!
//! `okvm-hostile vsock PORT...` floods the vsock device: as fast as it can it
//! opens stream connections to the host (CID 2) on the given ports, keeps
//! every one the host accepts, sends on each as much as the device lets it,
//! and never reads (with a small receive buffer, so whatever the host sends
//! piles up on the host's side). It never ends; once
//! a second it prints `open=N refused=N sent=BYTES`, and the last errors its
//! connects and sends met.

use std::io::Write;
use std::time::{Duration, Instant};

/// `SO_VM_SOCKETS_BUFFER_SIZE` (linux/vm_sockets.h), at level AF_VSOCK.
const SO_VM_SOCKETS_BUFFER_SIZE: libc::c_int = 0;
/// The receive buffer asked for: small, so that the host must keep what it
/// sends, but not below what one queued packet costs the guest kernel (it
/// resets a connection whose buffer cannot take a packet's sk_buff, ENOBUFS).
const RECEIVE_BUFFER: u64 = 4096;
const HOST_CID: u32 = 2;
/// More than any device lets a guest hold: the device says when to stop.
const MAX_OPEN: usize = 4096;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.split_first() {
        Some((cmd, ports)) if cmd == "vsock" && !ports.is_empty() => {
            let ports: Vec<u32> = ports
                .iter()
                .map(|p| p.parse().unwrap_or_else(|_| usage()))
                .collect();
            flood_vsock(&ports)
        }
        _ => usage(),
    }
}

fn usage() -> ! {
    eprintln!("usage: okvm-hostile vsock PORT...");
    std::process::exit(2)
}

/// A blocking connect to host `port`: the socket, made non-blocking, if the
/// host accepted.
fn connect(port: u32) -> std::io::Result<libc::c_int> {
    // SAFETY: plain socket(2); the fd is ours and closed on every error path.
    let fd = unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let tiny: u64 = RECEIVE_BUFFER;
    // SAFETY: the option value is a u64 that lives across the call, and its
    // size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::AF_VSOCK,
            SO_VM_SOCKETS_BUFFER_SIZE,
            (&tiny as *const u64).cast(),
            std::mem::size_of::<u64>() as libc::socklen_t,
        );
    }
    // SAFETY: sockaddr_vm is plain old data; all-zero is a valid value.
    let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
    addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
    addr.svm_cid = HOST_CID;
    addr.svm_port = port;
    // SAFETY: addr is a sockaddr_vm and its size is passed.
    let r = unsafe {
        libc::connect(
            fd,
            (&addr as *const libc::sockaddr_vm).cast(),
            std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t,
        )
    };
    // SAFETY: fd is an open socket of ours.
    if r != 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, libc::O_NONBLOCK) } != 0 {
        let err = std::io::Error::last_os_error();
        // SAFETY: fd is ours and used nowhere else.
        unsafe { libc::close(fd) };
        return Err(err);
    }
    Ok(fd)
}

/// Writes on `fd` until the socket would block; the error once it is dead.
fn fill(fd: libc::c_int, chunk: &[u8], sent: &mut u64) -> std::io::Result<()> {
    loop {
        // SAFETY: chunk is a live buffer of chunk.len() bytes.
        let n = unsafe {
            libc::send(
                fd,
                chunk.as_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n > 0 {
            *sent += n as u64;
            continue;
        }
        let err = std::io::Error::last_os_error();
        if n == 0 || err.kind() == std::io::ErrorKind::WouldBlock {
            return Ok(());
        }
        return Err(err);
    }
}

/// Ends the process as SIGTERM's default action would: as the container's
/// first process it would otherwise ignore it, and the test checks that the
/// host's SIGTERM still reaches it.
extern "C" fn on_sigterm(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + libc::SIGTERM) }
}

fn flood_vsock(ports: &[u32]) -> ! {
    let handler: extern "C" fn(libc::c_int) = on_sigterm;
    // SAFETY: the handler only calls an async-signal-safe function.
    unsafe { libc::signal(libc::SIGTERM, handler as libc::sighandler_t) };
    let chunk = vec![0x41u8; 64 * 1024];
    let mut open: Vec<libc::c_int> = Vec::new();
    let (mut refused, mut sent) = (0u64, 0u64);
    let (mut connect_error, mut send_error) = (None, None);
    let mut next_report = Instant::now();
    let mut next_port = 0;
    loop {
        // A round of new connections, one per port, then a round of sending.
        for _ in 0..ports.len() {
            let port = ports[next_port % ports.len()];
            next_port += 1;
            if open.len() >= MAX_OPEN {
                break;
            }
            match connect(port) {
                Ok(fd) => open.push(fd),
                Err(e) => {
                    refused += 1;
                    connect_error = Some(e);
                }
            }
        }
        open.retain(|&fd| match fill(fd, &chunk, &mut sent) {
            Ok(()) => true,
            Err(e) => {
                send_error = Some(e);
                // SAFETY: fd is ours and dropped from the list here.
                unsafe { libc::close(fd) };
                false
            }
        });
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            println!(
                "open={} refused={refused} sent={sent} connect-error={connect_error:?} send-error={send_error:?}",
                open.len()
            );
            let _ = std::io::stdout().flush();
        }
    }
}
