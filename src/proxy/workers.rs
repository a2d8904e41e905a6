//! Per-core workers, as nginx runs them: each worker is a thread with a
//! current-thread tokio runtime of its own, and a client connection lives
//! on one worker from accept to close. The public listener's accept loop
//! hands each new connection to the next worker in turn; its socket is moved
//! to that worker's reactor (`into_std`, `from_std`: two `epoll_ctl`s per
//! connection), so that its reads, its upstream requests and their timers
//! never wake another thread.
//!
//! Why not tokio's multi-thread pool: its work stealing, LIFO slot and
//! idle-worker bookkeeping cost atomics and cross-thread wake-ups on every
//! task wake, and a connection's task may run on any thread. With one task
//! per connection (the upstream client has no task of its own), a worker
//! per core does the same work with no sharing (bench/PROFILE.md §9).
//!
//! Worker 0 is the runtime the accept loop runs on (the process's main
//! runtime, which also runs the control plane); workers 1.. are threads
//! started here, which stop when the [`Workers`] is dropped.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

/// The workers connections are spread over.
#[derive(Debug)]
pub struct Workers {
    /// Workers 1.. (worker 0 is the caller's runtime).
    handles: Vec<Handle>,
    next: AtomicUsize,
    stop: CancellationToken,
}

impl Workers {
    /// `count` workers in all: the caller's runtime and `count - 1` threads,
    /// each running a current-thread runtime. `on_park` runs on each worker
    /// thread when it runs out of work and when it stops (the access log's
    /// per-thread batches).
    pub fn start(count: usize, on_park: fn()) -> std::io::Result<Arc<Workers>> {
        // The caller's thread is worker 0 (a multi-thread caller's other
        // threads get indices of their own).
        crate::shard::set_index(0);
        let stop = CancellationToken::new();
        let mut handles = Vec::new();
        for i in 1..count.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .on_thread_park(on_park)
                .on_thread_stop(on_park)
                .build()?;
            handles.push(rt.handle().clone());
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("mcpflip-worker-{i}"))
                .spawn(move || {
                    crate::shard::set_index(i);
                    rt.block_on(stop.cancelled());
                    // Dropping the runtime drops what is left on it: the
                    // process is ending, or its connections have closed.
                    drop(rt);
                    on_park();
                })?;
        }
        Ok(Arc::new(Workers {
            handles,
            next: AtomicUsize::new(0),
            stop,
        }))
    }

    /// How many workers connections are spread over.
    pub fn count(&self) -> usize {
        self.handles.len() + 1
    }

    /// Runs `serve(tcp)` for a connection just accepted, on the next worker.
    pub fn spawn<F, Fut>(&self, tcp: TcpStream, serve: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.count();
        if i == 0 {
            tokio::spawn(serve(tcp));
            return;
        }
        // Off this reactor, onto the worker's: the socket stays
        // non-blocking throughout.
        let std = match tcp.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(error = %e, "a new connection could not be moved to a worker");
                return;
            }
        };
        self.handles[i - 1].spawn(async move {
            match TcpStream::from_std(std) {
                Ok(tcp) => serve(tcp).await,
                Err(e) => {
                    tracing::debug!(error = %e, "a new connection could not join its worker")
                }
            }
        });
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn nothing() {}

    #[tokio::test]
    async fn connections_go_round_the_workers_each_served_on_its_own_thread() {
        let workers = Workers::start(3, nothing).unwrap();
        assert_eq!(workers.count(), 3);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut clients = Vec::new();
        for n in 0..6 {
            let mut c = TcpStream::connect(addr).await.unwrap();
            let (tcp, _) = listener.accept().await.unwrap();
            let tx = tx.clone();
            workers.spawn(tcp, move |mut tcp| async move {
                let mut b = [0u8; 4];
                tcp.read_exact(&mut b).await.unwrap();
                tcp.write_all(&b).await.unwrap();
                tx.send((n, std::thread::current().id())).unwrap();
            });
            c.write_all(b"ping").await.unwrap();
            let mut b = [0u8; 4];
            c.read_exact(&mut b).await.unwrap();
            assert_eq!(&b, b"ping");
            clients.push(c);
        }
        let mut threads = [None; 6];
        for _ in 0..6 {
            let (n, id) = rx.recv().await.unwrap();
            threads[n] = Some(id);
        }
        // Round robin: the same three threads in turn.
        assert_eq!(threads[0..3], threads[3..6]);
        assert_ne!(threads[0], threads[1]);
        assert_ne!(threads[1], threads[2]);
        assert_ne!(threads[0], threads[2]);
    }
}
