//! `flood`: a client holding a valid key that calls as much as it can:
//! [`CONNECTIONS`] connections, each with [`CALLS`] calls going at once,
//! writing batches, reading them back and asking for the head, again and
//! again. Its batches are made before it starts and sent again and again
//! (the replica checks each one anew, and finds it held), and what the
//! replica refuses it retries after [`RETRY_PAUSE`]: an attacker that spent
//! this process's cores making entries or retrying at once would, on two
//! cores, measure the machine rather than the replica.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;

use super::attack::AttackStats;
use crate::client::{Dial, StoreClient};
use crate::entry::{Entry, Namespace};
use crate::tools::bench::sample_entries;

const CONNECTIONS: usize = 4;
/// Calls each connection keeps going: 256 in all, the default
/// `limits.max_calls_per_client`.
const CALLS: usize = 64;
const RETRY_PAUSE: Duration = Duration::from_millis(200);
/// Entries of 1 KiB per write.
const BATCH: usize = 10;

pub async fn run(addr: SocketAddr, stats: Arc<AttackStats>, key: SigningKey) {
    let ns = Namespace::new("bench", "flood").expect("a valid namespace");
    let made = {
        let key = key.clone();
        tokio::task::spawn_blocking(move || {
            (0..CONNECTIONS * CALLS)
                .map(|_| sample_entries(&ns, &key, BATCH, 1024))
                .collect::<Vec<_>>()
        })
    };
    let Ok(batches) = made.await else { return };
    let batches = Arc::new(batches);
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..CONNECTIONS {
        let dial = Dial {
            tls: None,
            key: Some(key.clone()),
        };
        let Ok(client) = StoreClient::connect_with(&addr.to_string(), &dial).await else {
            continue;
        };
        let open = Arc::new(stats.opened());
        for _ in 0..CALLS {
            let (client, batches, open) = (client.clone(), batches.clone(), open.clone());
            let n = loops.len();
            loops.spawn(async move {
                let _open = open;
                calls(client, &batches, n).await
            });
        }
    }
    while loops.join_next().await.is_some() {}
}

/// Loop `n`'s calls, each kind in turn, over the batches in turn.
async fn calls(mut client: StoreClient, batches: &[Vec<Entry>], n: usize) {
    for turn in n.. {
        let batch = &batches[(n + turn / 3) % batches.len()];
        let done = match turn % 3 {
            0 => client.put(batch).await.map(drop),
            1 => {
                let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
                client.get(batch[0].namespace(), &ids).await.map(drop)
            }
            _ => client.head().await.map(drop),
        };
        if done.is_err() {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
