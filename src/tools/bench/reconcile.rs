//! `bench reconcile`: a store in this process and a replica process hold
//! the same N entries; for each d, d random differences are added (half on
//! each side), and one reconciliation over loopback gRPC finds them: its
//! bytes, round trips and time, then the time until both hold the union.
//! The `negentropy` crate (the protocol strfry and nostr clients use) runs
//! on the same two sets in the same run, beside the naive id exchange.
//! Also: the fingerprint index's memory at N entries in one namespace and
//! spread over 10,000, and the time to rebuild it when the store opens.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{UNSIGNED_FIXTURES, unsigned_entries};
use crate::client::StoreClient;
use crate::entry::{EntryId, Namespace, VerifiedEntry};
use crate::log::WriteConcern;
use crate::store::Store;
use crate::store::ranges::{FingerprintKey, RangeIndex, Scope};
use crate::store::rocks::{RocksConfig, RocksStore};
use crate::sync::grpc::GrpcPeer;
use crate::sync::peer::{ConnectOptions, Peer};
use crate::sync::reconcile::{Role, Session, SessionLimits, step};
use crate::tools::child::ReplicaProcess;

/// Options of `bench reconcile`.
#[derive(Debug, Clone, clap::Args)]
pub struct ReconcileOptions {
    /// Entries both sides hold.
    #[arg(long, default_value_t = 1_000_000)]
    pub entries: usize,
    /// Ciphertext bytes per entry.
    #[arg(long = "size", default_value_t = 200)]
    pub ciphertext_bytes: usize,
    /// The differences to reconcile, one run each.
    #[arg(long, value_delimiter = ',', default_value = "0,1,100,10000")]
    pub differences: Vec<usize>,
}

const FILL_CHUNK: usize = 100_000;
const BATCH: usize = 1000;

