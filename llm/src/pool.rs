//! A fixed pool of worker threads that spin between jobs, for the forward pass's many short
//! parallel steps (a decode step runs about 200 matrix products of 20 to 100 µs each).
//!
//! A general-purpose pool (rayon) puts idle workers to sleep and wakes them per job; on
//! steps this short the owner finishes before a sleeping worker is up, and a second core
//! sat idle (measured: two threads no faster than one). Here workers spin for a while
//! after each job (the next one is usually microseconds away) and only then sleep, as
//! llama.cpp's pool does. Work is split statically: job `run(f)` calls `f(i, n)` once on
//! each of the `n` threads (the caller is thread 0).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Spins a worker makes looking for the next job before it sleeps (tens of microseconds).
const SPINS: u32 = 1 << 16;

type Job = dyn Fn(usize, usize) + Sync;

struct Shared {
    /// Bumped for every job.
    epoch: AtomicUsize,
    /// The current job, valid while `pending` is above zero.
    job: Mutex<Option<&'static Job>>,
    /// Workers that have not finished the current job.
    pending: AtomicUsize,
    stop: AtomicBool,
    /// A worker's share of the current job panicked.
    failed: AtomicBool,
    wake: Condvar,
    sleepers: Mutex<usize>,
}

/// A pool of `threads` threads (the caller and `threads - 1` workers).
pub struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    threads: usize,
    /// One job at a time (generations that share a model take turns per step).
    running: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("threads", &self.threads)
            .finish()
    }
}

impl Pool {
    /// Start `threads - 1` workers (at least none).
    pub fn new(threads: usize) -> std::io::Result<Pool> {
        let threads = threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            job: Mutex::new(None),
            pending: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            failed: AtomicBool::new(false),
            wake: Condvar::new(),
            sleepers: Mutex::new(0),
        });
        let workers = (1..threads)
            .map(|index| {
                let shared = shared.clone();
                std::thread::Builder::new()
                    .name(format!("mesh-llm-{index}"))
                    .spawn(move || work(&shared, index, threads))
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        Ok(Pool {
            shared,
            workers,
            threads,
            running: Mutex::new(()),
        })
    }

    /// Threads in the pool, the caller's included.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Call `f(i, n)` for every thread `i` of the `n`, and return when all have returned.
    pub fn run(&self, f: &(dyn Fn(usize, usize) + Sync)) {
        if self.threads == 1 {
            f(0, 1);
            return;
        }
        let _one_at_a_time = self.running.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: the job's lifetime is extended to 'static only while workers may call it:
        // `pending` counts the workers that have not returned from it, and this function
        // does not return (or unwind past this point) before it is zero, so no worker uses
        // `f` after the borrow ends. The job slot is cleared before returning.
        let job: &'static Job =
            unsafe { std::mem::transmute::<&(dyn Fn(usize, usize) + Sync + '_), &'static Job>(f) };
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(job);
        self.shared
            .pending
            .store(self.threads - 1, Ordering::SeqCst);
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        if *self
            .shared
            .sleepers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            > 0
        {
            self.shared.wake.notify_all();
        }
        // The caller's share; a panic in it still waits for the workers before unwinding.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(0, self.threads)));
        while self.shared.pending.load(Ordering::Acquire) != 0 {
            std::hint::spin_loop();
        }
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = mine {
            std::panic::resume_unwind(panic);
        }
        if self.shared.failed.swap(false, Ordering::SeqCst) {
            panic!("a worker's share of the job panicked");
        }
    }
}

fn work(shared: &Shared, index: usize, threads: usize) {
    let mut seen = 0;
    loop {
        let mut spins = 0;
        loop {
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            let epoch = shared.epoch.load(Ordering::Acquire);
            if epoch != seen {
                seen = epoch;
                break;
            }
            if spins < SPINS {
                spins += 1;
                std::hint::spin_loop();
                continue;
            }
            let mut sleepers = shared.sleepers.lock().unwrap_or_else(|e| e.into_inner());
            *sleepers += 1;
            // Look again under the lock: a job posted meanwhile notified nobody.
            while shared.epoch.load(Ordering::Acquire) == seen
                && !shared.stop.load(Ordering::Acquire)
            {
                sleepers = shared
                    .wake
                    .wait_timeout(sleepers, std::time::Duration::from_millis(10))
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *sleepers -= 1;
            spins = 0;
        }
        let job = *shared.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(job) = job {
            // A panicking job must still count as done, or the caller waits forever; the
            // caller panics for it.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(index, threads)))
                .is_err()
            {
                shared.failed.store(true, Ordering::SeqCst);
            }
        }
        shared.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake.notify_all();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}

/// The `i`-th of `n` near-equal parts of `0..len`.
pub fn share(len: usize, i: usize, n: usize) -> std::ops::Range<usize> {
    (len * i / n)..(len * (i + 1) / n)
}

/// Split `out` into `n` parts of whole `unit`s, each behind its own lock (worker `i` takes
/// part `i`, so the locks are never contended).
pub fn parts(out: &mut [f32], unit: usize, n: usize) -> Vec<Mutex<&mut [f32]>> {
    let units = out.len() / unit.max(1);
    let mut rest = out;
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        let take = share(units, i, n).len() * unit;
        let (part, tail) = rest.split_at_mut(take);
        parts.push(Mutex::new(part));
        rest = tail;
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_thread_runs_its_share_and_jobs_follow_one_another() {
        let pool = Pool::new(3).unwrap();
        for round in 0..1000 {
            let mut out = vec![0usize; 100];
            let parts = parts_usize(&mut out, 3);
            pool.run(&|i, n| {
                let mut part = parts[i].lock().unwrap();
                let start = share(100, i, n).start;
                for (k, v) in part.iter_mut().enumerate() {
                    *v = start + k + round;
                }
            });
            drop(parts);
            assert!(out.iter().enumerate().all(|(k, &v)| v == k + round));
        }
        // After a pause long enough for the workers to sleep, jobs still run.
        std::thread::sleep(std::time::Duration::from_millis(50));
        let count = AtomicUsize::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 3);
    }

    fn parts_usize(out: &mut [usize], n: usize) -> Vec<Mutex<&mut [usize]>> {
        let len = out.len();
        let mut rest = out;
        (0..n)
            .map(|i| {
                let (part, tail) = std::mem::take(&mut rest).split_at_mut(share(len, i, n).len());
                rest = tail;
                Mutex::new(part)
            })
            .collect()
    }

    #[test]
    fn a_panicking_job_panics_the_caller_and_leaves_the_pool_usable() {
        let pool = Pool::new(2).unwrap();
        for failing in [0, 1] {
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                pool.run(&|i, _| assert_ne!(i, failing, "thread {failing} fails"));
            }));
            assert!(
                result.is_err(),
                "thread {failing}'s panic reaches the caller"
            );
        }
        let count = AtomicUsize::new(0);
        pool.run(&|_, _| {
            count.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(count.load(Ordering::SeqCst), 2);
    }
}
