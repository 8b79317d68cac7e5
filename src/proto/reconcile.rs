//! Reconciliation frames and their domain parts, both ways. Every field is
//! checked here; a round's parts are cut into frames of a bounded size.

use bytes::Bytes;
use prost::Message;

use super::convert::{Invalid, namespace, namespace_to_proto};
use crate::entry::{EntryId, Namespace};
use crate::proto;
use crate::store::ranges::Fingerprint;
use crate::sync::reconcile::{Cell, Part, Range};

/// A frame carries parts up to about this many bytes.
pub const FRAME_BYTES: usize = 256 << 10;
/// Frames of one round, together, at most (what either side holds of a
/// round before answering it).
pub const MAX_ROUND_BYTES: usize = 32 << 20;
/// Ids of one `have` part per frame.
const HAVE_IDS_PER_PART: usize = 4096;

type Result<T, E = Invalid> = std::result::Result<T, E>;

fn invalid(what: impl Into<String>) -> Invalid {
    Invalid::Field(format!("reconcile: {}", what.into()))
}

fn range_to_proto(r: Range) -> proto::ReconcileRange {
    let range = match r {
        Range::Span { lo, hi } => proto::reconcile_range::Range::Span(proto::KeySpan {
            lo: lo.into(),
            hi: hi.map(Bytes::from),
        }),
        Range::Cell(c) => proto::reconcile_range::Range::Cell(cell_to_proto(c)),
    };
    proto::ReconcileRange { range: Some(range) }
}

fn cell_to_proto(c: Cell) -> proto::RangeCell {
    proto::RangeCell {
        namespace: Some(namespace_to_proto(&c.ns)),
        prefix: c.prefix.into(),
        nibbles: u32::from(c.nibbles),
    }
}

fn range(r: Option<proto::ReconcileRange>) -> Result<Range> {
    match r.and_then(|r| r.range) {
        Some(proto::reconcile_range::Range::Span(s)) => Ok(Range::Span {
            lo: s.lo.to_vec(),
            hi: s.hi.map(|h| h.to_vec()),
        }),
        Some(proto::reconcile_range::Range::Cell(c)) => Ok(Range::Cell(cell(Some(c))?)),
        None => Err(invalid("a range is required")),
    }
}

fn cell(c: Option<proto::RangeCell>) -> Result<Cell> {
    let c = c.ok_or_else(|| invalid("a cell is required"))?;
    let cell = Cell {
        ns: namespace(c.namespace)?,
        prefix: c.prefix.to_vec(),
        nibbles: u8::try_from(c.nibbles).map_err(|_| invalid("nibbles over 255"))?,
    };
    cell.check().map_err(|e| invalid(e.to_string()))?;
    Ok(cell)
}

fn part_to_proto(p: Part) -> proto::ReconcilePart {
    use proto::reconcile_part::Part as P;
    let part = match p {
        Part::Fingerprint { range, fp } => P::Fingerprint(proto::RangeFingerprint {
            range: Some(range_to_proto(range)),
            sum: fp.sum,
            count: fp.count,
        }),
        Part::Split { cell, bits, fps } => P::Split(proto::RangeSplit {
            cell: Some(cell_to_proto(cell)),
            bits: u32::from(bits),
            sums: fps.iter().map(|f| f.sum).collect(),
            counts: fps.iter().map(|f| f.count).collect(),
        }),
        Part::Items { range, keys } => P::Items(proto::RangeKeys {
            range: Some(range_to_proto(range)),
            keys,
        }),
        Part::Want { range, keys } => P::Want(proto::RangeKeys {
            range: Some(range_to_proto(range)),
            keys,
        }),
        Part::Have { ns, ids } => P::Have(proto::RangeHave {
            namespace: Some(namespace_to_proto(&ns)),
            ids: ids.iter().map(|id| Bytes::copy_from_slice(&id.0)).collect(),
        }),
    };
    proto::ReconcilePart { part: Some(part) }
}

/// A part as a peer sent it.
pub fn part(p: proto::ReconcilePart) -> Result<Part> {
    use proto::reconcile_part::Part as P;
    Ok(match p.part.ok_or_else(|| invalid("an empty part"))? {
        P::Fingerprint(f) => Part::Fingerprint {
            range: range(f.range)?,
            fp: Fingerprint {
                sum: f.sum,
                count: f.count,
            },
        },
        P::Split(s) => {
            let bits = match s.bits {
                4 => 4,
                8 => 8,
                b => return Err(invalid(format!("a split of {b} bits (4 or 8)"))),
            };
            if s.sums.len() != 1 << bits || s.counts.len() != s.sums.len() {
                return Err(invalid(format!(
                    "a split of {bits} bits with {} sums and {} counts",
                    s.sums.len(),
                    s.counts.len()
                )));
            }
            let fps = s.sums.iter().zip(&s.counts);
            Part::Split {
                cell: cell(s.cell)?,
                bits,
                fps: fps
                    .map(|(&sum, &count)| Fingerprint { sum, count })
                    .collect(),
            }
        }
        P::Items(k) => Part::Items {
            range: range(k.range)?,
            keys: k.keys,
        },
        P::Want(k) => Part::Want {
            range: range(k.range)?,
            keys: k.keys,
        },
        P::Have(h) => Part::Have {
            ns: namespace(h.namespace)?,
            ids: h
                .ids
                .iter()
                .map(|id| EntryId::from_slice(id))
                .collect::<std::result::Result<_, _>>()?,
        },
    })
}