/// `bench reconcile`. See the module docs.
pub async fn reconcile(opts: ReconcileOptions, exe: PathBuf) -> anyhow::Result<()> {
    // One key for both sides: the replica process takes it as text.
    let key_hex = hex::encode(rand::random::<[u8; 32]>());
    let key = FingerprintKey::parse(&key_hex).map_err(anyhow::Error::msg)?;
    let dir = tempfile::tempdir()?;
    let remote = ReplicaProcess::spawn(
        &exe,
        &dir.path().join("remote"),
        false,
        &[
            UNSIGNED_FIXTURES,
            ("MINDOO_REPLICA__REPLICATION__FINGERPRINT_KEY", &key_hex),
            ("MINDOO_REPLICA__STORAGE__SYNC_WRITES", "false"),
        ],
    )
    .await?;
    let addr = remote.grpc.to_string();
    let mut config = RocksConfig::new(dir.path().join("local"));
    config.fingerprint_key = Some(key.clone());
    config.sync_writes = false;
    let mut local: Arc<dyn Store> = Arc::new(open(&config).await?);
    let ns = Namespace::new("bench", "reconcile")?;
    let mut client = StoreClient::connect(&addr).await?;

    let started = Instant::now();
    let mut first = 0u64;
    while (first as usize) < opts.entries {
        let count = FILL_CHUNK.min(opts.entries - first as usize);
        let entries = unsigned_entries(&ns, first, count, opts.ciphertext_bytes);
        append(
            &local,
            &ns,
            entries.iter().map(|e| (e.id, e.data().clone())),
        )
        .await?;
        let batches: Vec<_> = entries.chunks(BATCH).map(<[_]>::to_vec).collect();
        client.put_stream(futures::stream::iter(batches)).await?;
        first += count as u64;
    }
    println!(
        "reconcile: {} entries of {} B ciphertext on both sides (this process and a replica \
         process), filled in {:.1} s",
        opts.entries,
        opts.ciphertext_bytes,
        started.elapsed().as_secs_f64()
    );

    // The index is rebuilt from the ids when the store opens.
    drop(local);
    let opened = Instant::now();
    let store = open(&config).await?;
    let rebuild = opened.elapsed();
    let one_ns = store.ranges().map_or(0, RangeIndex::memory_bytes);
    local = Arc::new(store);
    let spread = spread_memory(&key, opts.entries);
    println!(
        "reconcile: fingerprint index at {} entries: {:.1} MB in 1 namespace, {:.1} MB over \
         10000 namespaces (target <= 32 MB); store opened with the index rebuilt in {} ms \
         (target <= 3000 ms)",
        opts.entries,
        one_ns as f64 / 1e6,
        spread as f64 / 1e6,
        rebuild.as_millis()
    );

    let peer = GrpcPeer::lazy_over(
        &addr,
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            keepalive_interval: Duration::from_secs(10),
        },
        None,
        None,
    )?;
    // Both sets, as the ids negentropy is given.
    let mut ids_local: Vec<EntryId> = Vec::with_capacity(opts.entries + 20_000);
    let mut ids_remote: Vec<EntryId> = Vec::with_capacity(opts.entries + 20_000);
    let base = local.range_ids(&Default::default(), usize::MAX)?;
    ids_local.extend(base.iter().map(|(_, id)| *id));
    ids_remote.extend(base.iter().map(|(_, id)| *id));
    drop(base);
    let mut next = opts.entries as u64;
    for &d in &opts.differences {
        let (mine, theirs) = (d / 2, d - d / 2);
        let extra = unsigned_entries(&ns, next, d, opts.ciphertext_bytes);
        next += d as u64;
        append(
            &local,
            &ns,
            extra[..mine].iter().map(|e| (e.id, e.data().clone())),
        )
        .await?;
        client.put(&extra[mine..]).await?;
        ids_local.extend(extra[..mine].iter().map(|e| e.id));
        ids_remote.extend(extra[mine..].iter().map(|e| e.id));

        let started = Instant::now();
        let mut channel = peer.reconcile(&[]).await?;
        let session = Session::new(Role::Initiator, Scope::all(), SessionLimits::default());
        let (mut session, mut round) = step(local.clone(), session, None).await?;
        let mut trips = 0;
        while !round.is_empty() {
            trips += 1;
            let answer = channel.round(round).await?;
            if answer.is_empty() {
                break;
            }
            (session, round) = step(local.clone(), session, Some(answer)).await?;
        }
        let found = started.elapsed();
        let (sent, received) = channel.bytes();
        drop(channel);
        let (need, give) = (session.need.len(), session.give.len());
        anyhow::ensure!(
            need == theirs && give == mine,
            "found {need} to pull and {give} to push, expected {theirs} and {mine}"
        );
        move_bodies(&local, &peer, &ns, session).await?;
        let union = started.elapsed();
        let (ours_total, theirs_total) = (local.stats().entries, client.head().await?.entry_count);
        anyhow::ensure!(
            ours_total == theirs_total,
            "after the union: {ours_total} here, {theirs_total} there"
        );
        println!(
            "reconcile: d={d:>5}: {} B ({sent} B out, {received} B in), {trips} round trip(s), \
             {:.1} ms to find {need}+{give}; both hold the union ({ours_total}) after {:.1} ms",
            sent + received,
            found.as_secs_f64() * 1e3,
            union.as_secs_f64() * 1e3
        );
        let (bytes, rounds, ms) = negentropy_run(&ids_local, &ids_remote)?;
        println!(
            "reconcile: d={d:>5}: negentropy 0.5 on the same sets: {bytes} B, {rounds} round \
             trip(s), {ms:.1} ms in memory; naive id exchange (one side's ids): {} B",
            32 * ids_local.len()
        );
        // Both hold the union from here on.
        let union_ids: Vec<EntryId> = extra.iter().map(|e| e.id).collect();
        ids_local.extend(&union_ids[mine..]);
        ids_remote.extend(&union_ids[..mine]);
    }
    drop(remote);
    Ok(())
}

async fn open(config: &RocksConfig) -> anyhow::Result<RocksStore> {
    let config = config.clone();
    Ok(tokio::task::spawn_blocking(move || RocksStore::open(&config)).await??)
}

