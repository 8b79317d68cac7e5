//! Fair limits per client and quotas per tenant, over real gRPC: one client
//! over its limits is refused while another is served as before; a tenant
//! over its quota is refused while others are not, and entries from peers
//! are never refused, so the mesh converges.

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use mindoo_replica::client::{Dial, StoreClient};
use mindoo_replica::config::{RawConfig, RawTenantQuota};
use mindoo_replica::entry::Namespace;
use mindoo_replica::fixtures::sample_entries;
use tonic::Code;

use super::harness::*;

fn flooder_key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn neighbour_key() -> SigningKey {
    SigningKey::from_bytes(&[8; 32])
}

/// Any key reads and writes; each client may make 50 calls a second and
/// have 4 open.
fn limited(c: &mut RawConfig) {
    c.auth.clients = "required".into();
    c.auth.readers = vec!["*".into()];
    c.auth.writers = vec!["*".into()];
    c.limits.client_requests_per_second = 50;
    c.limits.client_request_burst = 50;
    c.limits.max_calls_per_client = 4;
}

async fn client(replica: &TestReplica, key: SigningKey) -> StoreClient {
    let dial = Dial {
        tls: None,
        key: Some(key),
    };
    StoreClient::connect_with(&replica.addr.to_string(), &dial)
        .await
        .unwrap()
}

/// `calls` Head calls one after another: the longest one, and the status
/// of any that failed.
async fn heads(client: &mut StoreClient, calls: usize) -> (Duration, Vec<tonic::Status>) {
    let mut longest = Duration::ZERO;
    let mut failed = Vec::new();
    for _ in 0..calls {
        let start = Instant::now();
        if let Err(e) = client.head().await {
            failed.push(e);
        }
        longest = longest.max(start.elapsed());
    }
    (longest, failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_over_its_limits_is_refused_while_another_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), limited).await;
    let mut neighbour = client(&replica, neighbour_key()).await;

    // Over its rate: the flooder's calls beyond 50 (and what refills
    // meanwhile) are refused; the neighbour's, made meanwhile, are not.
    let flood = {
        let mut flooder = client(&replica, flooder_key()).await;
        tokio::spawn(async move { heads(&mut flooder, 300).await.1 })
    };
    let (longest, failed) = heads(&mut neighbour, 30).await;
    let refused = flood.await.unwrap();
    assert!(failed.is_empty(), "the neighbour was refused: {failed:?}");
    assert!(
        longest < Duration::from_millis(500),
        "the neighbour waited {longest:?} for a call"
    );
    assert!(refused.len() >= 200, "only {} refused", refused.len());
    assert!(
        refused
            .iter()
            .all(|s| s.code() == Code::ResourceExhausted
                && s.message().contains("requests a second")),
        "{:?}",
        refused.first()
    );

    // Over its open calls: four Watches held open, then a fifth call is
    // refused until one of them ends; the neighbour is still served.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut flooder = client(&replica, flooder_key()).await;
    let mut watches = Vec::new();
    for _ in 0..4 {
        watches.push(flooder.watch_from_head(false).await.unwrap());
    }
    let refused = flooder.head().await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("calls open"), "{refused:?}");
    assert!(heads(&mut neighbour, 5).await.1.is_empty());
    drop(watches.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    while let Err(e) = flooder.head().await {
        assert!(Instant::now() < deadline, "still refused: {e:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(watches);

    // A stream's batches beyond the rate wait rather than fail: 80 batches
    // on one PutEntries stream are all stored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let batches: Vec<Vec<_>> = sample_entries(&ns(), &flooder_key(), 80, 64)
        .into_iter()
        .map(|e| vec![e])
        .collect();
    let start = Instant::now();
    let summary = flooder
        .put_stream(futures::stream::iter(batches))
        .await
        .unwrap();
    assert_eq!((summary.stored, summary.rejected), (80, 0));
    // 50 at once, the other 30 at 50 a second.
    assert!(
        start.elapsed() >= Duration::from_millis(500),
        "80 batches within {:?}",
        start.elapsed()
    );

    let text = replica.metrics_text().await;
    let limited = |limit: &str| {
        metric(
            &text,
            &format!("mindoo_replica_client_calls_limited_total{{limit=\"{limit}\"}}"),
        )
    };
    assert!(
        limited("rate") >= 200.0 && limited("calls") >= 1.0,
        "{text}"
    );
    assert!(
        metric(
            &text,
            "mindoo_replica_grpc_requests_total{caller=\"client\",code=\"ResourceExhausted\",method=\"mindoo.replica.v1.Store/Head\"}"
        ) >= 200.0
    );
    assert_eq!(metric(&text, "mindoo_replica_clients_tracked"), 2.0);
    replica.stop().await.unwrap();
}

fn other() -> Namespace {
    Namespace::new("zed", "notes").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_over_its_quota_is_refused_and_entries_from_peers_still_arrive() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    // Replica 1 lets tenant acme store 5 entries; replica 0 has no quota.
    let mesh = mesh_with(&dirs, |i, c| {
        if i == 1 {
            c.quotas.tenants = vec![RawTenantQuota {
                tenant: "acme".into(),
                max_entries: 5,
                max_mb: 0,
            }];
        }
    })
    .await;
    let (free, quota) = (&mesh[0], &mesh[1]);
    let acme = entries(20);
    let mut writer = quota.client().await;
    writer.put(&acme[..4]).await.unwrap();
    quota.wait_for_count(4, 10).await;
    free.wait_for_count(4, 10).await;

    // Three more would make 7: refused whole, nothing of it stored.
    let refused = writer.put(&acme[4..7]).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("tenant acme") && refused.message().contains("quota of 5"),
        "{refused:?}"
    );
    assert_eq!(quota.entry_count().await, 4);
    // Entries held already cost nothing: one held and one new make 5.
    writer.put(&acme[3..5]).await.unwrap();
    assert_eq!(quota.entry_count().await, 5);

    // Written elsewhere, they arrive from the peer past the quota.
    free.client().await.put(&acme[5..20]).await.unwrap();
    quota.wait_for_count(20, 10).await;
    assert_holds_exactly(quota, &ns(), &acme).await;

    // Its clients write nothing more of acme; another tenant writes.
    let more = sample_entries(&ns(), &author(), 21, 256);
    let refused = writer.put(&more[20..]).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    let zed = sample_entries(&other(), &author(), 3, 256);
    writer.put(&zed).await.unwrap();
    assert_eq!(quota.entry_count().await, 23);
    // Raised without a restart (as a reloaded config file does), the quota
    // lets the batch in.
    let mut raised = quota.access.borrow().clone();
    raised.quotas = std::sync::Arc::new(mindoo_replica::quota::Quotas {
        default: Default::default(),
        tenants: [(
            "acme".to_owned(),
            mindoo_replica::quota::Quota {
                max_entries: Some(30),
                max_bytes: None,
            },
        )]
        .into(),
    });
    quota.access.send(raised).unwrap();
    writer.put(&more[20..]).await.unwrap();
    assert_eq!(quota.entry_count().await, 24);

    let text = quota.metrics_text().await;
    assert_eq!(
        metric(
            &text,
            "mindoo_replica_quota_refused_batches_total{limit=\"entries\"}"
        ),
        2.0
    );
    for r in mesh {
        r.stop().await.unwrap();
    }
}
