//! Shared helpers for the benchmarks in `bench/benches/` (run with `cargo bench -p bench`).
//! Each benchmark prints its figures as a ratio against a baseline measured in the same run,
//! never as an absolute target checked in tests.
#![forbid(unsafe_code)]

use std::time::{Duration, Instant};

/// Runs `f` `iterations` times and returns the per-iteration durations, sorted.
pub fn sample(iterations: usize, mut f: impl FnMut()) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let start = Instant::now();
        f();
        samples.push(start.elapsed());
    }
    samples.sort();
    samples
}

/// The `q` quantile (0.0..=1.0) of sorted samples.
pub fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}
