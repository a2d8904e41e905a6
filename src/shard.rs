//! Counters written on every request, one shard per worker.
//!
//! A counter shared by every worker moves its cache line from core to core on
//! each write: with two workers each request paid for that several times over
//! (a slot's request and era counts, its duration histograms, its last pinned
//! request). Each worker thread (`proxy::workers`) has an index; what it
//! writes goes to the shard of that index, each on cache lines of its own,
//! and readers (the metrics scrape, `status`, a drain's quiet check) combine
//! the shards. Threads that were given no index (tests, the blocking pool)
//! get the next free one from 2^16 up; beyond [`SHARDS`] threads, shards are
//! shared (correct, only less spread).

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Shards per counter: workers beyond this many share shards (correct, only
/// less spread).
pub const SHARDS: usize = 16;

thread_local! {
    static INDEX: Cell<Option<usize>> = const { Cell::new(None) };
}

/// This thread's worker index (the pools' idle lists and the counter shards
/// use it): set by [`set_index`], or the next free one from 2^16 up.
pub fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1 << 16);
    INDEX.with(|c| {
        c.get().unwrap_or_else(|| {
            let i = NEXT.fetch_add(1, Ordering::Relaxed);
            c.set(Some(i));
            i
        })
    })
}

/// Makes this thread worker `i`.
pub fn set_index(i: usize) {
    INDEX.with(|c| c.set(Some(i)));
}

/// `T` alone on its cache lines (128 bytes: adjacent-line prefetch pairs
/// 64-byte lines on x86).
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct Padded<T>(pub T);

/// One `T` per shard.
#[derive(Debug)]
pub struct PerWorker<T> {
    shards: Box<[Padded<T>]>,
}

impl<T: Default> Default for PerWorker<T> {
    fn default() -> Self {
        PerWorker {
            shards: (0..SHARDS).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> PerWorker<T> {
    /// This thread's shard.
    pub fn local(&self) -> &T {
        &self.shards[index() % SHARDS].0
    }

    /// Every shard, for readers that combine them.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.shards.iter().map(|p| &p.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn each_worker_writes_its_own_shard() {
        let c: std::sync::Arc<PerWorker<AtomicU64>> = Default::default();
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let c = c.clone();
                std::thread::spawn(move || {
                    set_index(i);
                    for _ in 0..=i {
                        c.local().fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("joins");
        }
        let shards: Vec<u64> = c.iter().map(|a| a.load(Ordering::Relaxed)).collect();
        assert_eq!(&shards[..4], &[1, 2, 3, 4]);
        assert_eq!(shards.iter().sum::<u64>(), 10);
    }

    #[test]
    fn shards_do_not_share_cache_lines() {
        let c: PerWorker<AtomicU64> = Default::default();
        let a: Vec<usize> = c.iter().map(|s| s as *const _ as usize).collect();
        for w in a.windows(2) {
            assert!(w[1] - w[0] >= 128, "{w:?}");
        }
        assert_eq!(a[0] % 128, 0);
    }

    #[test]
    fn threads_without_an_index_get_distinct_ones() {
        let a = std::thread::spawn(index).join().expect("joins");
        let b = std::thread::spawn(index).join().expect("joins");
        assert_ne!(a, b);
        assert!(a >= 1 << 16 && b >= 1 << 16);
    }
}
