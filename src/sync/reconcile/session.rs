//! One side of a reconciliation session: answers the other side's round
//! with its own, over the local store's range fingerprints.
//!
//! The initiator opens with the fingerprint of everything in scope. Each
//! side answers each part: an equal fingerprint ends its range; a range
//! one side holds few entries of is answered with those entries' `k`; a
//! larger one splits (namespaces into groups, a namespace into 256 or 16
//! cells of its ids). Whatever a comparison of entries finds is final:
//! the initiator records what it lacks (`need`) and what the responder
//! lacks (`give`), and moves both once the rounds end.

use std::collections::{BTreeMap, HashSet};

use super::message::{Cell, MAX_NIBBLES, Part, Range};
use crate::entry::{EntryId, Namespace};
use crate::error::{Error, Result};
use crate::store::Store;
use crate::store::ranges::{Fingerprint, KeyRange, Ranges, Scope, prefix_end};

/// A range with at most this many entries on one side is answered with
/// its entries rather than split.
pub const LEAF_ITEMS: u64 = 32;
/// Rounds one side answers in a session, at most.
pub const MAX_ROUNDS: u32 = 64;
/// A range is split in at most this many groups of namespaces.
const SPAN_FANOUT: usize = 16;
/// A cell with more entries than this splits in 256, else in 16.
const WIDE_SPLIT_ABOVE: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Initiator,
    Responder,
}

/// Bounds on what one session may find and hold.
#[derive(Debug, Clone, Copy)]
pub struct SessionLimits {
    /// Differences recorded, both ways together; beyond them the session
    /// is `truncated` and the next one finds the rest.
    pub max_differences: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_differences: 200_000,
        }
    }
}

/// The state of one side of a session between rounds. It holds no store:
/// each round is answered against the store it is given, on the blocking
/// pool.
#[derive(Debug)]
pub struct Session {
    role: Role,
    scope: Scope,
    limits: SessionLimits,
    /// What this side (the initiator) lacks, from the responder.
    pub need: Vec<(Namespace, EntryId)>,
    /// What the responder lacks, from this side (the initiator).
    pub give: Vec<(Namespace, EntryId)>,
    /// Differences were left unrecorded (see [`SessionLimits`]).
    pub truncated: bool,
    /// Rounds answered.
    pub rounds: u32,
}

impl Session {
    pub fn new(role: Role, scope: Scope, limits: SessionLimits) -> Self {
        Self {
            role,
            scope,
            limits,
            need: Vec::new(),
            give: Vec::new(),
            truncated: false,
            rounds: 0,
        }
    }

    /// The initiator's first round: its fingerprint of everything in scope.
    pub fn open<S: Store + ?Sized>(&mut self, store: &S) -> Result<Vec<Part>> {
        let r = ranges(store)?;
        let all = Range::all();
        let fp = r.fingerprint(&all.keys(), &self.scope)?;
        let mut out = Vec::new();
        match fp.count <= LEAF_ITEMS {
            true => self.offer(&r, all, fp, &mut out)?,
            // Equal sets end here, after one fingerprint each way.
            false => out.push(Part::Fingerprint { range: all, fp }),
        }
        Ok(out)
    }

    /// This side's answer to the other side's round; empty when it has
    /// nothing more to say.
    pub fn answer<S: Store + ?Sized>(
        &mut self,
        store: &S,
        incoming: Vec<Part>,
    ) -> Result<Vec<Part>> {
        let r = ranges(store)?;
        self.rounds += 1;
        if self.rounds > MAX_ROUNDS {
            return Err(Error::LimitExceeded {
                what: "reconcile rounds in one session",
                got: self.rounds as usize,
                limit: MAX_ROUNDS as usize,
            });
        }
        let mut out = Vec::new();
        for part in incoming {
            match part {
                Part::Fingerprint { range, fp } => self.on_fingerprint(&r, range, fp, &mut out)?,
                Part::Split { cell, bits, fps } => {
                    if !matches!(bits, 4 | 8) || fps.len() != 1 << bits {
                        return Err(protocol(format!(
                            "a split in {} parts of {bits} bits",
                            fps.len()
                        )));
                    }
                    if cell.nibbles + bits / 4 > MAX_NIBBLES {
                        return Err(protocol("a split below a whole id".into()));
                    }
                    for (i, fp) in fps.into_iter().enumerate() {
                        let range = Range::Cell(cell.child(i, bits));
                        self.on_fingerprint(&r, range, fp, &mut out)?;
                    }
                }
                Part::Items { range, keys } => self.on_items(&r, range, keys, &mut out)?,
                Part::Want { range, keys } => {
                    self.check(&r, &range)?;
                    let wanted: HashSet<u64> = keys.into_iter().collect();
                    let mine = r.items(&range.keys(), &self.scope, usize::MAX)?;
                    let found = mine.into_iter().filter(|(_, _, k)| wanted.contains(k));
                    self.lacked_by_other(found.map(|(n, i, _)| (n, i)).collect(), &mut out);
                }
                Part::Have { ns, ids } => {
                    if self.role != Role::Initiator {
                        return Err(protocol("a responder was told what it lacks".into()));
                    }
                    if !self.scope.covers(&crate::store::ranges::ns_key(&ns)) {
                        return Err(protocol(format!("entries offered in {ns}, outside scope")));
                    }
                    for id in ids {
                        self.record_need(ns.clone(), id);
                    }
                }
            }
        }
        Ok(out)
    }

