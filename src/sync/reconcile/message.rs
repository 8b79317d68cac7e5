//! What a reconciliation round carries, in domain types: ranges of the key
//! order (`ns ‖ id`, see [`crate::store::ranges`]) and what one side says
//! about each.

use crate::entry::{EntryId, ID_LEN, Namespace};
use crate::error::{Error, Result};
use crate::store::ranges::{Fingerprint, KeyRange, ns_key, prefix_end};

/// A range both sides compute over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Range {
    /// Keys in `[lo, hi)` (`hi: None`: to the end): whole namespaces.
    Span { lo: Vec<u8>, hi: Option<Vec<u8>> },
    /// The ids of one namespace that start with a run of hex digits.
    Cell(Cell),
}

impl Range {
    pub fn all() -> Self {
        Self::Span {
            lo: Vec::new(),
            hi: None,
        }
    }

    pub fn keys(&self) -> KeyRange {
        match self {
            Self::Span { lo, hi } => KeyRange::new(lo.clone(), hi.clone()),
            Self::Cell(c) => c.keys(),
        }
    }
}

/// The ids of `ns` whose first `nibbles` hex digits are those of `prefix`
/// (`(nibbles + 1) / 2` bytes; an odd last digit is the high half of the
/// last byte, its low half zero).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cell {
    pub ns: Namespace,
    pub prefix: Vec<u8>,
    pub nibbles: u8,
}

/// The most hex digits a cell names: a whole id.
pub const MAX_NIBBLES: u8 = (ID_LEN * 2) as u8;

impl Cell {
    /// The whole namespace.
    pub fn whole(ns: Namespace) -> Self {
        Self {
            ns,
            prefix: Vec::new(),
            nibbles: 0,
        }
    }

    /// Checks the shape of a cell a peer sent.
    pub fn check(&self) -> Result<()> {
        let bytes = usize::from(self.nibbles).div_ceil(2);
        let odd_tail = self.nibbles % 2 == 1 && self.prefix.last().is_some_and(|b| b & 0x0F != 0);
        if self.nibbles > MAX_NIBBLES || self.prefix.len() != bytes || odd_tail {
            return Err(Error::InvalidArgument(format!(
                "a reconcile cell of {} hex digits has a prefix of {} bytes that does not fit it",
                self.nibbles,
                self.prefix.len()
            )));
        }
        Ok(())
    }

    fn digits(&self) -> Vec<u8> {
        (0..usize::from(self.nibbles))
            .map(|i| match i % 2 {
                0 => self.prefix[i / 2] >> 4,
                _ => self.prefix[i / 2] & 0x0F,
            })
            .collect()
    }

    fn from_digits(ns: Namespace, digits: &[u8]) -> Self {
        let prefix = digits
            .chunks(2)
            .map(|p| (p[0] << 4) | p.get(1).copied().unwrap_or(0))
            .collect();
        Self {
            ns,
            prefix,
            nibbles: digits.len() as u8,
        }
    }

    /// Child `i` of `2^bits` (`bits` a multiple of 4).
    pub fn child(&self, i: usize, bits: u8) -> Self {
        let mut digits = self.digits();
        for shift in (0..bits / 4).rev() {
            digits.push(((i >> (4 * shift)) & 0x0F) as u8);
        }
        Self::from_digits(self.ns.clone(), &digits)
    }

    pub fn keys(&self) -> KeyRange {
        let ns = ns_key(&self.ns);
        let lo = [ns.as_slice(), &self.prefix].concat();
        let mut digits = self.digits();
        // The next cell of the same length, if the digits do not all carry.
        while let Some(d) = digits.pop() {
            if d < 0x0F {
                digits.push(d + 1);
                let next = Self::from_digits(self.ns.clone(), &digits);
                return KeyRange::new(lo, Some([ns.as_slice(), &next.prefix].concat()));
            }
        }
        KeyRange::new(lo, prefix_end(&ns))
    }
}

/// What one side says of a range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// "This is my fingerprint of the range."
    Fingerprint { range: Range, fp: Fingerprint },
    /// "`cell` in `2^bits` equal children: my fingerprint of each."
    Split {
        cell: Cell,
        bits: u8,
        fps: Vec<Fingerprint>,
    },
    /// "These are all my entries in the range, by `k`."
    Items { range: Range, keys: Vec<u64> },
    /// "I hold these and you do not." Only the responder says it: the
    /// initiator moves the bodies both ways.
    Have { ns: Namespace, ids: Vec<EntryId> },
    /// "I lack your entries with these `k` in the range."
    Want { range: Range, keys: Vec<u64> },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_tile_their_parent_in_key_order() {
        let ns = Namespace::new("t", "d").unwrap();
        let root = Cell::whole(ns.clone());
        let parent_keys = root.keys();
        let kids: Vec<Cell> = (0..256).map(|i| root.child(i, 8)).collect();
        // The same place in the key order: the first id is above both.
        assert_eq!(
            kids[0].keys().lo,
            [parent_keys.lo.as_slice(), &[0]].concat()
        );
        assert_eq!(kids[255].keys().hi, parent_keys.hi);
        for pair in kids.windows(2) {
            assert_eq!(pair[0].keys().hi.as_ref(), Some(&pair[1].keys().lo));
        }
        let odd = kids[0xAB].child(0xC, 4);
        assert_eq!(odd.nibbles, 3);
        assert_eq!(odd.prefix, vec![0xAB, 0xC0]);
        odd.check().unwrap();
        assert_eq!(odd.keys().hi.unwrap()[ns_key(&ns).len()..], [0xAB, 0xD0]);
        let bad = Cell {
            prefix: vec![0xAB, 0xC1],
            ..odd
        };
        assert!(bad.check().is_err());
    }
}
