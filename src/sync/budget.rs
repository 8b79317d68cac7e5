//! Byte budgets for entry data held by pulls: one shared by every peer, and
//! one per peer, both from configuration. A worker takes permits for the
//! bytes it receives before it asks for more, and gives them back once they
//! are stored, so memory held by pulls stays within the budget whatever
//! peers send.
//!
//! Deadlock-free by rule: a worker that cannot get permits at once first
//! stores (and so releases) everything it holds, then waits holding
//! nothing. See [`PeerBudget::acquire`].

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The budget shared by every peer.
#[derive(Clone)]
pub struct ByteBudget {
    total: Arc<Semaphore>,
    total_bytes: usize,
    in_use: Arc<AtomicUsize>,
}

impl ByteBudget {
    pub fn new(total_bytes: usize) -> Self {
        Self {
            total: Arc::new(Semaphore::new(total_bytes)),
            total_bytes,
            in_use: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A budget of `bytes` for one peer, drawn from this one.
    pub fn for_peer(&self, bytes: usize) -> PeerBudget {
        let bytes = bytes.min(self.total_bytes);
        PeerBudget {
            shared: self.clone(),
            own: Arc::new(Semaphore::new(bytes)),
            cap: bytes,
        }
    }

    /// Bytes held by pulls right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }
}

/// One peer's budget.
#[derive(Clone)]
pub struct PeerBudget {
    shared: ByteBudget,
    own: Arc<Semaphore>,
    cap: usize,
}

/// Bytes held until dropped.
pub struct BytePermit {
    parts: Vec<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    bytes: usize,
    in_use: Option<Arc<AtomicUsize>>,
}

impl BytePermit {
    pub fn empty() -> Self {
        Self {
            parts: Vec::new(),
            bytes: 0,
            in_use: None,
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Holds `other`'s bytes too.
    pub fn merge(&mut self, mut other: BytePermit) {
        self.parts.append(&mut other.parts);
        self.bytes += std::mem::take(&mut other.bytes);
        if self.in_use.is_none() {
            self.in_use = other.in_use.take();
        }
    }
}

impl Drop for BytePermit {
    fn drop(&mut self) {
        if let Some(in_use) = &self.in_use {
            in_use.fetch_sub(self.bytes, Ordering::Relaxed);
        }
    }
}

impl PeerBudget {
    /// Permits for `bytes`, counted at most at the peer's whole budget (a
    /// single entry larger than that still moves, alone). `None` when they
    /// are not available right now.
    pub fn try_acquire(&self, bytes: usize) -> Option<BytePermit> {
        let n = self.clamp(bytes);
        let own = self.own.clone().try_acquire_many_owned(n).ok()?;
        let total = self.shared.total.clone().try_acquire_many_owned(n).ok()?;
        Some(self.permit(own, total, n))
    }

    /// Waits for permits for `bytes`. Call only while holding no other
    /// permit of this budget, so no two workers wait on each other.
    pub async fn acquire(&self, bytes: usize) -> BytePermit {
        let n = self.clamp(bytes);
        let own = self
            .own
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("budget semaphores are never closed");
        let total = self
            .shared
            .total
            .clone()
            .acquire_many_owned(n)
            .await
            .expect("budget semaphores are never closed");
        self.permit(own, total, n)
    }

    fn clamp(&self, bytes: usize) -> u32 {
        bytes.min(self.cap).min(u32::MAX as usize) as u32
    }

    fn permit(&self, own: OwnedSemaphorePermit, total: OwnedSemaphorePermit, n: u32) -> BytePermit {
        let in_use = self.shared.in_use.clone();
        in_use.fetch_add(n as usize, Ordering::Relaxed);
        BytePermit {
            parts: vec![(own, total)],
            bytes: n as usize,
            in_use: Some(in_use),
        }
    }

    /// The peer's whole budget.
    pub fn cap(&self) -> usize {
        self.cap
    }

    /// Bytes held by all pulls right now.
    pub fn total_in_use(&self) -> usize {
        self.shared.in_use()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permits_are_bounded_per_peer_and_in_total() {
        let budget = ByteBudget::new(100);
        let a = budget.for_peer(60);
        let b = budget.for_peer(60);
        let held_a = a.try_acquire(50).unwrap();
        assert!(a.try_acquire(20).is_none(), "over a's own budget");
        let held_b = b.try_acquire(50).unwrap();
        assert!(b.try_acquire(1).is_none(), "over the total");
        assert_eq!(budget.in_use(), 100);
        drop(held_a);
        assert_eq!(budget.in_use(), 50);
        // An oversized request counts as the whole per-peer budget.
        drop(held_b);
        let big = a.try_acquire(1 << 30).unwrap();
        assert_eq!(big.bytes(), 60);
    }
}