    fn differences(&self) -> usize {
        self.need.len() + self.give.len()
    }

    fn record_need(&mut self, ns: Namespace, id: EntryId) {
        match self.differences() < self.limits.max_differences {
            true => self.need.push((ns, id)),
            false => self.truncated = true,
        }
    }

    /// Entries of this side the other lacks: recorded (initiator) or
    /// offered (responder).
    fn lacked_by_other(&mut self, entries: Vec<(Namespace, EntryId)>, out: &mut Vec<Part>) {
        let room = self
            .limits
            .max_differences
            .saturating_sub(self.differences());
        if entries.len() > room {
            self.truncated = true;
        }
        let entries = entries.into_iter().take(room);
        match self.role {
            Role::Initiator => self.give.extend(entries),
            Role::Responder => {
                let mut by_ns: BTreeMap<Namespace, Vec<EntryId>> = BTreeMap::new();
                for (ns, id) in entries {
                    by_ns.entry(ns).or_default().push(id);
                }
                out.extend(by_ns.into_iter().map(|(ns, ids)| Part::Have { ns, ids }));
            }
        }
    }

    /// Refuses a range that is outside scope or cuts a namespace.
    fn check<S: Store + ?Sized>(&self, r: &Ranges<'_, S>, range: &Range) -> Result<()> {
        match range {
            Range::Cell(cell) => {
                cell.check()?;
                if !self.scope.covers(&crate::store::ranges::ns_key(&cell.ns)) {
                    return Err(protocol(format!("a cell of {}, outside scope", cell.ns)));
                }
            }
            Range::Span { lo, hi } => {
                let cut = std::iter::once(lo.as_slice()).chain(hi.as_deref());
                if cut.into_iter().any(|b| r.cuts(b)) {
                    return Err(protocol("a span that cuts a namespace".into()));
                }
            }
        }
        Ok(())
    }

    fn on_fingerprint<S: Store + ?Sized>(
        &mut self,
        r: &Ranges<'_, S>,
        range: Range,
        theirs: Fingerprint,
        out: &mut Vec<Part>,
    ) -> Result<()> {
        self.check(r, &range)?;
        let mine = r.fingerprint(&range.keys(), &self.scope)?;
        if mine == theirs {
            return Ok(());
        }
        if theirs.count == 0 {
            let all = self.listing(r, &range)?;
            self.lacked_by_other(all, out);
            return Ok(());
        }
        self.offer(r, range, mine, out)
    }

    /// What this side says of a range whose fingerprint (`mine`) differs
    /// or is not yet known to the other: its entries, or a split.
    fn offer<S: Store + ?Sized>(
        &mut self,
        r: &Ranges<'_, S>,
        range: Range,
        mine: Fingerprint,
        out: &mut Vec<Part>,
    ) -> Result<()> {
        if mine.count <= LEAF_ITEMS {
            let keys = r
                .items(&range.keys(), &self.scope, LEAF_ITEMS as usize)?
                .into_iter()
                .map(|(_, _, k)| k)
                .collect();
            out.push(Part::Items { range, keys });
            return Ok(());
        }
        match range {
            Range::Cell(cell) => out.push(self.split_cell(r, cell, mine)?),
            Range::Span { lo, hi } => self.split_span(r, lo, hi, out)?,
        }
        Ok(())
    }

    fn split_cell<S: Store + ?Sized>(
        &self,
        r: &Ranges<'_, S>,
        cell: Cell,
        mine: Fingerprint,
    ) -> Result<Part> {
        let bits = match mine.count > WIDE_SPLIT_ABOVE && cell.nibbles + 2 <= MAX_NIBBLES {
            true => 8,
            false => 4,
        };
        let fps = (0..1usize << bits)
            .map(|i| r.fingerprint(&cell.child(i, bits).keys(), &self.scope))
            .collect::<std::result::Result<_, _>>()?;
        Ok(Part::Split { cell, bits, fps })
    }

