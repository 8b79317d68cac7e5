//! Bad input over real gRPC: each case gets a precise status or rejection
//! reason, nothing is stored, and the rejection is counted.

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use mindoo_replica::config::RawNamespace;
use mindoo_replica::entry::PutOutcome;
use mindoo_replica::entry::{Entry, Envelope, Namespace, RejectReason};
use mindoo_replica::fixtures::sample_entries;
use mindoo_replica::proto;
use mindoo_replica::proto::convert;
use tonic::Code;

use crate::harness::*;

async fn put_raw(
    client: &mut mindoo_replica::client::StoreClient,
    entries: Vec<proto::Entry>,
) -> Result<proto::PutEntriesResponse, tonic::Status> {
    let mut stream = client
        .raw()
        .put_entries(futures::stream::iter([proto::PutEntriesRequest {
            entries,
            ..Default::default()
        }]))
        .await?
        .into_inner();
    Ok(stream.message().await?.expect("one response per batch"))
}

fn wire(e: &Entry) -> proto::Entry {
    proto::Entry {
        id: convert::id_bytes(&e.id),
        data: e.data().clone(),
    }
}

fn reason(o: &PutOutcome) -> Option<RejectReason> {
    match o {
        PutOutcome::Rejected(r) => Some(r.reason),
        _ => None,
    }
}

#[tokio::test]
async fn malformed_entries_are_rejected_counted_and_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| c.limits.max_entry_bytes = 4096).await;
    let mut client = replica.client().await;
    let good = entries(1).remove(0);
    let mut flipped = good.data().to_vec();
    let at = flipped.len() - 80;
    flipped[at] ^= 0xff;
    let big = sample_entries(&ns(), &author(), 1, 5000).remove(0);
    let cases: Vec<(proto::Entry, RejectReason, &str)> = vec![
        (
            proto::Entry {
                id: Bytes::from_static(&[0; 32]),
                data: good.data().clone(),
            },
            RejectReason::IdMismatch,
            "hashes to",
        ),
        (
            proto::Entry {
                id: convert::id_bytes(&good.id),
                data: flipped.into(),
            },
            RejectReason::IdMismatch,
            "hashes to",
        ),
        (
            proto::Entry {
                id: Bytes::from_static(&[0; 5]),
                data: good.data().clone(),
            },
            RejectReason::Malformed,
            "32 bytes",
        ),
        (
            proto::Entry {
                id: convert::id_bytes(&good.id),
                data: good.data().slice(..40),
            },
            RejectReason::Malformed,
            "truncated",
        ),
        (
            proto::Entry {
                id: convert::id_bytes(&good.id),
                data: Bytes::new(),
            },
            RejectReason::Malformed,
            "truncated",
        ),
        (wire(&big), RejectReason::TooLarge, "limit is 4096"),
    ];
    for (entry, expected, detail) in cases {
        let resp = put_raw(&mut client, vec![entry]).await.unwrap();
        assert_eq!(resp.status, [proto::PutStatus::Rejected as i32]);
        let r = &resp.rejections[0];
        assert_eq!(
            convert::reject_reason_from_proto(r.reason()),
            Some(expected)
        );
        assert!(r.detail.contains(detail), "{:?} lacks {detail:?}", r.detail);
    }
    // A good entry in the same batch as a bad one is still stored.
    let resp = put_raw(
        &mut client,
        vec![
            wire(&good),
            proto::Entry {
                id: Bytes::from_static(&[0; 32]),
                data: good.data().clone(),
            },
        ],
    )
    .await
    .unwrap();
    assert_eq!(
        resp.status,
        [
            proto::PutStatus::Stored as i32,
            proto::PutStatus::Rejected as i32
        ]
    );
    assert_eq!(resp.rejections[0].index, 1);
    assert_eq!(client.head().await.unwrap().entry_count, 1);

    let text = replica.metrics_text().await;
    let count = |r: &str| {
        metric(
            &text,
            &format!("mindoo_replica_entries_rejected_total{{reason=\"{r}\"}}"),
        )
    };
    assert_eq!(count("id_mismatch"), 3.0);
    assert_eq!(count("malformed"), 3.0);
    assert_eq!(count("too_large"), 1.0);
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn namespace_and_signature_policy() {
    let trusted = author();
    let stranger = SigningKey::from_bytes(&[7; 32]);
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| {
        c.policy.allow_unlisted = false;
        c.policy.namespaces = vec![RawNamespace {
            tenant: "acme".into(),
            db: "notes".into(),
            trusted_authors: vec![hex::encode(trusted.verifying_key().to_bytes())],
            require_signature: None,
        }];
    })
    .await;
    let mut client = replica.client().await;
    let other = Namespace::new("acme", "secret").unwrap();
    let unsigned = {
        let env = Envelope {
            namespace: ns(),
            author: trusted.verifying_key().to_bytes(),
            created_ms: 1,
            kind: "doc_change".into(),
            doc_id: vec![],
            deps: vec![],
        };
        Entry::create(env, b"ciphertext", None)
    };
    let bad_sig = forged(&ns(), &trusted);
    let batch = vec![
        sample_entries(&ns(), &trusted, 1, 64).remove(0),
        sample_entries(&ns(), &stranger, 1, 64).remove(0),
        sample_entries(&other, &trusted, 1, 64).remove(0),
        unsigned,
        bad_sig,
    ];
    let out = client.put(&batch).await.unwrap();
    let reasons: Vec<_> = out.iter().map(reason).collect();
    assert_eq!(
        reasons,
        [
            None,
            Some(RejectReason::AuthorNotTrusted),
            Some(RejectReason::NamespaceNotAllowed),
            Some(RejectReason::SignatureMissing),
            Some(RejectReason::SignatureInvalid),
        ]
    );
    assert_eq!(client.head().await.unwrap().entry_count, 1);

    // Reads of a namespace the replica does not serve.
    let err = client.missing(&other, &[batch[0].id]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("not served"), "{err}");
    // The reason crosses the wire, so a pushing peer tells it apart.
    let reason = err.metadata().get(proto::ERROR_REASON_KEY);
    assert_eq!(
        reason.and_then(|r| r.to_str().ok()),
        Some(proto::REASON_NAMESPACE_NOT_SERVED)
    );
    let err = client.get(&other, &[batch[0].id]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.metadata().get(proto::ERROR_REASON_KEY).is_some());

    let text = replica.metrics_text().await;
    for r in [
        "author_not_trusted",
        "namespace_not_allowed",
        "signature_missing",
        "signature_invalid",
    ] {
        let name = format!("mindoo_replica_entries_rejected_total{{reason=\"{r}\"}}");
        assert_eq!(metric(&text, &name), 1.0, "{r}");
    }
    replica.stop().await.unwrap();
}

