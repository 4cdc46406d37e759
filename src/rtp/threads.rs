//! The media threads: one single-threaded tokio runtime per thread, each driving its share
//! of the RTP legs.
//!
//! Why not the gateway's multi-threaded runtime: an RTP leg wakes 50 times a second and does
//! a few microseconds of work each time. On a work-stealing runtime those wake-ups also
//! unpark and re-park the other workers (futex calls, context switches). Measured with the
//! bench (1000 calls, one SIPREC reader each, no silence sent): 0.85 cores with the legs on
//! the shared runtime, 0.76 on two media threads. Legs are independent, so each one lives on
//! one thread for its whole life, spread round-robin over the threads;
//! its sockets are registered with that thread's reactor. Readers that are tasks elsewhere
//! (recorder, WHEP, RTMP) are woken across threads as before; inline sinks (SIPREC forks) run
//! on the leg's thread.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::runtime::{Builder, Handle};

/// Handles on the media runtimes; cheap to clone.
#[derive(Debug, Clone)]
pub struct MediaThreads {
    handles: Arc<[Handle]>,
    next: Arc<AtomicUsize>,
}

impl MediaThreads {
    /// Starts `n` media threads (`0`: one per available core). The threads live as long as
    /// the process.
    pub fn start(n: usize) -> std::io::Result<Self> {
        let n = if n == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            n
        };
        let mut handles = Vec::with_capacity(n);
        for i in 0..n {
            let rt = Builder::new_current_thread().enable_all().build()?;
            handles.push(rt.handle().clone());
            std::thread::Builder::new()
                .name(format!("media-{i}"))
                .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        }
        Ok(Self {
            handles: handles.into(),
            next: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// The runtime of the caller (tests, tools): legs run where they are spawned.
    pub fn current() -> Self {
        Self {
            handles: vec![Handle::current()].into(),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The runtime for the next leg (round-robin).
    pub fn pick(&self) -> &Handle {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        &self.handles[i]
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spreads_work_round_robin_over_its_threads() {
        let t = MediaThreads::start(2).unwrap();
        assert_eq!(t.len(), 2);
        let names: Vec<String> = (0..4)
            .map(|_| {
                let (tx, rx) = std::sync::mpsc::channel();
                t.pick().spawn(async move {
                    let name = std::thread::current().name().unwrap_or("").to_owned();
                    tx.send(name).unwrap();
                });
                rx.recv().unwrap()
            })
            .collect();
        assert_eq!(names, ["media-0", "media-1", "media-0", "media-1"]);
    }
}
