//! Every fuzz target over its corpus (`fuzz/corpus/<target>/`): the seeds
//! and each input that once crashed it, kept as regression tests. Then a
//! few thousand mutations of them, as a cheap stand-in for `make fuzz`.

use std::path::{Path, PathBuf};

fn corpus(target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn every_target_survives_its_corpus() {
    for (name, target) in okvm_fuzz::targets() {
        let files = corpus(name);
        assert!(!files.is_empty(), "{name} has no corpus");
        for f in files {
            let bytes = std::fs::read(&f).unwrap();
            eprintln!("{name}: {}", f.display());
            target(&bytes);
        }
    }
}

#[test]
fn the_seeds_in_the_repository_are_the_generators() {
    for (target, name, bytes) in okvm_fuzz::seeds() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("corpus")
            .join(target)
            .join(format!("seed-{name}"));
        let kept = std::fs::read(&path).unwrap_or_default();
        assert!(
            kept == bytes,
            "{} is stale: run `cargo run -p okvm-fuzz --bin okvm-fuzz-seeds`",
            path.display()
        );
    }
}

/// xorshift64: the same mutations on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

#[test]
fn every_target_survives_mutations_of_its_corpus() {
    const ROUNDS: usize = 300;
    let mut rng = Rng(0x6f6b_766d_6675_7a7a);
    for (name, target) in okvm_fuzz::targets() {
        let inputs: Vec<Vec<u8>> = corpus(name)
            .iter()
            .map(|f| std::fs::read(f).unwrap())
            .collect();
        for _ in 0..ROUNDS {
            let mut b = inputs[rng.below(inputs.len())].clone();
            for _ in 0..=rng.below(8) {
                let at = rng.below(b.len() + 1);
                match rng.below(4) {
                    0 if at < b.len() => b[at] ^= 1 << rng.below(8),
                    1 if at < b.len() => b[at] = rng.next() as u8,
                    2 => b.insert(at, rng.next() as u8),
                    _ => b.truncate(at),
                }
            }
            target(&b);
        }
    }
}