/// An entry of `key` in `ns` with its signature's last byte flipped.
fn forged(ns: &Namespace, key: &SigningKey) -> Entry {
    let e = sample_entries(ns, key, 1, 64).remove(0);
    let mut data = e.data().to_vec();
    let last = data.len() - 1;
    data[last] ^= 1;
    Entry::parse(data.into()).unwrap()
}

#[tokio::test]
async fn a_replica_checks_signatures_by_default_and_a_namespace_can_opt_out() {
    let dir = tempfile::tempdir().unwrap();
    let lax = Namespace::new("acme", "lax").unwrap();
    let replica = TestReplica::start(dir.path(), |c| {
        c.policy.namespaces = vec![RawNamespace {
            tenant: "acme".into(),
            db: "lax".into(),
            require_signature: Some(false),
            ..Default::default()
        }];
    })
    .await;
    let mut client = replica.client().await;
    let unsigned =
        |ns: &Namespace| mindoo_replica::fixtures::unsigned_entries(ns, 1, 1, 64).remove(0);
    let key = author();
    let batch = vec![
        sample_entries(&ns(), &key, 1, 64).remove(0),
        unsigned(&ns()),
        forged(&ns(), &key),
        unsigned(&lax),
        forged(&lax, &key),
    ];
    let out = client.put(&batch).await.unwrap();
    let reasons: Vec<_> = out.iter().map(reason).collect();
    assert_eq!(
        reasons,
        [
            None,
            Some(RejectReason::SignatureMissing),
            Some(RejectReason::SignatureInvalid),
            None,
            None,
        ]
    );
    assert_eq!(client.head().await.unwrap().entry_count, 3);
    let ids = [batch[0].id, batch[1].id, batch[2].id];
    let missing = client.missing(&ns(), &ids).await.unwrap();
    assert_eq!(
        missing,
        [batch[1].id, batch[2].id],
        "nothing refused is held"
    );
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn request_limits_are_enforced_before_work() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| {
        c.limits.max_ids_per_request = 10;
        c.limits.max_batch_entries = 5;
        c.limits.max_page = 20;
        c.limits.max_entry_bytes = 16 << 10;
        c.limits.max_message_bytes = 64 << 10;
    })
    .await;
    let mut client = replica.client().await;
    let batch = entries(6);
    let ids: Vec<_> = (0..11).map(|i| Bytes::from(vec![i as u8; 32])).collect();

    let err = client.put(&batch).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains("entries in one batch: 6"), "{err}");
    assert_eq!(client.head().await.unwrap().entry_count, 0);

    let nsp = Some(convert::namespace_to_proto(&ns()));
    let err = client
        .raw()
        .missing_ids(proto::MissingIdsRequest {
            namespace: nsp.clone(),
            ids: ids.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let err = client
        .raw()
        .get_entries(proto::GetEntriesRequest {
            namespace: nsp.clone(),
            ids,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);
    let err = client
        .raw()
        .list_ids(proto::ListIdsRequest {
            namespace: nsp.clone(),
            page_token: Bytes::new(),
            limit: 21,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted);

    // A message over the decode limit never reaches the handler.
    let huge = vec![Bytes::from(vec![0u8; 32]); 3000];
    let err = client
        .raw()
        .missing_ids(proto::MissingIdsRequest {
            namespace: nsp.clone(),
            ids: huge,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("too large"), "{err}");
    let big = sample_entries(&ns(), &author(), 5, 15_000);
    let err = client.put(&big).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err}");
    assert!(err.message().contains("too large"), "{err}");
    assert_eq!(client.head().await.unwrap().entry_count, 0);
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn malformed_request_fields_are_invalid_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut client = replica.client().await;
    let good_ns = Some(convert::namespace_to_proto(&ns()));
    let empty_tenant = Some(proto::Namespace {
        tenant: String::new(),
        db: "x".into(),
    });
    let cases = [
        (
            None,
            vec![Bytes::from_static(&[0; 32])],
            "namespace is required",
        ),
        (
            empty_tenant,
            vec![Bytes::from_static(&[0; 32])],
            "must not be empty",
        ),
        (
            good_ns.clone(),
            vec![Bytes::from_static(&[0; 31])],
            "got 31",
        ),
        (good_ns, vec![Bytes::new()], "got 0"),
    ];
    for (namespace, ids, detail) in cases {
        let err = client
            .raw()
            .missing_ids(proto::MissingIdsRequest { namespace, ids })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains(detail), "{err}");
    }
    let err = client
        .raw()
        .list_ids(proto::ListIdsRequest {
            namespace: Some(convert::namespace_to_proto(&ns())),
            page_token: Bytes::from_static(b"bogus"),
            limit: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    replica.stop().await.unwrap();
}

#[tokio::test]
async fn a_silent_put_stream_is_closed_after_the_idle_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |c| c.limits.stream_idle_timeout_ms = 200).await;
    let mut client = replica.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<proto::PutEntriesRequest>(1);
    let mut responses = client
        .raw()
        .put_entries(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    tx.send(proto::PutEntriesRequest {
        entries: vec![wire(&entries(1)[0])],
        ..Default::default()
    })
    .await
    .unwrap();
    responses.message().await.unwrap().unwrap();
    // Then nothing: the replica closes the stream, the sender stays open.
    let err = tokio::time::timeout(std::time::Duration::from_secs(5), responses.message())
        .await
        .expect("closed within 5 s")
        .unwrap_err();
    assert_eq!(err.code(), Code::DeadlineExceeded);
    assert!(err.message().contains("no batch for 200 ms"), "{err}");
    drop(tx);
    replica.stop().await.unwrap();
}

/// `Namespace` as it looks on the wire, with bytes where the API has
/// strings, so a test can send what no well-behaved client can.
#[derive(Clone, PartialEq, prost::Message)]
struct WireNamespace {
    #[prost(bytes = "vec", tag = "1")]
    tenant: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    db: Vec<u8>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct WireMissingIds {
    #[prost(message, optional, tag = "1")]
    namespace: Option<WireNamespace>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    ids: Vec<Vec<u8>>,
}

#[tokio::test]
async fn a_namespace_that_is_not_utf8_is_invalid_argument() {
    let dir = tempfile::tempdir().unwrap();
    let replica = TestReplica::start(dir.path(), |_| {}).await;
    let mut grpc = tonic::client::Grpc::new(replica.channel().await);
    grpc.ready().await.unwrap();
    let request = WireMissingIds {
        namespace: Some(WireNamespace {
            tenant: vec![0xff, 0xfe, b'a'],
            db: b"db".to_vec(),
        }),
        ids: vec![vec![0; 32]],
    };
    let err = grpc
        .unary::<_, proto::MissingIdsResponse, _>(
            tonic::Request::new(request),
            "/mindoo.replica.v1.Store/MissingIds".parse().unwrap(),
            tonic_prost::ProstCodec::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("UTF-8"), "{err:?}");
    replica.stop().await.unwrap();
}
