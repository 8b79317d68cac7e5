//! Conversions between protobuf messages and domain types. Every request field
//! is validated here, before a handler does any work.

use bytes::Bytes;

use crate::entry::{EntryId, Namespace, RejectReason};
use crate::error::{Error, Result};
use crate::proto;
use crate::replica::{PutOutcome, Replica};
use crate::store::{Incarnation, PeerCursor};

pub fn namespace(ns: Option<proto::Namespace>) -> Result<Namespace> {
    let ns = ns.ok_or_else(|| Error::InvalidArgument("namespace is required".into()))?;
    Ok(Namespace::new(ns.tenant, ns.db)?)
}

pub fn namespace_to_proto(ns: &Namespace) -> proto::Namespace {
    proto::Namespace {
        tenant: ns.tenant().to_owned(),
        db: ns.db().to_owned(),
    }
}

/// Parses a list of ids, refusing more than `limit` of them.
pub fn ids(ids: Vec<Bytes>, limit: usize) -> Result<Vec<EntryId>> {
    Replica::check_count("ids in one request", ids.len(), limit)?;
    ids.iter()
        .map(|id| EntryId::from_slice(id).map_err(Error::from))
        .collect()
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
        Error::InvalidArgument(format!(
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

pub fn put_entries(req: proto::PutEntriesRequest) -> Vec<(Bytes, Bytes)> {
    req.entries.into_iter().map(|e| (e.id, e.data)).collect()
}

pub fn put_response(outcomes: Vec<PutOutcome>, head_seq: u64) -> proto::PutEntriesResponse {
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
