//! Which connections are open, from which addresses, and which one gives
//! way when a new one arrives at a cap: the connection with no call open
//! that has been idle longest (from the same address, at the per-address
//! cap). Until an evicted connection has closed, it still counts against
//! the descriptors (at most [`MAX_LEAVING`] of them), never against the
//! caps, so the accept loop never waits for it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use futures::task::AtomicWaker;
use tokio::time::Instant;

use super::ConnectionLimits;
use crate::metrics::Metrics;
use crate::replica::outgoing::BytePool;

/// Evicted connections that may be closing at once; beyond it, new
/// connections at a cap are refused.
pub const MAX_LEAVING: usize = 64;

pub struct Registry {
    limits: ConnectionLimits,
    metrics: Arc<Metrics>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    open: HashMap<u64, Arc<Conn>>,
    addresses: HashMap<IpAddr, Address>,
    /// Evicted, not yet closed.
    leaving: usize,
    next_id: u64,
}

struct Address {
    connections: usize,
    send: BytePool,
}

/// Why a new connection was refused (the metric's label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PerAddress,
    MaxConnections,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Refusal::PerAddress => "per_address",
            Refusal::MaxConnections => "max_connections",
        }
    }
}

/// What a connection, its calls and the registry share.
pub struct Conn {
    id: u64,
    ip: IpAddr,
    open_calls: AtomicUsize,
    /// When the last call ended (the connection's start before any).
    last_end: Mutex<Instant>,
    evicted: AtomicBool,
    /// Wakes the connection's task to close it.
    waker: AtomicWaker,
    /// Response data this connection's streams may hold.
    pub send: BytePool,
    /// ... and all connections from its address together.
    pub address_send: BytePool,
}

impl Conn {
    /// Since when no call has been open; `None` while one is.
    pub fn idle_since(&self) -> Option<Instant> {
        (self.open_calls.load(Ordering::Acquire) == 0).then(|| *lock(&self.last_end))
    }

    pub fn call_began(&self) {
        self.open_calls.fetch_add(1, Ordering::AcqRel);
    }

    pub fn call_ended(&self) {
        *lock(&self.last_end) = Instant::now();
        self.open_calls.fetch_sub(1, Ordering::AcqRel);
    }

    /// The registry chose this connection to make room.
    pub fn is_evicted(&self) -> bool {
        self.evicted.load(Ordering::Acquire)
    }

    /// The task to wake when the connection is evicted.
    pub fn register(&self, waker: &std::task::Waker) {
        self.waker.register(waker);
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Registry {
    pub fn new(limits: ConnectionLimits, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            limits,
            metrics,
            state: Mutex::new(State::default()),
        })
    }

    /// Admits a connection from `ip`, evicting an idle one when a cap is
    /// reached; refuses it when no connection in reach is idle.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Member, Refusal> {
        let mut st = lock(&self.state);
        let from_ip = st.addresses.get(&ip).map_or(0, |a| a.connections);
        let refusal = if from_ip >= self.limits.max_per_address {
            Some(Refusal::PerAddress)
        } else if st.open.len() >= self.limits.max_connections {
            Some(Refusal::MaxConnections)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            let victim = st
                .open
                .values()
                .filter(|c| refusal == Refusal::MaxConnections || c.ip == ip)
                .filter_map(|c| Some((c.idle_since()?, c)))
                .min_by_key(|(since, c)| (*since, c.id))
                .map(|(_, c)| c.clone());
            match victim {
                Some(victim) if st.leaving < MAX_LEAVING => {
                    self.evict(&mut st, &victim);
                }
                _ => return Err(refusal),
            }
        }
        let id = st.next_id;
        st.next_id += 1;
        let per_address = self.limits.send_per_address;
        let address = st.addresses.entry(ip).or_insert_with(|| Address {
            connections: 0,
            send: BytePool::new(per_address),
        });
        address.connections += 1;
        let conn = Arc::new(Conn {
            id,
            ip,
            open_calls: AtomicUsize::new(0),
            last_end: Mutex::new(Instant::now()),
            evicted: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            send: BytePool::new(self.limits.send_per_connection),
            address_send: address.send.clone(),
        });
        st.open.insert(id, conn.clone());
        Ok(Member {
            conn,
            registry: self.clone(),
        })
    }

    /// Takes `victim` out of the counts and tells its task to close it.
    fn evict(&self, st: &mut State, victim: &Arc<Conn>) {
        Self::remove(st, victim);
        st.leaving += 1;
        victim.evicted.store(true, Ordering::Release);
        victim.waker.wake();
        self.metrics.connections_evicted.inc();
    }

    fn remove(st: &mut State, conn: &Conn) {
        st.open.remove(&conn.id);
        if let Some(address) = st.addresses.get_mut(&conn.ip) {
            address.connections -= 1;
            if address.connections == 0 {
                st.addresses.remove(&conn.ip);
            }
        }
    }
}

/// A connection counted in the registry until dropped.
pub struct Member {
    pub conn: Arc<Conn>,
    registry: Arc<Registry>,
}

impl Drop for Member {
    fn drop(&mut self) {
        let mut st = lock(&self.registry.state);
        match self.conn.is_evicted() {
            true => st.leaving -= 1,
            false => Registry::remove(&mut st, &self.conn),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn registry(max_connections: usize, max_per_address: usize) -> Arc<Registry> {
        let limits = ConnectionLimits {
            max_connections,
            max_per_address,
            ..ConnectionLimits::default()
        };
        Registry::new(limits, Arc::new(Metrics::new()))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[tokio::test(start_paused = true)]
    async fn at_the_cap_the_longest_idle_connection_gives_way() {
        let r = registry(3, 3);
        let oldest = r.admit(A).unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let busy = r.admit(B).unwrap();
        busy.conn.call_began();
        let recent = r.admit(B).unwrap();
        // A call on the oldest ended just now: `recent` has been idle longer.
        oldest.conn.call_began();
        tokio::time::advance(Duration::from_secs(1)).await;
        oldest.conn.call_ended();
        let new = r.admit(A).unwrap();
        assert!(recent.conn.is_evicted());
        assert!(!oldest.conn.is_evicted() && !busy.conn.is_evicted());
        drop(recent);
        // Nothing idle but the newest and the oldest; then all busy.
        new.conn.call_began();
        oldest.conn.call_began();
        assert_eq!(r.admit(B).err(), Some(Refusal::MaxConnections));
        drop((oldest, busy, new));
        assert!(lock(&r.state).addresses.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn the_per_address_cap_evicts_only_from_that_address() {
        let r = registry(10, 2);
        let other = r.admit(B).unwrap();
        let a1 = r.admit(A).unwrap();
        let a2 = r.admit(A).unwrap();
        a2.conn.call_began();
        let a3 = r.admit(A).unwrap();
        assert!(a1.conn.is_evicted() && !other.conn.is_evicted());
        a3.conn.call_began();
        assert_eq!(r.admit(A).err(), Some(Refusal::PerAddress));
        assert!(r.admit(B).is_ok(), "another address is served");
        drop((a1, a2, a3, other));
    }
}
