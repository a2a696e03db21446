//! Semaphore benchmark: acquire+release pairs per second, tollgate's in-memory semaphore next
//! to `tokio::sync::Semaphore` (which has no names, leases, FIFO queue across processes or
//! holder ids, so it is the ceiling, not a peer).
//!
//! Run: `cargo bench -p tollgate --bench semaphore` (figures in docs/semaphore.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tollgate::semaphore::{MemorySemaphoreBackend, Semaphore};

fn rate(pairs: u64, elapsed: Duration) -> f64 {
    pairs as f64 / elapsed.as_secs_f64()
}

fn row(what: &str, ours: f64, tokio: f64) {
    println!(
        "{what:<44} tollgate {:>12.0}/s   tokio::sync::Semaphore {:>12.0}/s   ratio {:>5.2}x",
        ours,
        tokio,
        tokio / ours
    );
}

fn best_of<F: FnMut() -> f64>(mut f: F) -> f64 {
    (0..3).map(|_| f()).fold(0.0, f64::max)
}

fn main() {
    let n: u64 = 1_000_000;
    let sem = Semaphore::builder("bench", 8)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let tokio_sem = Arc::new(tokio::sync::Semaphore::new(8));

    // 1. Uncontended, sync: try_acquire + drop.
    let ours = best_of(|| {
        let t = Instant::now();
        for _ in 0..n {
            drop(black_box(sem.try_acquire().unwrap()));
        }
        rate(n, t.elapsed())
    });
    let theirs = best_of(|| {
        let t = Instant::now();
        for _ in 0..n {
            drop(black_box(tokio_sem.try_acquire().unwrap()));
        }
        rate(n, t.elapsed())
    });
    row("1 thread, try_acquire + drop", ours, theirs);

    // 2. Uncontended, async: acquire().await + drop on a current-thread runtime.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ours = best_of(|| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..n {
                drop(black_box(sem.acquire_async().await.unwrap()));
            }
            rate(n, t.elapsed())
        })
    });
    let theirs = best_of(|| {
        rt.block_on(async {
            let t = Instant::now();
            for _ in 0..n {
                drop(black_box(tokio_sem.acquire().await.unwrap()));
            }
            rate(n, t.elapsed())
        })
    });
    row("1 task, acquire_async().await + drop", ours, theirs);

    // 3. Contended: 16 tasks on 2 worker threads, capacity 4, waiting for each other.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let per_task: u64 = 20_000;
    let tasks: u64 = 16;
    let contended = Semaphore::builder("bench-contended", 4)
        .build_on(Arc::new(MemorySemaphoreBackend::new()))
        .unwrap();
    let ours = best_of(|| {
        rt.block_on(async {
            let t = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let s = contended.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            let p = s.acquire_async().await.unwrap();
                            tokio::task::yield_now().await;
                            drop(p);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            rate(per_task * tasks, t.elapsed())
        })
    });
    let tokio_contended = Arc::new(tokio::sync::Semaphore::new(4));
    let theirs = best_of(|| {
        rt.block_on(async {
            let t = Instant::now();
            let handles: Vec<_> = (0..tasks)
                .map(|_| {
                    let s = tokio_contended.clone();
                    tokio::spawn(async move {
                        for _ in 0..per_task {
                            let p = s.acquire().await.unwrap();
                            tokio::task::yield_now().await;
                            drop(p);
                        }
                    })
                })
                .collect();
            for h in handles {
                h.await.unwrap();
            }
            rate(per_task * tasks, t.elapsed())
        })
    });
    row("16 tasks / 2 threads, capacity 4 (contended)", ours, theirs);
}
