//! `make bench` (containerd part), run inside the test host (with containerd):
//! `ctr run --rm IMAGE true` through okvm's shim and through runc's, interleaved
//! in one run, as medians and the okvm/runc ratio.
//!
//! Usage: bench-containerd [RUNS] — prints a Markdown table on stdout.

use std::time::{Duration, Instant};

use okvm_integration::bench::{median, sh};
use okvm_integration::import_images;

const IMAGE: &str = "localhost/okvm-busybox:latest";
/// okvm's shim against runc's, in this order.
const SHIMS: [(&str, &str); 2] = [
    ("okvm", "io.containerd.okvm.v2"),
    ("runc", "io.containerd.runc.v2"),
];

fn main() {
    let runs: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10);
    import_images();
    let mut t: [Vec<Duration>; 2] = Default::default();
    for n in 0..runs {
        for (i, (name, runtime)) in SHIMS.iter().enumerate() {
            let start = Instant::now();
            sh(&format!(
                "ctr run --rm --runtime {runtime} {IMAGE} bench-{name}-{n} true"
            ));
            t[i].push(start.elapsed());
        }
    }
    let (o, r) = (median(t[0].clone()), median(t[1].clone()));
    println!("| containerd (medians of {runs} runs) | okvm shim | runc shim | okvm / runc |");
    println!("|---|---:|---:|---:|");
    println!(
        "| `ctr run --rm IMG true` | {:.3} s | {:.3} s | {:.2} |",
        o.as_secs_f64(),
        r.as_secs_f64(),
        o.as_secs_f64() / r.as_secs_f64()
    );
}
