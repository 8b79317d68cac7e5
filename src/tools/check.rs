//! The `check` command: writes one new entry through the first replica and
//! waits until every other one serves it, a proof that the mesh replicates
//! end to end. The Helm chart's test pod runs it; operators can too.
//! With `--replicas K` the write itself waits until K replicas hold it.

use std::time::Duration;

use anyhow::{Context, bail};
use tokio::time::Instant;

use crate::client::StoreClient;
use crate::entry::{Namespace, PutOutcome};
use crate::fixtures::sample_entries;
use crate::log::WriteConcern;

pub struct CheckOptions {
    /// gRPC addresses: the first takes the write, the others must serve it.
    pub addrs: Vec<String>,
    pub namespace: Namespace,
    /// For all of it, waiting for replicas to come up included.
    pub timeout: Duration,
    /// Replicas that must hold the entry before the first acknowledges it.
    pub replicas: u32,
}

pub async fn check(opts: CheckOptions) -> anyhow::Result<()> {
    let Some((first, others)) = opts.addrs.split_first() else {
        bail!("name at least one replica with --addr");
    };
    let started = Instant::now();
    let deadline = started + opts.timeout;
    // A fresh key and random bytes: an entry no replica has yet.
    let key = ed25519_dalek::SigningKey::from_bytes(&rand::random());
    let entry = sample_entries(&opts.namespace, &key, 1, 64).remove(0);
    let id = entry.id;

    let mut client = connect(first, deadline).await?;
    let wait = deadline
        .saturating_duration_since(Instant::now())
        .min(WriteConcern::MAX_TIMEOUT);
    let (outcome, confirmed) = client
        .put_with(
            std::slice::from_ref(&entry),
            WriteConcern::replicas(opts.replicas, wait),
        )
        .await
        .with_context(|| format!("writing through {first}"))?;
    match outcome.first() {
        Some(PutOutcome::Stored | PutOutcome::Duplicate) => {}
        Some(PutOutcome::Rejected(why)) => bail!("{first} rejected the entry: {why}"),
        None => bail!("{first} answered the write without an outcome"),
    }
    println!(
        "check: wrote {id} to {} through {first}, acknowledged as held by {confirmed} replica(s)",
        opts.namespace
    );
    for addr in others {
        let mut client = connect(addr, deadline).await?;
        loop {
            let found = client
                .get(&opts.namespace, &[id])
                .await
                .with_context(|| format!("reading from {addr}"))?;
            if !found.is_empty() {
                let secs = started.elapsed().as_secs_f64();
                println!("check: {addr} serves it after {secs:.2} s");
                break;
            }
            if Instant::now() >= deadline {
                bail!(
                    "{addr} does not serve {id} after {} s: it is not replicating from {first}",
                    opts.timeout.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    println!("check: ok, {} replica(s)", opts.addrs.len());
    Ok(())
}

/// Connects, retrying until `deadline` (a replica may still be starting).
async fn connect(addr: &str, deadline: Instant) -> anyhow::Result<StoreClient> {
    loop {
        match StoreClient::connect(addr).await {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() >= deadline => {
                return Err(e).with_context(|| format!("connecting to {addr}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}
