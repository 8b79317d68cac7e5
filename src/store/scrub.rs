//! Scrub: reads every stored entry back, a page of the log at a time, with
//! the backend's checksums verified (they cover the signature's bytes,
//! which the id does not), and checks that the store still agrees with
//! itself: each log record has a body, the body parses and hashes to the
//! record's id in the record's namespace, and the id index leads to that
//! same body. Works on any
//! [`Store`]; a body the engine cannot read (a checksum that fails) is a
//! finding for that entry, not an error of the scrub.

use std::collections::BTreeMap;

use bytes::Bytes;

use super::{LogRecord, Seq, Store, StoreError};
use crate::entry::{Entry, EntryId, Namespace};

/// An entry that is not as it was stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub seq: Seq,
    pub namespace: Namespace,
    pub id: EntryId,
    pub problem: String,
}

/// Where the periodic scrub stands, kept in the store so that a restart
/// resumes a pass and keeps its schedule (see [`Store::scrub_mark`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScrubMark {
    /// The pass under way has checked the log through `after`, and ends at
    /// `end`; none is under way when `after >= end`.
    pub after: Seq,
    pub end: Seq,
    /// When the last pass finished (unix ms; 0: never).
    pub last_pass_ms: u64,
    /// When the next pass is due (unix ms; 0: not yet drawn).
    pub due_ms: u64,
}

impl ScrubMark {
    pub fn under_way(&self) -> bool {
        self.after < self.end
    }

