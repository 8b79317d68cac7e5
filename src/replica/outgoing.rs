//! The entry data that messages on their way out may hold at once. Four
//! pools bound it: the replica's (every stream that sends data: Watch,
//! ScanSince, GetEntries), each client's ([`crate::fair`]), each source
//! address's and each connection's, so that one client cannot take what
//! every other client needs.
//!
//! Before it reads the data of a message, a stream takes a grant from the
//! pools of its [`SendScope`]: a full message, and at least the largest
//! entry ([`crate::limits::Limits::send_grant_bytes`]), so that nothing it
//! reads is outside the grant. When a pool has not that much free, the
//! stream waits (first come, first served); nothing is ever sent outside
//! the pools. The stream keeps the grant, shrunk to the data it used, until
//! the transport asks for its next message (or the stream ends): HTTP/2
//! takes a message in slices of one frame ([`crate::connections::slices`])
//! and asks for the next only once it has taken the last slice, so what it
//! still holds of a message whose grant is back is at most a slice per
//! stream (or what the reader's window let through before it stopped
//! reading).
//!
//! A stream takes the pools in a fixed order (connection, address, client,
//! replica), so streams cannot wait on each other in a circle. A
//! stream whose reader never takes its message holds its grant until the
//! connection's send timeout closes the connection (see
//! [`crate::connections`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::Semaphore;

/// Largest pool: grants count bytes in `u32` permits.
const MAX_POOL_BYTES: usize = u32::MAX as usize;

/// One pool of bytes that grants are taken from.
#[derive(Clone)]
pub struct BytePool {
    free: Arc<Semaphore>,
    /// Bytes in grants (not what waiting streams have gathered so far).
    granted: Arc<AtomicUsize>,
    total: usize,
}

impl BytePool {
    pub fn new(total: usize) -> Self {
        let total = total.min(MAX_POOL_BYTES);
        Self {
            free: Arc::new(Semaphore::new(total)),
            granted: Arc::new(AtomicUsize::new(0)),
            total,
        }
    }

    /// Bytes granted from this pool right now: data that messages hold.
    pub fn held(&self) -> usize {
        self.granted.load(Ordering::Acquire)
    }

    pub fn total(&self) -> usize {
        self.total
    }

    fn release(&self, bytes: usize) {
        if bytes > 0 {
            self.granted.fetch_sub(bytes, Ordering::AcqRel);
            self.free.add_permits(bytes);
        }
    }
}

/// The pools one stream draws from, narrowest first.
#[derive(Clone)]
pub struct SendScope {
    pools: Vec<BytePool>,
}

impl SendScope {
    /// A scope of the replica's pool alone (a reader in this process).
    pub fn replica(pool: &BytePool) -> Self {
        Self {
            pools: vec![pool.clone()],
        }
    }

    /// A scope of a connection's pool, its address's and the replica's.
    pub fn new(narrowest_first: Vec<BytePool>) -> Self {
        Self {
            pools: narrowest_first,
        }
    }

    /// `bytes` from every pool (at most what the narrowest holds in all),
    /// waiting until each has them; nothing for 0.
    pub async fn grant(&self, bytes: usize) -> SendGrant {
        let bytes = bytes.min(self.largest_grant());
        if bytes > 0 {
            // Held as permits until every pool has granted, so a stream
            // dropped while it waits gives back what it had gathered.
            let mut permits = Vec::with_capacity(self.pools.len());
            for pool in &self.pools {
                let permit = pool
                    .free
                    .clone()
                    .acquire_many_owned(bytes as u32)
                    .await
                    .expect("send pools are never closed");
                permits.push(permit);
            }
            for (pool, permit) in self.pools.iter().zip(permits) {
                permit.forget();
                pool.granted.fetch_add(bytes, Ordering::AcqRel);
            }
        }
        SendGrant {
            bytes,
            pools: self.pools.clone(),
        }
    }

    /// The largest grant the pools can ever give at once.
    pub fn largest_grant(&self) -> usize {
        self.pools.iter().map(BytePool::total).min().unwrap_or(0)
    }
}

/// Bytes granted to one stream until dropped.
pub struct SendGrant {
    bytes: usize,
    pools: Vec<BytePool>,
}

impl SendGrant {
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Gives back what the message did not use.
    pub fn shrink_to(&mut self, used: usize) {
        let unused = self.bytes.saturating_sub(used);
        for pool in &self.pools {
            pool.release(unused);
        }
        self.bytes -= unused;
    }
}

impl Drop for SendGrant {
    fn drop(&mut self) {
        self.shrink_to(0);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn grants_and_takes_back_what_is_unused() {
        let pool = BytePool::new(100);
        let scope = SendScope::replica(&pool);
        let mut a = scope.grant(70).await;
        a.shrink_to(20);
        let b = scope.grant(70).await;
        assert_eq!((a.bytes(), b.bytes(), pool.held()), (20, 70, 90));
        drop((a, b));
        assert_eq!(pool.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_waits_until_its_whole_grant_is_free() {
        let pool = BytePool::new(100);
        let scope = SendScope::replica(&pool);
        let most = scope.grant(80).await;
        let waiting = tokio::spawn({
            let scope = scope.clone();
            async move { scope.grant(30).await.bytes() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!waiting.is_finished(), "nothing is granted beyond the pool");
        assert_eq!(pool.held(), 80);
        drop(most);
        assert_eq!(waiting.await.unwrap(), 30);
        assert_eq!(pool.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_narrowest_pool_bounds_a_scope_and_others_still_get_the_rest() {
        let replica = BytePool::new(100);
        let (conn_a, conn_b) = (BytePool::new(30), BytePool::new(30));
        let a = SendScope::new(vec![conn_a.clone(), replica.clone()]);
        let b = SendScope::new(vec![conn_b, replica.clone()]);
        let held_by_a = a.grant(1000).await;
        assert_eq!(held_by_a.bytes(), 30);
        // A second stream of connection a waits; connection b is served.
        let blocked = tokio::spawn({
            let a = a.clone();
            async move { a.grant(10).await.bytes() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!blocked.is_finished());
        assert_eq!(b.grant(20).await.bytes(), 20);
        drop(held_by_a);
        assert_eq!(blocked.await.unwrap(), 10);
        assert_eq!((replica.held(), conn_a.held()), (0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_dropped_while_it_waits_gives_back_what_it_gathered() {
        let replica = BytePool::new(50);
        let conn = BytePool::new(40);
        let scope = SendScope::new(vec![conn.clone(), replica.clone()]);
        let other = SendScope::replica(&replica).grant(30).await;
        // Takes 40 from the connection, then waits for the replica's.
        let waiting = tokio::spawn(async move { scope.grant(40).await.bytes() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        waiting.abort();
        let _ = waiting.await;
        drop(other);
        let again = SendScope::new(vec![conn.clone(), replica.clone()]);
        assert_eq!(again.grant(40).await.bytes(), 40);
    }
}
