//! `make bench` (podman part), run inside the test host: the same podman
//! commands with `--runtime okvm` and `--runtime crun`, interleaved in one run,
//! as medians and okvm/crun ratios.
//!
//! Usage: bench-podman [RUNS] [MIB] — prints a Markdown table on stdout.

use std::time::{Duration, Instant};

use okvm_integration::bench::{median, podman_with_okvm, sh, IMAGE, RUNTIMES};

fn timed(script: &str) -> Duration {
    let t = Instant::now();
    sh(script);
    t.elapsed()
}

fn secs(d: Duration) -> String {
    format!("{:.3} s", d.as_secs_f64())
}

fn main() {
    let mut args = std::env::args().skip(1);
    let runs: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let mib: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(256);
    podman_with_okvm();
    let mut rows = Vec::new();

    // podman run --rm IMAGE true
    let mut t: [Vec<Duration>; 2] = Default::default();
    for _ in 0..runs {
        for (i, rt) in RUNTIMES.iter().enumerate() {
            t[i].push(timed(&format!(
                "podman run --rm --runtime {rt} {IMAGE} true"
            )));
        }
    }
    rows.push((
        "`podman run --rm IMG true`".to_string(),
        median(t[0].clone()),
        median(t[1].clone()),
    ));

    // podman exec round trip, in a running container of each runtime.
    let mut t: [Vec<Duration>; 2] = Default::default();
    for rt in RUNTIMES {
        sh(&format!(
            "podman run -d --runtime {rt} --name bench-{rt} {IMAGE} sleep 100000 >/dev/null"
        ));
        // The first exec of each warms caches on both sides.
        sh(&format!("podman exec bench-{rt} true"));
    }
    for _ in 0..runs {
        for (i, rt) in RUNTIMES.iter().enumerate() {
            t[i].push(timed(&format!("podman exec bench-{rt} true")));
        }
    }
    for rt in RUNTIMES {
        sh(&format!("podman rm -f -t 0 bench-{rt} >/dev/null"));
    }
    rows.push((
        "`podman exec CTR true`".to_string(),
        median(t[0].clone()),
        median(t[1].clone()),
    ));

    // stdout throughput: MIB MiB through podman run's stdout.
    let tp_runs = runs.clamp(1, 3);
    let mut t: [Vec<Duration>; 2] = Default::default();
    for _ in 0..tp_runs {
        for (i, rt) in RUNTIMES.iter().enumerate() {
            t[i].push(timed(&format!(
                "podman run --rm --runtime {rt} {IMAGE} dd if=/dev/zero bs=1M count={mib} 2>/dev/null | wc -c | grep -qx {}",
                mib << 20
            )));
        }
    }
    let (o, c) = (median(t[0].clone()), median(t[1].clone()));
    println!(
        "| what (medians of {runs} runs; throughput: {tp_runs}) | okvm | crun | okvm / crun |"
    );
    println!("|---|---|---|---|");
    for (what, o, c) in &rows {
        println!(
            "| {what} | {} | {} | {:.2} |",
            secs(*o),
            secs(*c),
            o.as_secs_f64() / c.as_secs_f64()
        );
    }
    let rate = |d: Duration| mib as f64 / d.as_secs_f64();
    println!(
        "| stdout throughput, {mib} MiB through `podman run … dd` | {:.1} MiB/s ({}) | {:.1} MiB/s ({}) | {:.2} |",
        rate(o),
        secs(o),
        rate(c),
        secs(c),
        rate(o) / rate(c)
    );
}