/// The parts of a frame, checked.
pub fn parts(frame: proto::ReconcileFrame) -> Result<Vec<Part>> {
    frame.parts.into_iter().map(part).collect()
}

/// The namespaces of a caller's first frame.
pub fn scope(frame: &proto::ReconcileFrame) -> Result<Vec<Namespace>> {
    frame
        .namespaces
        .iter()
        .map(|ns| namespace(Some(ns.clone())))
        .collect()
}

/// A round as frames of at most about [`FRAME_BYTES`], the last marked;
/// `namespaces` go in the first.
pub fn frames(parts: Vec<Part>, namespaces: &[Namespace]) -> Vec<proto::ReconcileFrame> {
    let mut frames = vec![proto::ReconcileFrame {
        namespaces: namespaces.iter().map(namespace_to_proto).collect(),
        ..Default::default()
    }];
    let mut size = 0;
    for part in parts.into_iter().flat_map(split_have) {
        let part = part_to_proto(part);
        let len = part.encoded_len() + 4;
        if size + len > FRAME_BYTES && size > 0 {
            frames.push(proto::ReconcileFrame::default());
            size = 0;
        }
        size += len;
        frames.last_mut().expect("one").parts.push(part);
    }
    frames.last_mut().expect("one").end_of_round = true;
    frames
}

/// A long `have` in parts that fit a frame.
fn split_have(p: Part) -> Vec<Part> {
    match p {
        Part::Have { ns, ids } if ids.len() > HAVE_IDS_PER_PART => ids
            .chunks(HAVE_IDS_PER_PART)
            .map(|c| Part::Have {
                ns: ns.clone(),
                ids: c.to_vec(),
            })
            .collect(),
        p => vec![p],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ranges::Fingerprint;

    #[test]
    fn parts_survive_the_wire_and_long_rounds_are_cut_into_frames() {
        let ns = Namespace::new("t", "d").unwrap();
        let cell = Cell::whole(ns.clone()).child(0xA, 4);
        let round = vec![
            Part::Fingerprint {
                range: Range::all(),
                fp: Fingerprint { sum: 7, count: 9 },
            },
            Part::Split {
                cell: cell.clone(),
                bits: 8,
                fps: vec![Fingerprint { sum: 1, count: 2 }; 256],
            },
            Part::Items {
                range: Range::Cell(cell.clone()),
                keys: vec![1, 2, 3],
            },
            Part::Want {
                range: Range::Span {
                    lo: vec![1],
                    hi: Some(vec![2]),
                },
                keys: vec![4],
            },
            Part::Have {
                ns: ns.clone(),
                ids: (0..20_000u32)
                    .map(|i| EntryId(*blake3::hash(&i.to_le_bytes()).as_bytes()))
                    .collect(),
            },
        ];
        let frames = frames(round.clone(), std::slice::from_ref(&ns));
        assert!(frames.len() > 2, "{} frames", frames.len());
        assert!(frames.iter().all(|f| f.encoded_len() <= FRAME_BYTES + 4096));
        assert_eq!(frames.iter().filter(|f| f.end_of_round).count(), 1);
        assert!(frames.last().unwrap().end_of_round);
        assert_eq!(scope(&frames[0]).unwrap(), vec![ns.clone()]);
        let back: Vec<Part> = frames.into_iter().flat_map(|f| parts(f).unwrap()).collect();
        let mut ids = Vec::new();
        for p in &back[4..] {
            let Part::Have { ids: some, .. } = p else {
                panic!("{p:?}")
            };
            ids.extend_from_slice(some);
        }
        assert_eq!(back[..4], round[..4]);
        assert_eq!(Part::Have { ns, ids }, round[4]);
    }

    #[test]
    fn malformed_parts_are_refused() {
        let bad = proto::ReconcilePart {
            part: Some(proto::reconcile_part::Part::Split(proto::RangeSplit {
                bits: 8,
                sums: vec![0; 3],
                ..Default::default()
            })),
        };
        assert!(
            part(bad)
                .unwrap_err()
                .to_string()
                .contains("split of 8 bits")
        );
        let empty = proto::ReconcilePart { part: None };
        assert!(part(empty).is_err());
    }
}
