//! Scrub of a running replica: an entry whose bytes went bad on disk is
//! found, never served again to a client or a peer, and replaced by a good
//! copy from a peer while the replica serves; `repair` compares sets on
//! demand and says what moved.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use mindoo_replica::entry::{Entry, EntryId};
use mindoo_replica::proto;
use mindoo_replica::proto::store_client::StoreClient as RawStore;

use crate::harness::*;

/// A shared fingerprint key; no periodic reconciliation or scrub, so only
/// what the test asks for runs.
fn on_demand(c: &mut mindoo_replica::config::RawConfig) {
    c.replication.fingerprint_key =
        "0badc0ffee0ddf00d0badc0ffee0ddf00d0badc0ffee0ddf00d0badc0ffee0dd".into();
    c.replication.reconcile_interval_ms = 0;
    c.storage.scrub_interval_ms = 0;
}

/// Flips one byte of `entry`'s body where RocksDB keeps it on disk, in a
/// stopped replica's blob file: bit rot the store is not told of.
fn flip(dir: &Path, entry: &Entry) {
    {
        let opts = rocksdb::Options::default();
        let families = rocksdb::DB::list_cf(&opts, dir).unwrap();
        let db = rocksdb::DB::open_cf(&opts, dir, &families).unwrap();
        db.flush_cf(db.cf_handle("bodies").unwrap()).unwrap();
    }
    let body = entry.data();
    for file in std::fs::read_dir(dir).unwrap() {
        let path = file.unwrap().path();
        if path.extension().is_none_or(|e| e != "blob") {
            continue;
        }
        let mut bytes = std::fs::read(&path).unwrap();
        let Some(at) = bytes.windows(body.len()).position(|w| w == &body[..]) else {
            continue;
        };
        bytes[at + body.len() - 40] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        return;
    }
    panic!("entry {}'s body is in no blob file", entry.id);
}

/// What the replica hands a client that asks for `id`: its bytes, or
/// `None` when it says it does not hold it.
async fn served(replica: &TestReplica, id: &EntryId) -> Option<Bytes> {
    let mut stream = RawStore::new(replica.channel().await)
        .get_entries(proto::GetEntriesRequest {
            namespace: Some(mindoo_replica::proto::convert::namespace_to_proto(&ns())),
            ids: vec![Bytes::copy_from_slice(&id.0)],
        })
        .await
        .unwrap()
        .into_inner();
    let mut found = None;
    while let Some(batch) = stream.message().await.unwrap() {
        if let Some(e) = batch.entries.into_iter().next() {
            found = Some(e.data);
        }
    }
    found
}

/// Every body the replica's log hands a peer, by id.
async fn logged_bodies(replica: &TestReplica) -> Vec<(EntryId, Bytes)> {
    let mut stream = RawStore::new(replica.channel().await)
        .scan_since(proto::ScanSinceRequest {
            cursor: None,
            limit: 10_000,
            include_data: true,
            namespaces: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let mut out = Vec::new();
    while let Some(batch) = stream.message().await.unwrap() {
        for r in batch.records {
            out.push((EntryId(r.id[..].try_into().unwrap()), r.data));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_flipped_on_disk_is_found_never_served_again_and_replaced_from_a_peer() {
    let dirs: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().unwrap()).collect();
    let home = tempfile::tempdir().unwrap();
    let mut replicas = mesh_with(&dirs, |_, c| on_demand(c)).await;
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    let all = entries(300);
    replicas[0].client().await.put(&all).await.unwrap();
    replicas[1].wait_for_count(300, 20).await;
    replicas.remove(1).stop().await.unwrap();
    let bad = &all[123];
    flip(dirs[1].path(), bad);
    let b = restart_member(dirs[1].path(), addrs[1], &addrs, on_demand).await;
    let b_addr = addrs[1].to_string();
    // The flip took: the store hands out what is on disk.
    let rotten = served(&b, &bad.id).await.expect("still listed");
    assert_ne!(rotten, *bad.data(), "the bytes on disk changed");

    let out =
        cli(home.path(), &["scrub", "--addr", &b_addr]).expect_err("corruption fails the scrub");
    assert!(
        out.contains(&format!(
            "corrupt, taken out of service: seq 124 in acme/notes id {}",
            bad.id
        )) && out.contains("300 entries")
            && out.contains("1 entries were not as stored"),
        "{out}"
    );
    // From now on a client or a peer gets the good copy or nothing, never
    // the bytes that went bad.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let now = served(&b, &bad.id).await;
        assert!(
            now.as_ref().is_none_or(|d| d == bad.data()),
            "served bytes that went bad"
        );
        for (id, data) in logged_bodies(&b).await {
            assert!(
                id != bad.id || data == *bad.data(),
                "the log handed out bytes that went bad"
            );
        }
        if now.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no good copy came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_holds_exactly(&b, &ns(), &all).await;
    assert_holds_exactly(&replicas[0], &ns(), &all).await;
    let text = b.metrics_text().await;
    assert_eq!(
        metric(&text, "mindoo_replica_scrub_corrupt_entries_total"),
        1.0
    );
    assert_eq!(metric(&text, "mindoo_replica_scrub_entries_total"), 300.0);
    let a_node = addrs[0].to_string();
    assert_eq!(
        metric(
            &text,
            &format!("mindoo_replica_peer_reconcile_pulled_total{{peer=\"{a_node}\"}}")
        ),
        1.0,
        "the good copy, alone, came from the peer"
    );

    // Sound again, and a repair on demand finds nothing left to move.
    let out = cli(
        home.path(),
        &["scrub", "--addr", &b_addr, "--mb-per-second", "50"],
    )
    .unwrap();
    assert!(
        out.contains("300 entries") && out.contains("0 corrupt"),
        "{out}"
    );
    let out = cli(home.path(), &["repair", "--addr", &b_addr]).unwrap();
    assert!(
        out.contains(&a_node) && out.contains("done") && out.contains("pulled 0, pushed 0"),
        "{out}"
    );
    let out = cli(
        home.path(),
        &["repair", "--addr", &b_addr, "--peer", "nobody:1"],
    )
    .unwrap_err();
    assert!(
        out.contains("no peer named nobody:1; this replica's peers: 127.0.0.1:"),
        "{out}"
    );
    b.stop().await.unwrap();
    replicas.remove(0).stop().await.unwrap();
}
