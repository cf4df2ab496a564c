//! Writes the seed corpus: `okvm-fuzz-seeds [DIR]` (default `fuzz/corpus`)
//! puts each target's valid inputs in `DIR/<target>/seed-<name>`. Inputs the
//! fuzzer found (crashes kept as regression tests) live beside them.

fn main() -> std::io::Result<()> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "fuzz/corpus".into());
    for (target, name, bytes) in okvm_fuzz::seeds() {
        let d = std::path::Path::new(&dir).join(target);
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join(format!("seed-{name}")), bytes)?;
    }
    Ok(())
}