async fn append(
    store: &Arc<dyn Store>,
    ns: &Namespace,
    entries: impl Iterator<Item = (EntryId, Bytes)>,
) -> anyhow::Result<()> {
    let entries: Vec<VerifiedEntry> = entries
        .map(|(id, data)| VerifiedEntry {
            id,
            namespace: ns.clone(),
            data,
        })
        .collect();
    let store = store.clone();
    tokio::task::spawn_blocking(move || {
        for chunk in entries.chunks(BATCH) {
            store.append(chunk, None)?;
        }
        Ok::<_, crate::store::StoreError>(())
    })
    .await??;
    Ok(())
}

/// Pulls what this side lacks and pushes what the replica lacks.
async fn move_bodies(
    local: &Arc<dyn Store>,
    peer: &GrpcPeer,
    ns: &Namespace,
    session: Session,
) -> anyhow::Result<()> {
    use futures::StreamExt;
    for chunk in session.need.chunks(BATCH) {
        let ids: Vec<EntryId> = chunk.iter().map(|(_, id)| *id).collect();
        let mut got = peer.get(ns, ids).await?;
        let mut bodies = Vec::new();
        while let Some(part) = got.next().await {
            bodies.extend(part?.entries);
        }
        append(local, ns, bodies.into_iter()).await?;
    }
    for chunk in session.give.chunks(BATCH) {
        let ids: Vec<EntryId> = chunk.iter().map(|(_, id)| *id).collect();
        let store = local.clone();
        let ns2 = ns.clone();
        let bodies =
            tokio::task::spawn_blocking(move || store.get(&ns2, &ids).map(|b| (ids, b))).await??;
        let entries = bodies
            .0
            .into_iter()
            .zip(bodies.1)
            .filter_map(|(id, b)| b.map(|b| (id, b)))
            .collect();
        peer.put(entries, WriteConcern::default()).await?;
    }
    Ok(())
}

/// The index's memory with `entries` spread over 10,000 namespaces.
fn spread_memory(key: &FingerprintKey, entries: usize) -> usize {
    let index = RangeIndex::new(key.clone());
    let spaces: Vec<Namespace> = (0..10_000)
        .map(|i| Namespace::new("bench", format!("db{i}")).expect("valid"))
        .collect();
    for chunk in 0..entries.div_ceil(10_000) {
        let ids: Vec<EntryId> = (0..10_000u64)
            .map(|i| EntryId::of(&((chunk as u64) * 10_000 + i).to_le_bytes()))
            .collect();
        index.insert(ids.iter().enumerate().map(|(i, id)| (&spaces[i], id)));
    }
    index.memory_bytes()
}

/// One negentropy reconciliation of the two sets, in memory: bytes both
/// ways, round trips, time.
fn negentropy_run(a: &[EntryId], b: &[EntryId]) -> anyhow::Result<(usize, u32, f64)> {
    use negentropy::{Id, Negentropy, NegentropyStorageVector};
    let storage = |ids: &[EntryId]| -> anyhow::Result<NegentropyStorageVector> {
        let mut s = NegentropyStorageVector::new();
        for id in ids {
            s.insert(0, Id::from_byte_array(id.0))
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        s.seal().map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok(s)
    };
    let (sa, sb) = (storage(a)?, storage(b)?);
    let err = |e: negentropy::Error| anyhow::anyhow!("negentropy: {e:?}");
    let started = Instant::now();
    let mut client = Negentropy::borrowed(&sa, 0).map_err(err)?;
    let mut relay = Negentropy::borrowed(&sb, 0).map_err(err)?;
    let mut msg = client.initiate().map_err(err)?;
    let mut bytes = msg.len();
    let mut rounds = 0;
    let (mut have, mut need) = (Vec::new(), Vec::new());
    loop {
        rounds += 1;
        let answer = relay.reconcile(&msg).map_err(err)?;
        bytes += answer.len();
        match client
            .reconcile_with_ids(&answer, &mut have, &mut need)
            .map_err(err)?
        {
            Some(next) => {
                bytes += next.len();
                msg = next;
            }
            None => break,
        }
    }
    Ok((bytes, rounds, started.elapsed().as_secs_f64() * 1e3))
}
