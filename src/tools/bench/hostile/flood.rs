//! `flood`: a client holding a valid key that calls as much as it can:
//! [`CONNECTIONS`] connections, each with [`CALLS`] calls going at once,
//! writing batches, reading them back and asking for the head, again and
//! again. What the replica refuses it retries after [`RETRY_PAUSE`] (a
//! loop that retried at once would spin this process's cores, which on
//! two cores measures the machine, not the replica).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;

use super::attack::AttackStats;
use crate::client::{Dial, StoreClient};
use crate::entry::Namespace;
use crate::tools::bench::sample_entries;

const CONNECTIONS: usize = 4;
/// Calls each connection keeps going: 256 in all, the default
/// `limits.max_calls_per_client`.
const CALLS: usize = 64;
const RETRY_PAUSE: Duration = Duration::from_millis(20);
/// Entries of 1 KiB per write.
const BATCH: usize = 10;

pub async fn run(addr: SocketAddr, stats: Arc<AttackStats>, key: SigningKey) {
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
        for n in 0..CALLS {
            let (client, key, open) = (client.clone(), key.clone(), open.clone());
            loops.spawn(async move {
                let _open = open;
                calls(client, key, n).await
            });
        }
    }
    while loops.join_next().await.is_some() {}
}

/// One loop of calls, each kind in turn.
async fn calls(mut client: StoreClient, key: SigningKey, n: usize) {
    let ns = Namespace::new("bench", "flood").expect("a valid namespace");
    let mut ids = Vec::new();
    for turn in n.. {
        let done = match turn % 3 {
            0 => {
                let batch = sample_entries(&ns, &key, BATCH, 1024);
                ids = batch.iter().map(|e| e.id).collect();
                client.put(&batch).await.map(drop)
            }
            1 => client.get(&ns, &ids).await.map(drop),
            _ => client.head().await.map(drop),
        };
        if done.is_err() {
            tokio::time::sleep(RETRY_PAUSE).await;
        }
    }
}
