//! A small, bounded pool of I/O threads owned by one store.
//!
//! Why not tokio's blocking pool: it grows to one thread per concurrent call (up to 512). At
//! queue depth 32, 32 threads then queue on the same inode lock for buffered writes, and every
//! handoff sleeps and wakes on a futex; on a 2-CPU machine that cut 4 KiB random writes to a file
//! to ~15k IOPS while one thread alone writes 130k+/s into the page cache. A few threads that
//! drain a shared queue stay busy under load (no sleep between jobs), contend little, and still
//! keep several requests outstanding on a device with real latency. Threads start on demand, so
//! a store that is opened only to be inspected costs none.
//!
//! A thread that runs out of work keeps looking for more for a while (`spin`, yielding its CPU
//! between looks) before it sleeps: at queue depth 1 the next request then finds it awake. On a
//! VM, waking a sleeping thread costs tens of microseconds, more than a buffered 4 KiB write.

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

pub struct IoPool {
    shared: Arc<Shared>,
}

struct Shared {
    name: String,
    max_threads: usize,
    spin: Duration,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    threads: usize,
    /// Threads asleep on `work`.
    idle: usize,
    /// Threads looking for work before they sleep: they need no wake-up.
    spinning: usize,
    closed: bool,
}

/// The job panicked or the pool could not start a thread for it.
#[derive(Debug)]
pub struct JobFailed(pub String);

impl IoPool {
    /// A pool of at most `max_threads` (at least 1) threads named `name`, which look for work
    /// for `spin` before they sleep.
    pub fn new(name: &str, max_threads: usize, spin: Duration) -> IoPool {
        IoPool {
            shared: Arc::new(Shared {
                name: name.to_string(),
                max_threads: max_threads.max(1),
                spin,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
        }
    }

    /// Runs `f` on a pool thread. Jobs start in submission order. Dropping the returned future
    /// does not cancel a job: a write that was handed over completes.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, JobFailed> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(AssertUnwindSafe(f));
            let _ = tx.send(outcome.map_err(|panic| JobFailed(panic_message(&*panic))));
        });
        self.submit(job)?;
        rx.await.map_err(|_| JobFailed("the I/O thread stopped".into()))?
    }

    fn submit(&self, job: Job) -> Result<(), JobFailed> {
        let mut state = self.shared.lock();
        state.jobs.push_back(job);
        if state.spinning > 0 {
            // A spinning thread takes it.
        } else if state.idle > 0 {
            self.shared.work.notify_one();
        } else if state.threads < self.shared.max_threads {
            state.threads += 1;
            drop(state);
            if let Err(e) = self.start_thread() {
                let mut state = self.shared.lock();
                state.threads -= 1;
                if state.threads == 0 {
                    // No thread will ever run the job: take it back (its sender drops, so the
                    // caller's receiver fails) and report why.
                    state.jobs.clear();
                    return Err(JobFailed(format!("cannot start an I/O thread: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Threads are the production I/O seam; the simulation never opens a file store.
    #[allow(clippy::disallowed_methods)]
    fn start_thread(&self) -> std::io::Result<()> {
        let shared = self.shared.clone();
        std::thread::Builder::new().name(self.shared.name.clone()).spawn(move || shared.work_loop()).map(drop)
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work_loop(&self) {
        let mut state = self.lock();
        let mut spun = false;
        loop {
            if let Some(job) = state.jobs.pop_front() {
                drop(state);
                job();
                spun = false;
                state = self.lock();
                continue;
            }
            if state.closed {
                state.threads -= 1;
                return;
            }
            if !spun && !self.spin.is_zero() {
                spun = true;
                state = self.spin_for_work(state);
                continue;
            }
            state.idle += 1;
            state = self.work.wait(state).unwrap_or_else(|e| e.into_inner());
            state.idle -= 1;
        }
    }

    /// Looks for work for up to `spin`, giving the CPU to anything else runnable between looks.
    /// Threads are the production I/O seam (the simulation never opens a file store), so they
    /// may read the real clock.
    #[allow(clippy::disallowed_methods)]
    fn spin_for_work<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        let started = std::time::Instant::now();
        state.spinning += 1;
        loop {
            drop(state);
            std::thread::yield_now();
            state = self.lock();
            if !state.jobs.is_empty() || state.closed || started.elapsed() >= self.spin {
                state.spinning -= 1;
                return state;
            }
        }
    }
}

impl Drop for IoPool {
    /// Threads finish the queued jobs, then exit.
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        state.closed = true;
        self.shared.work.notify_all();
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    let text = panic.downcast_ref::<&str>().map(|s| s.to_string()).or_else(|| panic.downcast_ref::<String>().cloned());
    format!("I/O job panicked: {}", text.unwrap_or_else(|| "(no message)".into()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Jobs meet in threes at a barrier: only three threads running at once let any of them
    /// finish (fewer would never pass it: the timeout), and a fourth would show in the peak.
    #[tokio::test]
    async fn runs_jobs_on_a_bounded_number_of_threads() {
        let pool = IoPool::new("test-io", 3, Duration::ZERO);
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let barrier = Arc::new(std::sync::Barrier::new(3));
        let jobs = (0..63u64).map(|i| {
            let (running, peak, barrier) = (running.clone(), peak.clone(), barrier.clone());
            pool.run(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                barrier.wait();
                running.fetch_sub(1, Ordering::SeqCst);
                i * 2
            })
        });
        let all = tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(jobs)).await;
        let results: Vec<u64> = all.expect("three jobs at once").into_iter().map(Result::unwrap).collect();
        assert_eq!(results, (0..63u64).map(|i| i * 2).collect::<Vec<_>>());
        assert_eq!(peak.load(Ordering::SeqCst), 3, "peak concurrency, bound 3");
        assert_eq!(pool.shared.state.lock().unwrap().threads, 3);
    }

    #[tokio::test]
    async fn a_panicking_job_fails_alone() {
        let pool = IoPool::new("test-io", 1, Duration::ZERO);
        let err = pool.run(|| -> u32 { panic!("disk on fire") }).await.unwrap_err();
        assert!(err.0.contains("disk on fire"), "{err:?}");
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    /// Spinning threads run the jobs that come while they look, stay within the bound, and
    /// exit once the pool is dropped even though they would spin for seconds.
    #[tokio::test]
    async fn spinning_threads_serve_jobs_and_exit_when_the_pool_drops() {
        let pool = IoPool::new("test-io", 2, Duration::from_secs(5));
        for i in 0..20u32 {
            assert_eq!(pool.run(move || i + 1).await.unwrap(), i + 1);
        }
        let threads = pool.shared.state.lock().unwrap().threads;
        assert!((1..=2).contains(&threads), "{threads} threads, bound 2");
        let shared = pool.shared.clone();
        drop(pool);
        // Polled (the thread's exit is observable only through the count), with a bound far
        // above its spin interval's check so that a loaded machine does not fail it.
        for _ in 0..3000 {
            if shared.state.lock().unwrap().threads == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the spinning thread did not exit within 30 s of the pool being dropped");
    }
}
