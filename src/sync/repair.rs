//! Requests to compare sets with peers now rather than at the next
//! periodic reconciliation: from an operator (`mindoo-replica repair`), or
//! from a scrub that took corrupt entries out of service and needs good
//! copies back.
//!
//! A request has a number; each pull worker remembers the highest it has
//! handled and reports it in its status, so whoever asked can wait until
//! every worker it asked has answered.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::watch;

/// The requests made so far.
#[derive(Debug, Clone, Default)]
pub struct Requested {
    /// The newest request made of every peer.
    all: u64,
    /// The newest request made of one peer, by node identity.
    by_peer: HashMap<String, u64>,
    last: u64,
}

impl Requested {
    /// The newest request made of `node`, 0 for none.
    pub fn of(&self, node: &str) -> u64 {
        self.all.max(self.by_peer.get(node).copied().unwrap_or(0))
    }
}

/// Where requests are made and followed; one per replica, cloned into each
/// worker.
#[derive(Clone)]
pub struct Repairs(Arc<watch::Sender<Requested>>);

impl Default for Repairs {
    fn default() -> Self {
        Self(Arc::new(watch::channel(Requested::default()).0))
    }
}

impl Repairs {
    /// Asks `peer` (a node identity), or every peer, to compare sets now;
    /// returns the request's number.
    pub fn request(&self, peer: Option<&str>) -> u64 {
        let mut number = 0;
        self.0.send_modify(|r| {
            r.last += 1;
            number = r.last;
            match peer {
                Some(peer) => {
                    r.by_peer.insert(peer.to_owned(), number);
                }
                None => r.all = number,
            }
        });
        number
    }

    /// Follows the requests.
    pub fn subscribe(&self) -> watch::Receiver<Requested> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_sees_the_newest_request_made_of_it() {
        let repairs = Repairs::default();
        let seen = repairs.subscribe();
        assert_eq!(seen.borrow().of("a"), 0);
        let one = repairs.request(Some("a"));
        let two = repairs.request(None);
        let three = repairs.request(Some("b"));
        assert!(one < two && two < three);
        assert_eq!(seen.borrow().of("a"), two);
        assert_eq!(seen.borrow().of("b"), three);
        assert_eq!(seen.borrow().of("c"), two);
    }
}
