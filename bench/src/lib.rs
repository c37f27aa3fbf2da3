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

/// CPU time spent so far, from the kernel's per-thread accounting (`/proc/<pid>/task/*/schedstat`,
/// nanoseconds on a CPU): by this process's threads, and by every process descended from it.
/// Read before and after a phase, it splits the phase's cost between the bench process (the
/// client, and the broker when it runs in-process) and the children it drives.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub own: Duration,
    pub descendants: Duration,
    /// How many times this process's threads were put on a CPU (each one a wake-up after a
    /// wait, or a return after preemption).
    pub own_slices: u64,
    /// Of `descendants`, the time of their main threads (for a Node child: the event loop;
    /// the rest is V8's helper threads, garbage collection and compilation).
    pub descendants_main: Duration,
    pub descendant_slices: u64,
}

impl CpuTime {
    pub fn now() -> Self {
        let own = std::process::id();
        let mut descendants = Duration::ZERO;
        let mut descendants_main = Duration::ZERO;
        let mut descendant_slices = 0;
        let mut queue = children_of(own);
        while let Some(pid) = queue.pop() {
            let threads = threads_time(pid);
            descendants += threads.all;
            descendant_slices += threads.slices;
            descendants_main += threads.main;
            queue.extend(children_of(pid));
        }
        let threads = threads_time(own);
        Self {
            own: threads.all,
            descendants,
            own_slices: threads.slices,
            descendants_main,
            descendant_slices,
        }
    }

    /// The time spent between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            own: self.own.saturating_sub(earlier.own),
            descendants: self.descendants.saturating_sub(earlier.descendants),
            own_slices: self.own_slices.saturating_sub(earlier.own_slices),
            descendants_main: self
                .descendants_main
                .saturating_sub(earlier.descendants_main),
            descendant_slices: self
                .descendant_slices
                .saturating_sub(earlier.descendant_slices),
        }
    }
}

impl std::ops::AddAssign for CpuTime {
    fn add_assign(&mut self, other: Self) {
        self.own += other.own;
        self.descendants += other.descendants;
        self.own_slices += other.own_slices;
        self.descendants_main += other.descendants_main;
        self.descendant_slices += other.descendant_slices;
    }
}

/// The direct children of `pid` (from every one of its threads' `children` lists).
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// What `pid`'s live threads have used, from each one's `schedstat` (its first and third
/// fields), read once.
struct Threads {
    all: Duration,
    /// The thread whose id is the process's: its main thread.
    main: Duration,
    /// How many times they were put on a CPU.
    slices: u64,
}

fn threads_time(pid: u32) -> Threads {
    let mut threads = Threads {
        all: Duration::ZERO,
        main: Duration::ZERO,
        slices: 0,
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return threads;
    };
    for task in tasks.flatten() {
        let Some((nanos, slices)) = std::fs::read_to_string(task.path().join("schedstat"))
            .ok()
            .and_then(|stat| parse_schedstat(&stat))
        else {
            continue;
        };
        let time = Duration::from_nanos(nanos);
        threads.all += time;
        threads.slices += slices;
        if task.file_name().to_str() == Some(pid.to_string().as_str()) {
            threads.main = time;
        }
    }
    threads
}

fn parse_schedstat(stat: &str) -> Option<(u64, u64)> {
    let mut fields = stat.split_whitespace().map(str::parse::<u64>);
    let nanos = fields.next()?.ok()?;
    let slices = fields.nth(1)?.ok()?;
    Some((nanos, slices))
}