    /// Four u64, big-endian.
    pub fn to_bytes(self) -> [u8; 32] {
        let mut out = [0; 32];
        let fields = [self.after, self.end, self.last_pass_ms, self.due_ms];
        for (chunk, field) in out.chunks_mut(8).zip(fields) {
            chunk.copy_from_slice(&field.to_be_bytes());
        }
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, StoreError> {
        let bytes: [u8; 32] = bytes.try_into().map_err(|_| StoreError::Corrupt {
            what: "meta scrub",
            detail: format!("{} bytes, expected 32", bytes.len()),
        })?;
        let at =
            |i: usize| u64::from_be_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
        Ok(Self {
            after: at(0),
            end: at(1),
            last_pass_ms: at(2),
            due_ms: at(3),
        })
    }
}

/// What one page of a scrub found.
#[derive(Debug, Clone, Default)]
pub struct ScrubPage {
    /// Log records checked.
    pub checked: u64,
    /// Entry bytes read.
    pub bytes: u64,
    pub findings: Vec<Finding>,
    /// Where the next page starts; `None` at the end of the log.
    pub next: Option<Seq>,
}

/// What a scrub of the whole log found.
#[derive(Debug, Clone, Default)]
pub struct ScrubTotals {
    pub checked: u64,
    pub bytes: u64,
    pub findings: Vec<Finding>,
}

/// Checks the whole log, `page` records at a time, handing each finding
/// to `found` as it turns up.
pub fn scrub_all(
    store: &dyn Store,
    page: usize,
    mut found: impl FnMut(&Finding),
) -> Result<ScrubTotals, StoreError> {
    let (mut after, mut totals) = (0, ScrubTotals::default());
    loop {
        let next = scrub_page(store, after, Seq::MAX, page)?;
        totals.checked += next.checked;
        totals.bytes += next.bytes;
        next.findings.iter().for_each(&mut found);
        totals.findings.extend(next.findings);
        match next.next {
            Some(seq) => after = seq,
            None => return Ok(totals),
        }
    }
}

/// Checks up to `limit` log records after `after`, through `through`.
pub fn scrub_page(
    store: &dyn Store,
    after: Seq,
    through: Seq,
    limit: usize,
) -> Result<ScrubPage, StoreError> {
    let mut records = store.log_since(after, limit.max(1), None)?;
    records.retain(|r| r.seq <= through);
    let Some(last) = records.last().map(|r| r.seq) else {
        return Ok(ScrubPage::default());
    };
    let seqs: Vec<Seq> = records.iter().map(|r| r.seq).collect();
    let logged = read_each(&seqs, |some| store.read_back(some));
    let indexed = read_indexed(store, &records);
    let mut page = ScrubPage {
        checked: records.len() as u64,
        next: Some(last),
        ..ScrubPage::default()
    };
    for ((record, body), by_id) in records.into_iter().zip(logged).zip(indexed) {
        let problem = match (body, by_id) {
            (Err(e), _) => Some(format!("its body cannot be read: {e}")),
            (Ok(None), _) => Some("the log names it, but no body is held".to_owned()),
            (Ok(Some(data)), by_id) => {
                page.bytes += data.len() as u64;
                check(&record, &data, by_id)
            }
        };
        if let Some(problem) = problem {
            page.findings.push(Finding {
                seq: record.seq,
                namespace: record.namespace,
                id: record.id,
                problem,
            });
        }
    }
    Ok(page)
}

/// What is wrong with `data`, logged as `record`, which the id index
/// resolves to `by_id`; `None` when nothing is.
fn check(
    record: &LogRecord,
    data: &Bytes,
    by_id: Result<Option<Bytes>, StoreError>,
) -> Option<String> {
    let entry = match Entry::parse(data.clone()) {
        Ok(entry) => entry,
        Err(e) => return Some(format!("its bytes no longer parse: {e}")),
    };
    if entry.id != record.id {
        return Some(format!("its bytes hash to {}, not to its id", entry.id));
    }
    if entry.namespace() != &record.namespace {
        return Some(format!(
            "its bytes name namespace {}, the log {}",
            entry.namespace(),
            record.namespace
        ));
    }
    match by_id {
        Err(e) => Some(format!("the id index cannot be read: {e}")),
        Ok(None) => Some("the id index does not hold it".to_owned()),
        Ok(Some(other)) if other != *data => {
            Some("the id index leads to other bytes than the log".to_owned())
        }
        Ok(Some(_)) => None,
    }
}

/// `read` of all of `keys` at once, or, when that fails, of each alone, so
/// that one unreadable body costs only its own entry.
fn read_each<K: Clone>(
    keys: &[K],
    read: impl Fn(&[K]) -> Result<Vec<Option<Bytes>>, StoreError>,
) -> Vec<Result<Option<Bytes>, StoreError>> {
    match read(keys) {
        Ok(all) => all.into_iter().map(Ok).collect(),
        Err(_) => keys
            .iter()
            .map(|k| read(std::slice::from_ref(k)).map(|mut one| one.pop().flatten()))
            .collect(),
    }
}

/// Each record's body as the id index finds it, a namespace at a time.
fn read_indexed(
    store: &dyn Store,
    records: &[LogRecord],
) -> Vec<Result<Option<Bytes>, StoreError>> {
    let mut by_namespace: BTreeMap<&Namespace, Vec<usize>> = BTreeMap::new();
    for (i, r) in records.iter().enumerate() {
        by_namespace.entry(&r.namespace).or_default().push(i);
    }
    let mut out: Vec<Option<Result<Option<Bytes>, StoreError>>> =
        (0..records.len()).map(|_| None).collect();
    for (ns, at) in by_namespace {
        let ids: Vec<EntryId> = at.iter().map(|&i| records[i].id).collect();
        for (i, body) in at
            .into_iter()
            .zip(read_each(&ids, |some| store.get(ns, some)))
        {
            out[i] = Some(body);
        }
    }
    out.into_iter()
        .map(|b| b.expect("every record is in one namespace"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::conformance::entry_with;
    use crate::store::memory::MemoryStore;

    #[test]
    fn a_sound_store_has_no_findings_and_every_record_is_checked() {
        let store = MemoryStore::new();
        let spaces = [
            Namespace::new("t", "a").unwrap(),
            Namespace::new("t", "b").unwrap(),
        ];
        let batch: Vec<_> = (0..250)
            .map(|i| entry_with(&spaces[i as usize % 2], i, &[i as u8; 100]))
            .collect();
        store.append(&batch, None).unwrap();
        let totals = scrub_all(&store, 100, |_| {}).unwrap();
        assert!(totals.findings.is_empty(), "{:?}", totals.findings);
        assert_eq!(totals.checked, 250);
    }
}
