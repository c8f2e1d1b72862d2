//! Ctrl-C as a request, not an abort: a run that is told to stop finishes the crash
//! images its checker guests are recovering, takes no new ones, and hands back what it
//! has, so the report of everything checked so far can still be written.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::watch;

/// A shared stop request. Clones share it.
#[derive(Debug, Clone)]
pub struct Interrupt {
    stop: Arc<watch::Sender<bool>>,
    armed: Arc<AtomicBool>,
}

impl Default for Interrupt {
    fn default() -> Self {
        Interrupt {
            stop: Arc::new(watch::Sender::new(false)),
            armed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Interrupt {
    /// A request not yet made.
    pub fn new() -> Interrupt {
        Interrupt::default()
    }

    /// Say that someone now honours the request (a run that can stop cleanly); until
    /// then a Ctrl-C handler should end the process at once.
    pub fn arm(&self) {
        self.armed.store(true, Ordering::SeqCst);
    }

    /// True once [`Interrupt::arm`] was called.
    pub fn is_armed(&self) -> bool {
        self.armed.load(Ordering::SeqCst)
    }

    /// Ask to stop.
    pub fn request(&self) {
        self.stop.send_replace(true);
    }

    /// True once a stop was asked for.
    pub fn is_requested(&self) -> bool {
        *self.stop.borrow()
    }

    /// Wait until a stop is asked for (at once when it already was).
    pub async fn requested(&self) {
        let mut rx = self.stop.subscribe();
        // The sender lives in `self`, so the channel cannot close while we wait.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_request_reaches_every_clone_and_waiter() {
        let i = Interrupt::new();
        assert!(!i.is_requested() && !i.is_armed());
        let c = i.clone();
        let waiter = tokio::spawn(async move { c.requested().await });
        i.arm();
        i.request();
        waiter.await.unwrap();
        assert!(i.is_requested() && i.is_armed());
        // Already requested: returns at once.
        i.requested().await;
    }
}