    /// A span of several namespaces splits into groups of about equal
    /// entries; a span of one splits that namespace into cells, and says
    /// it holds nothing around it.
    fn split_span<S: Store + ?Sized>(
        &self,
        r: &Ranges<'_, S>,
        lo: Vec<u8>,
        hi: Option<Vec<u8>>,
        out: &mut Vec<Part>,
    ) -> Result<()> {
        let keys = KeyRange::new(lo.clone(), hi.clone());
        let spaces = r.spaces(&keys, &self.scope)?;
        if let [(ns, fp)] = spaces.as_slice() {
            let (namespace, _) = Namespace::decode_key(ns)
                .ok_or_else(|| protocol("a namespace key that does not decode".into()))?;
            if lo < *ns {
                out.push(Part::Fingerprint {
                    range: Range::Span {
                        lo,
                        hi: Some(ns.clone()),
                    },
                    fp: Fingerprint::default(),
                });
            }
            out.push(self.split_cell(r, Cell::whole(namespace), *fp)?);
            let end = prefix_end(ns);
            if end.is_some() && (hi.is_none() || end < hi) {
                out.push(Part::Fingerprint {
                    range: Range::Span {
                        lo: end.unwrap_or_default(),
                        hi,
                    },
                    fp: Fingerprint::default(),
                });
            }
            return Ok(());
        }
        let total: u64 = spaces.iter().map(|(_, fp)| fp.count).sum();
        let per_group = total.div_ceil(SPAN_FANOUT as u64).max(1);
        let mut groups: Vec<(Vec<u8>, Fingerprint)> = Vec::new();
        let mut filled = 0u64;
        for (ns, fp) in spaces {
            let full = groups.len() == SPAN_FANOUT;
            match groups.last_mut() {
                Some((_, g)) if filled + fp.count <= per_group || full => {
                    g.merge(fp);
                    filled += fp.count;
                }
                _ => {
                    groups.push((ns, fp));
                    filled = fp.count;
                }
            }
        }
        let n = groups.len();
        for i in 0..n {
            let from = match i {
                0 => lo.clone(),
                _ => groups[i].0.clone(),
            };
            let to = match i + 1 < n {
                true => Some(groups[i + 1].0.clone()),
                false => hi.clone(),
            };
            out.push(Part::Fingerprint {
                range: Range::Span { lo: from, hi: to },
                fp: groups[i].1,
            });
        }
        Ok(())
    }

    fn on_items<S: Store + ?Sized>(
        &mut self,
        r: &Ranges<'_, S>,
        range: Range,
        theirs: Vec<u64>,
        out: &mut Vec<Part>,
    ) -> Result<()> {
        self.check(r, &range)?;
        if theirs.len() as u64 > LEAF_ITEMS {
            return Err(protocol(format!(
                "{} entries listed for one range, over {LEAF_ITEMS}",
                theirs.len()
            )));
        }
        let limit = self.limits.max_differences + theirs.len();
        let mine = r.items(&range.keys(), &self.scope, limit)?;
        let theirs_set: HashSet<u64> = theirs.iter().copied().collect();
        let my_keys: HashSet<u64> = mine.iter().map(|(_, _, k)| *k).collect();
        let only_mine = mine
            .into_iter()
            .filter(|(_, _, k)| !theirs_set.contains(k))
            .map(|(n, i, _)| (n, i))
            .collect();
        self.lacked_by_other(only_mine, out);
        let only_theirs: Vec<u64> = theirs
            .into_iter()
            .filter(|k| !my_keys.contains(k))
            .collect();
        if !only_theirs.is_empty() {
            out.push(Part::Want {
                range,
                keys: only_theirs,
            });
        }
        Ok(())
    }

    /// All of this side's entries in a range, up to what may be recorded.
    fn listing<S: Store + ?Sized>(
        &self,
        r: &Ranges<'_, S>,
        range: &Range,
    ) -> Result<Vec<(Namespace, EntryId)>> {
        let room = self
            .limits
            .max_differences
            .saturating_sub(self.differences());
        let items = r.items(&range.keys(), &self.scope, room + 1)?;
        Ok(items.into_iter().map(|(n, i, _)| (n, i)).collect())
    }
}

fn ranges<S: Store + ?Sized>(store: &S) -> Result<Ranges<'_, S>> {
    Ranges::of(store).ok_or(Error::Store(crate::store::StoreError::Unsupported(
        "this replica keeps no range fingerprints: set replication.fingerprint_key (or \
         fingerprint_key_file), the same on every replica",
    )))
}

fn protocol(what: String) -> Error {
    Error::InvalidArgument(format!("malformed reconcile round: {what}"))
}
