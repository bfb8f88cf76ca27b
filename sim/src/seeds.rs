//! Seeds on every core: a run is a world of its own on the thread that runs it (turmoil's
//! simulation, the hosts' runtimes, the panic record are all per thread), so workers take seeds
//! in turn and the reports come out in seed order, as one thread would have printed them.

use std::collections::BTreeMap;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

/// What one seed's run prints and counts.
pub struct Report {
    pub text: String,
    pub sim_seconds: f64,
    pub failed: bool,
}

/// Runs every seed of `seeds` on `jobs` threads and hands the reports to `each`, in seed order.
pub fn run<F>(seeds: Range<u64>, jobs: usize, run_seed: F, mut each: impl FnMut(Report))
where
    F: Fn(u64) -> Report + Sync,
{
    let next = AtomicU64::new(seeds.start);
    let (tx, rx) = mpsc::channel();
    std::thread::scope(|scope| {
        for _ in 0..jobs.max(1) {
            let (tx, next, run_seed) = (tx.clone(), &next, &run_seed);
            scope.spawn(move || {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        break;
                    }
                    // The receiver outlives the workers (it is read below until they end).
                    tx.send((seed, run_seed(seed))).expect("the report receiver lives");
                }
            });
        }
        drop(tx);
        let mut waiting = BTreeMap::new();
        let mut due = seeds.start;
        for (seed, report) in rx {
            waiting.insert(seed, report);
            while let Some(report) = waiting.remove(&due) {
                each(report);
                due += 1;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_come_in_seed_order_whatever_the_threads() {
        // Seed 0's run ends only after every other seed's: the reports arrive out of order.
        let others_done = (std::sync::Mutex::new(0), std::sync::Condvar::new());
        let mut seen = Vec::new();
        run(
            0..12,
            4,
            |seed| {
                let (count, changed) = &others_done;
                let mut count = count.lock().unwrap();
                if seed == 0 {
                    while *count < 11 {
                        count = changed.wait(count).unwrap();
                    }
                } else {
                    *count += 1;
                    changed.notify_all();
                }
                Report { text: seed.to_string(), sim_seconds: 1.0, failed: seed == 7 }
            },
            |r| seen.push((r.text, r.failed)),
        );
        let expected: Vec<(String, bool)> = (0..12).map(|s| (s.to_string(), s == 7)).collect();
        assert_eq!(seen, expected);
    }
}
