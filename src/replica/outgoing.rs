//! The entry data that messages on their way out may hold at once, shared
//! by every stream that sends data (Watch, ScanSince, GetEntries). Before it
//! builds a message, a stream takes a grant of what is free, up to a full
//! message; it keeps the grant, shrunk to the data it used, until the
//! transport asks for its next message (the one it holds has then left its
//! hands) or until the stream ends. When little is free a message carries a
//! single entry, so every stream keeps moving, and clients that stop reading
//! hold at most the budget plus one entry each.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

#[derive(Clone)]
pub struct SendBudget {
    total: usize,
    held: Arc<AtomicUsize>,
}

impl SendBudget {
    pub fn new(total: usize) -> Self {
        Self {
            total,
            held: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Up to `wanted` bytes, as many as are free (possibly none).
    pub fn grant(&self, wanted: usize) -> SendGrant {
        let mut held = self.held.load(Ordering::Relaxed);
        loop {
            let bytes = wanted.min(self.total.saturating_sub(held));
            match self.held.compare_exchange_weak(
                held,
                held + bytes,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    return SendGrant {
                        bytes,
                        held: self.held.clone(),
                    };
                }
                Err(now) => held = now,
            }
        }
    }

    /// Bytes granted to streams right now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }
}

/// Bytes granted to one stream until dropped.
pub struct SendGrant {
    bytes: usize,
    held: Arc<AtomicUsize>,
}

impl SendGrant {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back what the message did not use.
    pub fn shrink_to(&mut self, used: usize) {
        let unused = self.bytes.saturating_sub(used);
        self.held.fetch_sub(unused, Ordering::AcqRel);
        self.bytes -= unused;
    }
}

impl Drop for SendGrant {
    fn drop(&mut self) {
        self.held.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_what_is_free_and_takes_back_what_is_unused() {
        let budget = SendBudget::new(100);
        let mut a = budget.grant(70);
        let b = budget.grant(70);
        assert_eq!((a.bytes(), b.bytes()), (70, 30));
        assert_eq!(budget.grant(10).bytes(), 0);
        a.shrink_to(20);
        assert_eq!(budget.held(), 50);
        assert_eq!(budget.grant(80).bytes(), 50);
        drop((a, b));
        assert_eq!(budget.held(), 0);
    }
}
