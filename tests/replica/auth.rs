//! Clients authenticated by their key and scoped per namespace, over real
//! gRPC: who gets in, with which status, and that nothing is stored
//! otherwise.

use std::time::{SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use mindoo_replica::auth::{AUTH_HEADER, credentials, credentials_at};
use mindoo_replica::client::{Dial, StoreClient};
use mindoo_replica::config::{RawAccess, RawConfig};
use mindoo_replica::entry::Namespace;
use mindoo_replica::fixtures::sample_entries;
use mindoo_replica::proto;
use tonic::Code;

use super::harness::*;

fn alice() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

fn bob() -> SigningKey {
    SigningKey::from_bytes(&[2; 32])
}

fn hex_key(key: &SigningKey) -> String {
    hex::encode(key.verifying_key().as_bytes())
}

fn notes() -> Namespace {
    Namespace::new("acme", "notes").unwrap()
}

fn public() -> Namespace {
    Namespace::new("acme", "public").unwrap()
}

/// Only alice reads and writes acme/notes; any key reads other namespaces
/// and nobody writes them.
fn scoped(c: &mut RawConfig) {
    c.auth.clients = "required".into();
    c.auth.readers = vec!["*".into()];
    c.auth.namespaces = vec![RawAccess {
        tenant: "acme".into(),
        db: "notes".into(),
        readers: vec![hex_key(&alice())],
        writers: vec![hex_key(&alice())],
    }];
}

async fn client(replica: &TestReplica, key: Option<SigningKey>) -> StoreClient {
    let dial = Dial { tls: None, key };
    StoreClient::connect_with(&replica.addr.to_string(), &dial)
        .await
        .unwrap()
}

/// A Head call carrying `value` as its credentials.
async fn head_with(replica: &TestReplica, value: &str) -> Result<(), tonic::Status> {
    let mut raw = proto::store_client::StoreClient::new(replica.channel().await);
    let mut request = tonic::Request::new(proto::HeadRequest {});
    request
        .metadata_mut()
        .insert(AUTH_HEADER, value.parse().unwrap());
    raw.head(request).await.map(|_| ())
}

async fn count_as_alice(replica: &TestReplica) -> u64 {
    client(replica, Some(alice()))
        .await
        .head()
        .await
        .unwrap()
        .entry_count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_known_by_their_key_and_scoped_per_namespace() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), scoped).await;
    let batch = sample_entries(&notes(), &alice(), 5, 128);

    // No credentials: UNAUTHENTICATED, for a write and for a head alike.
    let mut anonymous = client(&replica, None).await;
    assert_eq!(
        anonymous.put(&batch).await.unwrap_err().code(),
        Code::Unauthenticated
    );
    assert_eq!(
        anonymous.head().await.unwrap_err().code(),
        Code::Unauthenticated
    );

    // A valid key without the right: PERMISSION_DENIED, nothing stored.
    let mut as_bob = client(&replica, Some(bob())).await;
    let denied = as_bob.put(&batch).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert!(denied.message().contains("acme/notes"), "{denied:?}");
    let bobs_own = sample_entries(&public(), &bob(), 1, 64);
    assert_eq!(
        as_bob.put(&bobs_own).await.unwrap_err().code(),
        Code::PermissionDenied
    );
    assert_eq!(count_as_alice(&replica).await, 0);

    // The key the namespace lists writes and reads.
    let mut as_alice = client(&replica, Some(alice())).await;
    as_alice.put(&batch).await.unwrap();
    assert_eq!(count_as_alice(&replica).await, 5);
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    assert_eq!(as_alice.get(&notes(), &ids).await.unwrap().len(), 5);
    let denied = as_bob.get(&notes(), &ids).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    // Any key reads a namespace without lists of its own.
    assert!(as_bob.get(&public(), &ids).await.unwrap().is_empty());

    // Following the whole log needs the right to read every namespace;
    // naming the namespaces one may read is enough.
    let follow = |namespaces: Vec<Namespace>| proto::WatchRequest {
        cursor: None,
        include_data: false,
        namespaces: namespaces
            .iter()
            .map(mindoo_replica::proto::convert::namespace_to_proto)
            .collect(),
        heartbeat_ms: 0,
        relay_delay_ms: 0,
        live_data: false,
    };
    let denied = as_bob.raw().watch(follow(vec![])).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    let denied = as_bob.raw().watch(follow(vec![notes()])).await.unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    as_bob.raw().watch(follow(vec![public()])).await.unwrap();
    as_alice.raw().watch(follow(vec![])).await.unwrap();
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_replayed_and_stale_credentials_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), scoped).await;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // Used once: served; sent again: refused.
    let once = credentials(&alice());
    head_with(&replica, &once).await.unwrap();
    let replayed = head_with(&replica, &once).await.unwrap_err();
    assert_eq!(replayed.code(), Code::Unauthenticated);
    assert!(replayed.message().contains("used before"), "{replayed:?}");

    // Signed by bob, claiming to be alice.
    let by_bob = credentials(&bob());
    let forged = by_bob.replace(&hex_key(&bob()), &hex_key(&alice()));
    let refused = head_with(&replica, &forged).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("signature"), "{refused:?}");
    // Nothing of the credentials is echoed back.
    let signature = forged.rsplit('.').next().unwrap();
    assert!(!refused.message().contains(signature), "{refused:?}");

    // Signed two minutes ago, or two minutes ahead.
    for at in [now - 120_000, now + 120_000] {
        let stale = credentials_at(&alice(), at, rand::random());
        let refused = head_with(&replica, &stale).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
        assert!(refused.message().contains("skew"), "{refused:?}");
    }
    for junk in ["", "v1", "Bearer abc", "v1.00.1.00.00"] {
        let refused = head_with(&replica, junk).await.unwrap_err();
        assert_eq!(refused.code(), Code::Unauthenticated, "{junk:?}");
    }

    // A write with replayed credentials stores nothing.
    let batch = sample_entries(&notes(), &alice(), 3, 64);
    let mut raw = proto::store_client::StoreClient::new(replica.channel().await);
    let mut request = tonic::Request::new(futures::stream::iter([proto::PutEntriesRequest {
        entries: batch
            .iter()
            .map(|e| proto::Entry {
                id: bytes::Bytes::copy_from_slice(&e.id.0),
                data: e.data().clone(),
            })
            .collect(),
        ..Default::default()
    }]));
    request
        .metadata_mut()
        .insert(AUTH_HEADER, once.parse().unwrap());
    let refused = raw.put_entries(request).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert_eq!(count_as_alice(&replica).await, 0);
    replica.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_policy_reloads_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), scoped).await;
    let batch = sample_entries(&notes(), &bob(), 2, 64);
    let mut as_bob = client(&replica, Some(bob())).await;
    assert_eq!(
        as_bob.put(&batch).await.unwrap_err().code(),
        Code::PermissionDenied
    );

    // Bob is added to acme/notes's writers; the same connection writes.
    let mut raw = RawConfig::default();
    scoped(&mut raw);
    raw.auth.namespaces[0].writers.push(hex_key(&bob()));
    let policy = raw.auth_settings().unwrap().access;
    replica.access.send(policy).unwrap();
    as_bob.put(&batch).await.unwrap();
    assert_eq!(count_as_alice(&replica).await, 2);
    replica.stop().await.unwrap();
}

#[test]
fn required_client_auth_with_peers_needs_tls() {
    let mut raw = RawConfig::default();
    raw.replication.peers = vec!["replica-2:7700".into()];
    let e = raw.validate().unwrap_err().to_string();
    assert!(
        e.contains("auth.clients") && e.contains("tls.enabled"),
        "{e}"
    );
    raw.auth.clients = "off".into();
    raw.validate().unwrap();
    raw.auth.clients = "maybe".into();
    let e = raw.validate().unwrap_err().to_string();
    assert!(e.contains("auth.clients"), "{e}");
    raw.auth.clients = "required".into();
    raw.replication.peers.clear();
    raw.auth.writers = vec!["not-a-key".into()];
    let e = raw.validate().unwrap_err().to_string();
    assert!(e.contains("auth.writers"), "{e}");
}
