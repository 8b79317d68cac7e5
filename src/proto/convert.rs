//! Conversions between protobuf messages and domain types. Every request field
//! is validated here, before a handler does any work. Shared by the server's
//! handlers and the clients; it knows neither, and its errors are its own.

use std::time::Duration;

use bytes::Bytes;

use crate::entry::PutOutcome;
use crate::entry::{
    Entry, EntryId, InvalidId, InvalidNamespace, Namespace, RejectReason, Rejection,
};
use crate::log::Head;
use crate::log::{EntryChunk, FollowRequest, LogBatch, MAX_RELAY_DELAY, WriteConcern};
use crate::proto;
use crate::store::{Incarnation, LogRecord, PeerCursor};

/// Why a message does not convert.
#[derive(Debug, thiserror::Error)]
pub enum Invalid {
    #[error("{0}")]
    Field(String),
    #[error(transparent)]
    Id(#[from] InvalidId),
    #[error(transparent)]
    Namespace(#[from] InvalidNamespace),
    /// A list over its limit, refused before anything is allocated for it.
    #[error("{what}: {got} is over the limit of {limit}")]
    TooMany {
        what: &'static str,
        got: usize,
        limit: usize,
    },
}

type Result<T, E = Invalid> = std::result::Result<T, E>;

pub fn namespace(ns: Option<proto::Namespace>) -> Result<Namespace> {
    let ns = ns.ok_or_else(|| Invalid::Field("namespace is required".into()))?;
    Ok(Namespace::new(ns.tenant, ns.db)?)
}

pub fn namespace_to_proto(ns: &Namespace) -> proto::Namespace {
    proto::Namespace {
        tenant: ns.tenant().to_owned(),
        db: ns.db().to_owned(),
    }
}

/// Parses a list of ids, refusing more than `limit` of them. An id named
/// twice is kept once (first place), so nothing is answered twice.
pub fn ids(ids: Vec<Bytes>, limit: usize) -> Result<Vec<EntryId>> {
    if ids.len() > limit {
        return Err(Invalid::TooMany {
            what: "ids in one request",
            got: ids.len(),
            limit,
        });
    }
    let mut seen = std::collections::HashSet::with_capacity(ids.len());
    let mut out = Vec::with_capacity(ids.len());
    for id in &ids {
        let id = EntryId::from_slice(id)?;
        if seen.insert(id) {
            out.push(id);
        }
    }
    Ok(out)
}

pub fn id_bytes(id: &EntryId) -> Bytes {
    Bytes::copy_from_slice(&id.0)
}

/// The zero cursor (or none) means the start of the log.
pub fn cursor(c: Option<proto::Cursor>) -> Result<Option<PeerCursor>> {
    let Some(c) = c else { return Ok(None) };
    if c.incarnation.is_empty() && c.seq == 0 && c.id_at_seq.is_empty() {
        return Ok(None);
    }
    let incarnation = c.incarnation.as_ref().try_into().map_err(|_| {
        Invalid::Field(format!(
            "cursor incarnation is 16 bytes, got {}",
            c.incarnation.len()
        ))
    })?;
    let id_at_seq = match (c.seq, c.id_at_seq.is_empty()) {
        (0, true) => EntryId([0; 32]),
        _ => EntryId::from_slice(&c.id_at_seq)?,
    };
    Ok(Some(PeerCursor {
        incarnation: Incarnation(incarnation),
        seq: c.seq,
        id_at_seq,
    }))
}

pub fn cursor_to_proto(incarnation: Incarnation, seq: u64, id: Option<&EntryId>) -> proto::Cursor {
    proto::Cursor {
        incarnation: Bytes::copy_from_slice(&incarnation.0),
        seq,
        id_at_seq: id.map(id_bytes).unwrap_or_default(),
    }
}

/// A batch's entries as `(claimed id, data)`, and its write concern.
pub fn put_entries(req: proto::PutEntriesRequest) -> Result<(Vec<(Bytes, Bytes)>, WriteConcern)> {
    let timeout = match req.confirm_timeout_ms {
        0 => WriteConcern::DEFAULT_TIMEOUT,
        ms => Duration::from_millis(ms.into()),
    };
    if timeout > WriteConcern::MAX_TIMEOUT {
        return Err(Invalid::Field(format!(
            "confirm_timeout_ms {} is above the most a write may wait, {} ms",
            req.confirm_timeout_ms,
            WriteConcern::MAX_TIMEOUT.as_millis()
        )));
    }
    let entries = req.entries.into_iter().map(|e| (e.id, e.data)).collect();
    Ok((entries, WriteConcern::replicas(req.min_replicas, timeout)))
}

pub fn put_response(
    outcomes: Vec<PutOutcome>,
    head_seq: u64,
    replicas: u32,
) -> proto::PutEntriesResponse {
    let mut status = Vec::with_capacity(outcomes.len());
    let mut rejections = Vec::new();
    for (index, outcome) in outcomes.into_iter().enumerate() {
        let s = match outcome {
            PutOutcome::Stored => proto::PutStatus::Stored,
            PutOutcome::Duplicate => proto::PutStatus::Duplicate,
            PutOutcome::Rejected(r) => {
                rejections.push(proto::Rejection {
                    index: index as u32,
                    reason: reject_reason_to_proto(r.reason) as i32,
                    detail: r.detail,
                });
                proto::PutStatus::Rejected
            }
        };
        status.push(s as i32);
    }
    proto::PutEntriesResponse {
        status,
        rejections,
        head_seq,
        replicas,
    }
}

pub fn reject_reason_to_proto(r: RejectReason) -> proto::RejectReason {
    use proto::RejectReason as P;
    match r {
        RejectReason::IdMismatch => P::IdMismatch,
        RejectReason::Malformed => P::Malformed,
        RejectReason::TooLarge => P::TooLarge,
        RejectReason::NamespaceNotAllowed => P::NamespaceNotAllowed,
        RejectReason::SignatureMissing => P::SignatureMissing,
        RejectReason::SignatureInvalid => P::SignatureInvalid,
        RejectReason::AuthorNotTrusted => P::AuthorNotTrusted,
    }
}

pub fn reject_reason_from_proto(r: proto::RejectReason) -> Option<RejectReason> {
    RejectReason::ALL
        .into_iter()
        .find(|&reason| reject_reason_to_proto(reason) == r)
}

pub fn head_to_proto(h: &Head) -> proto::HeadResponse {
    proto::HeadResponse {
        incarnation: Bytes::copy_from_slice(&h.incarnation.0),
        head_seq: h.head_seq,
        entry_count: h.entry_count,
        // A head whose log record is gone (lost on disk) has no cursor
        // there: the start of the log stands in.
        cursor: Some(match &h.head_id {
            Some(id) => cursor_to_proto(h.incarnation, h.head_seq, Some(id)),
            None => cursor_to_proto(h.incarnation, 0, None),
        }),
        node: h.node.clone(),
        instance: Bytes::copy_from_slice(&h.instance),
        max_ids_per_request: h.max_ids_per_request.min(u32::MAX as usize) as u32,
        max_message_bytes: h.max_message_bytes as u64,
        features: match h.reconcile_key {
            Some(_) => vec![FEATURE_RECONCILE.to_owned()],
            None => Vec::new(),
        },
        fingerprint_key_check: h.reconcile_key.unwrap_or_default(),
        pulls: h.pulls.iter().map(namespace_to_proto).collect(),
    }
}

/// What a head names when the replica answers `Reconcile`.
pub const FEATURE_RECONCILE: &str = "reconcile";

/// A head as a replica sent it. Replicas from before node identities and
/// limits were announced send none: the node is then unknown (empty), and
/// the limits default to the smallest valid ones.
pub fn head(h: proto::HeadResponse) -> Result<Head> {
    let incarnation = h.incarnation.as_ref().try_into().map_err(|_| {
        Invalid::Field(format!(
            "head incarnation is 16 bytes, got {}",
            h.incarnation.len()
        ))
    })?;
    let instance = match h.instance.len() {
        0 => [0; 16],
        _ => h.instance.as_ref().try_into().map_err(|_| {
            Invalid::Field(format!(
                "head instance is 16 bytes, got {}",
                h.instance.len()
            ))
        })?,
    };
    let head_id = match cursor(h.cursor)? {
        Some(c) if c.seq > 0 => Some(c.id_at_seq),
        _ => None,
    };
    Ok(Head {
        node: h.node,
        instance,
        incarnation: Incarnation(incarnation),
        head_seq: h.head_seq,
        head_id,
        entry_count: h.entry_count,
        max_ids_per_request: (h.max_ids_per_request as usize).max(1),
        max_message_bytes: usize::try_from(h.max_message_bytes)
            .unwrap_or(usize::MAX)
            .max(64 << 10),
        reconcile_key: h
            .features
            .iter()
            .any(|f| f == FEATURE_RECONCILE)
            .then_some(h.fingerprint_key_check),
        pulls: h
            .pulls
            .into_iter()
            .map(|ns| namespace(Some(ns)))
            .collect::<Result<_>>()?,
    })
}

pub fn log_batch_to_proto(b: LogBatch) -> proto::LogBatch {
    let mut out = proto::LogBatch {
        head_seq: b.head_seq,
        confirm: b.confirm,
        next: b
            .next
            .map(|c| cursor_to_proto(c.incarnation, c.seq, Some(&c.id_at_seq))),
        ..Default::default()
    };
    let mut index: std::collections::HashMap<Namespace, u32> = Default::default();
    for r in b.records {
        let next = index.len() as u32;
        let ns = *index.entry(r.namespace.clone()).or_insert_with(|| {
            out.namespaces.push(namespace_to_proto(&r.namespace));
            next
        });
        out.records.push(proto::LogRecord {
            seq: r.seq,
            namespace: ns,
            id: id_bytes(&r.id),
            data: r.data.unwrap_or_default(),
        });
    }
    out
}

/// A log batch as a replica sent it, every field checked.
pub fn log_batch(b: proto::LogBatch) -> Result<LogBatch> {
    let namespaces = b
        .namespaces
        .into_iter()
        .map(|ns| namespace(Some(ns)))
        .collect::<Result<Vec<_>>>()?;
    let records = b
        .records
        .into_iter()
        .map(|r| {
            let namespace = namespaces
                .get(r.namespace as usize)
                .ok_or_else(|| {
                    Invalid::Field(format!(
                        "record {} names namespace #{} of {}",
                        r.seq,
                        r.namespace,
                        namespaces.len()
                    ))
                })?
                .clone();
            Ok(LogRecord {
                seq: r.seq,
                namespace,
                id: EntryId::from_slice(&r.id)?,
                data: (!r.data.is_empty()).then_some(r.data),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let next = cursor(b.next)?;
    if next.is_none() && !records.is_empty() {
        return Err(Invalid::Field(
            "a log batch with records has no cursor".into(),
        ));
    }
    Ok(LogBatch {
        records,
        next,
        head_seq: b.head_seq,
        confirm: b.confirm,
    })
}

pub fn put_request(entries: &[Entry]) -> proto::PutEntriesRequest {
    put_request_raw(entries.iter().map(|e| (e.id, e.data().clone())))
}

/// A put of `entries` that waits for `concern`.
pub fn put_request_with(entries: &[Entry], concern: WriteConcern) -> proto::PutEntriesRequest {
    with_concern(put_request(entries), concern)
}

/// `request`, waiting for `concern`; the default concern is sent as
/// nothing (the replica's default).
pub fn with_concern(
    request: proto::PutEntriesRequest,
    concern: WriteConcern,
) -> proto::PutEntriesRequest {
    if concern == WriteConcern::default() {
        return request;
    }
    proto::PutEntriesRequest {
        min_replicas: concern.replicas,
        confirm_timeout_ms: concern.timeout.as_millis().min(u32::MAX as u128) as u32,
        ..request
    }
}

/// A put of `(id, data)` pairs.
pub fn put_request_raw(
    entries: impl IntoIterator<Item = (EntryId, Bytes)>,
) -> proto::PutEntriesRequest {
    proto::PutEntriesRequest {
        entries: entries
            .into_iter()
            .map(|(id, data)| proto::Entry {
                id: id_bytes(&id),
                data,
            })
            .collect(),
        ..Default::default()
    }
}

/// The outcome of each entry of a put, from a replica's response.
pub fn put_outcomes(resp: proto::PutEntriesResponse) -> Vec<PutOutcome> {
    let mut rejections = resp.rejections.into_iter().peekable();
    resp.status
        .iter()
        .enumerate()
        .map(|(i, &s)| match proto::PutStatus::try_from(s) {
            Ok(proto::PutStatus::Stored) => PutOutcome::Stored,
            Ok(proto::PutStatus::Duplicate) => PutOutcome::Duplicate,
            _ => {
                let r = rejections.next_if(|r| r.index as usize == i);
                let reason = r
                    .as_ref()
                    .and_then(|r| proto::RejectReason::try_from(r.reason).ok())
                    .and_then(reject_reason_from_proto)
                    .unwrap_or(RejectReason::Malformed);
                let detail = r.map(|r| r.detail).unwrap_or_default();
                PutOutcome::Rejected(Rejection::new(reason, detail))
            }
        })
        .collect()
}

/// What a ScanSince or Watch asks to follow, every field checked but the
/// namespaces' number and whether they are served (the replica's to judge).
pub fn follow_request(
    from: Option<proto::Cursor>,
    with_data: bool,
    live_data: bool,
    namespaces: Vec<proto::Namespace>,
    heartbeat_ms: u32,
    relay_delay_ms: u32,
) -> Result<FollowRequest> {
    let relay_delay = std::time::Duration::from_millis(relay_delay_ms.into());
    if relay_delay > MAX_RELAY_DELAY {
        return Err(Invalid::Field(format!(
            "relay_delay_ms {relay_delay_ms} is above the maximum of {}",
            MAX_RELAY_DELAY.as_millis()
        )));
    }
    let heartbeat = match heartbeat_ms {
        0 => None,
        1..100 => {
            return Err(Invalid::Field(format!(
                "heartbeat_ms {heartbeat_ms} is below the minimum of 100"
            )));
        }
        ms => Some(std::time::Duration::from_millis(ms.into())),
    };
    let mut unique = std::collections::HashSet::new();
    let mut names = Vec::new();
    for ns in namespaces {
        let ns = namespace(Some(ns))?;
        if unique.insert(ns.clone()) {
            names.push(ns);
        }
    }
    Ok(FollowRequest {
        from: cursor(from)?,
        with_data,
        live_data,
        namespaces: names,
        heartbeat,
        relay_delay: (!relay_delay.is_zero()).then_some(relay_delay),
    })
}

/// A Watch of what `r` asks for.
pub fn watch_request(r: &FollowRequest) -> proto::WatchRequest {
    proto::WatchRequest {
        cursor: r
            .from
            .map(|c| cursor_to_proto(c.incarnation, c.seq, Some(&c.id_at_seq))),
        include_data: r.with_data,
        live_data: r.live_data,
        namespaces: r.namespaces.iter().map(namespace_to_proto).collect(),
        heartbeat_ms: r
            .heartbeat
            .map_or(0, |h| h.as_millis().clamp(100, u32::MAX as u128) as u32),
        relay_delay_ms: r
            .relay_delay
            .map_or(0, |d| d.min(MAX_RELAY_DELAY).as_millis() as u32),
    }
}

pub fn entry_chunk_to_proto(c: EntryChunk) -> proto::EntryBatch {
    proto::EntryBatch {
        entries: c
            .entries
            .into_iter()
            .map(|(id, data)| proto::Entry {
                id: id_bytes(&id),
                data,
            })
            .collect(),
        missing: c.missing.iter().map(id_bytes).collect(),
    }
}

/// Entries as a replica sent them, every id checked.
pub fn entry_chunk(b: proto::EntryBatch) -> Result<EntryChunk> {
    let entries = b
        .entries
        .into_iter()
        .map(|e| Ok((EntryId::from_slice(&e.id)?, e.data)))
        .collect::<Result<_>>()?;
    Ok(EntryChunk {
        entries,
        missing: ids(b.missing, usize::MAX)?,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::fixtures::mutations;

    fn ns() -> proto::Namespace {
        proto::Namespace {
            tenant: "acme".into(),
            db: "notes".into(),
        }
    }

    fn cursor() -> proto::Cursor {
        proto::Cursor {
            incarnation: vec![1; 16].into(),
            seq: 7,
            id_at_seq: vec![2; 32].into(),
        }
    }

    /// Decodes mutations of `valid` as a peer or client could send them,
    /// and converts each that decodes: the number that decoded.
    fn decode_mutations<M: Message + Default>(valid: &M, seed: u64, convert: impl Fn(M)) -> usize {
        let mut decoded = 0;
        for m in mutations(&valid.encode_to_vec(), seed, 5_000) {
            if let Ok(message) = M::decode(&m[..]) {
                decoded += 1;
                convert(message);
            }
        }
        decoded
    }

    /// Every message a replica takes from the network, mangled: each one
    /// decodes to an error or to values that passed every check, and
    /// nothing panics.
    #[test]
    fn mangled_messages_convert_to_an_error_or_to_checked_values() {
        let head_msg = proto::HeadResponse {
            incarnation: vec![1; 16].into(),
            head_seq: 9,
            entry_count: 9,
            cursor: Some(cursor()),
            node: "replica-1:7700".into(),
            instance: vec![3; 16].into(),
            max_ids_per_request: 10_000,
            max_message_bytes: 1 << 20,
            features: vec![FEATURE_RECONCILE.into()],
            fingerprint_key_check: 7,
            pulls: vec![ns()],
        };
        let record = proto::LogRecord {
            seq: 1,
            namespace: 0,
            id: vec![4; 32].into(),
            data: vec![5; 40].into(),
        };
        let batch = proto::LogBatch {
            namespaces: vec![ns()],
            records: vec![record.clone(), proto::LogRecord { seq: 2, ..record }],
            head_seq: 2,
            next: Some(cursor()),
            confirm: true,
        };
        let entries = proto::EntryBatch {
            entries: vec![proto::Entry {
                id: vec![4; 32].into(),
                data: vec![5; 40].into(),
            }],
            missing: vec![vec![6; 32].into()],
        };
        let put = proto::PutEntriesResponse {
            status: vec![1, 3, 2],
            rejections: vec![proto::Rejection {
                index: 1,
                reason: 2,
                detail: "malformed".into(),
            }],
            head_seq: 3,
            replicas: 2,
        };
        let watch = proto::WatchRequest {
            cursor: Some(cursor()),
            include_data: true,
            namespaces: vec![ns(), ns()],
            heartbeat_ms: 1000,
            relay_delay_ms: 10,
            live_data: true,
        };
        let wanted = proto::MissingIdsRequest {
            namespace: Some(ns()),
            ids: vec![vec![4; 32].into(), vec![7; 32].into()],
        };
        let confirm = proto::ConfirmRequest {
            node: "replica-1".into(),
            cursor: Some(cursor()),
            namespaces: vec![ns()],
        };
        let put_request = proto::PutEntriesRequest {
            entries: vec![proto::Entry {
                id: vec![4; 32].into(),
                data: vec![5; 40].into(),
            }],
            min_replicas: 2,
            confirm_timeout_ms: 700,
        };
        let decoded = [
            decode_mutations(&head_msg, 1, |h| {
                if let Ok(h) = head(h) {
                    assert!(h.cursor().is_none_or(|c| c.seq == h.head_seq));
                }
            }),
            decode_mutations(&batch, 2, |b| {
                let _ = log_batch(b);
            }),
            decode_mutations(&entries, 3, |b| {
                let _ = entry_chunk(b);
            }),
            decode_mutations(&put, 4, |r| {
                let statuses = r.status.len();
                assert_eq!(put_outcomes(r).len(), statuses, "one outcome per status");
            }),
            decode_mutations(&watch, 5, |w| {
                let _ = follow_request(
                    w.cursor,
                    w.include_data,
                    w.live_data,
                    w.namespaces,
                    w.heartbeat_ms,
                    w.relay_delay_ms,
                );
            }),
            decode_mutations(&wanted, 6, |m| {
                let _ = namespace(m.namespace);
                if let Ok(ids) = ids(m.ids, 10) {
                    assert!(ids.len() <= 10);
                }
            }),
            decode_mutations(&confirm, 7, |c| {
                let _ = super::cursor(c.cursor);
                for ns in c.namespaces {
                    let _ = namespace(Some(ns));
                }
            }),
            decode_mutations(&put_request, 8, |r| {
                if let Ok((_, concern)) = put_entries(r) {
                    assert!(concern.replicas >= 1);
                    assert!(concern.timeout <= WriteConcern::MAX_TIMEOUT);
                }
            }),
        ];
        assert!(decoded.iter().all(|&n| n > 0), "{decoded:?}");
    }
}
