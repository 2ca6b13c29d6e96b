//! The segment log: numbered append-only files `seg-<id>.log` of [`Kind::Put`] and [`Kind::Ack`]
//! frames, and the in-memory table of which records in them are still pending.
//!
//! A segment owns the contiguous range of seqs allocated while it was the active one, so a seq
//! finds its segment by the segments' `first_seq`, and a live bitmap per segment (one bit per seq)
//! says whether it is pending. 1 000 000 pending records cost about 125 KB of bitmap: memory does
//! not hold a key, an offset or an object per record.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::frame::{self, Kind};
use crate::record::{Key, Priority, Seq};

/// File name of segment `id`.
pub(crate) fn file_name(id: u64) -> String {
    format!("seg-{id:010}.log")
}

/// Path of segment `id` in `dir`.
pub(crate) fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(file_name(id))
}

/// The id in a segment file name, if it is one.
pub(crate) fn parse_name(name: &str) -> Option<u64> {
    name.strip_prefix("seg-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Fixed part of a `Put` body, before the framed record.
///
/// **On-disk format:** `seq u64 LE | lane u8 | received_at_ms u64 LE | id hash u128 LE |
/// replaces flag u8 [| lane u8 | seq u64 LE] | framed record`. `replaces` names the key this
/// record supersedes (a retry re-appended with its new attempt count): the put and the removal
/// of the old key are one frame, so a crash keeps exactly one of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PutHeader {
    pub(crate) seq: Seq,
    pub(crate) lane: Priority,
    pub(crate) received_at_ms: u64,
    pub(crate) id_hash: u128,
    pub(crate) replaces: Option<Key>,
}

const PUT_FIXED: usize = 8 + 1 + 8 + 16 + 1;

impl PutHeader {
    /// Frames a `Put` of `record` (already framed by `encode_record`) into `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>, record: &[u8]) {
        let mut body = Vec::with_capacity(PUT_FIXED + 9 + record.len());
        body.extend_from_slice(&self.seq.to_le_bytes());
        body.push(self.lane);
        body.extend_from_slice(&self.received_at_ms.to_le_bytes());
        body.extend_from_slice(&self.id_hash.to_le_bytes());
        match self.replaces {
            None => body.push(0),
            Some(old) => {
                body.push(1);
                body.push(old.priority);
                body.extend_from_slice(&old.seq.to_le_bytes());
            }
        }
        body.extend_from_slice(record);
        frame::encode(out, Kind::Put, &body);
    }

    /// Splits a `Put` body into its header and the framed record. `None`: the body is too short
    /// or its flag is unknown (damage inside an intact frame: treated like garbage).
    pub(crate) fn decode(body: &[u8]) -> Option<(PutHeader, &[u8])> {
        let fixed = body.get(..PUT_FIXED)?;
        let seq = u64::from_le_bytes(fixed[0..8].try_into().ok()?);
        let lane = fixed[8];
        let received_at_ms = u64::from_le_bytes(fixed[9..17].try_into().ok()?);
        let id_hash = u128::from_le_bytes(fixed[17..33].try_into().ok()?);
        let (replaces, rest) = match fixed[33] {
            0 => (None, &body[PUT_FIXED..]),
            1 => {
                let k = body.get(PUT_FIXED..PUT_FIXED + 9)?;
                let key = Key {
                    priority: k[0],
                    seq: u64::from_le_bytes(k[1..9].try_into().ok()?),
                };
                (Some(key), &body[PUT_FIXED + 9..])
            }
            _ => return None,
        };
        Some((
            PutHeader {
                seq,
                lane,
                received_at_ms,
                id_hash,
                replaces,
            },
            rest,
        ))
    }
}

/// Frames an `Ack` of `keys` into `out`. **On-disk format:** `count u32 LE | (lane u8 | seq u64
/// LE) × count`.
pub(crate) fn encode_ack(out: &mut Vec<u8>, keys: &[Key]) {
    let mut body = Vec::with_capacity(4 + keys.len() * 9);
    body.extend_from_slice(&(keys.len() as u32).to_le_bytes());
    for key in keys {
        body.push(key.priority);
        body.extend_from_slice(&key.seq.to_le_bytes());
    }
    frame::encode(out, Kind::Ack, &body);
}

/// The keys of an `Ack` body; `None` if it is malformed.
pub(crate) fn decode_ack(body: &[u8]) -> Option<Vec<Key>> {
    let (count, rest) = body.split_first_chunk::<4>()?;
    let count = u32::from_le_bytes(*count) as usize;
    if rest.len() != count.checked_mul(9)? {
        return None;
    }
    Some(
        rest.chunks_exact(9)
            .map(|c| Key {
                priority: c[0],
                seq: u64::from_le_bytes([c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8]]),
            })
            .collect(),
    )
}

/// One segment's place in the log and which of its records are pending.
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: u64,
    /// First seq allocated while this segment was active.
    pub(crate) first_seq: Seq,
    /// One past the last seq allocated in it.
    pub(crate) end_seq: Seq,
    /// Bit `i` set: seq `first_seq + i` is pending.
    live: Vec<u64>,
    /// Pending records per lane (index = priority).
    lane_live: Vec<u64>,
    /// Bytes written to the file.
    pub(crate) len: u64,
    /// The file, shared with readers (`read_at`) and the fsync.
    pub(crate) file: Arc<File>,
}

impl Segment {
    /// An empty segment whose first seq will be `first_seq`.
    pub(crate) fn new(id: u64, first_seq: Seq, len: u64, file: Arc<File>) -> Segment {
        Segment {
            id,
            first_seq,
            end_seq: first_seq,
            live: Vec::new(),
            lane_live: Vec::new(),
            len,
            file,
        }
    }

    /// Rebuilds a segment from a checkpoint.
    pub(crate) fn restore(
        id: u64,
        first_seq: Seq,
        end_seq: Seq,
        live: Vec<u64>,
        lane_live: Vec<u64>,
        len: u64,
        file: Arc<File>,
    ) -> Segment {
        Segment {
            id,
            first_seq,
            end_seq: end_seq.max(first_seq),
            live,
            lane_live,
            len,
            file,
        }
    }

    /// Whether `seq` falls in this segment's range.
    pub(crate) fn holds(&self, seq: Seq) -> bool {
        seq >= self.first_seq && seq < self.end_seq
    }

    fn bit(&self, seq: Seq) -> Option<(usize, u64)> {
        let i = seq.checked_sub(self.first_seq)?;
        Some(((i / 64) as usize, 1u64 << (i % 64)))
    }

    /// Whether `seq` is pending here.
    pub(crate) fn is_live(&self, seq: Seq) -> bool {
        self.holds(seq)
            && self
                .bit(seq)
                .is_some_and(|(w, m)| self.live.get(w).is_some_and(|word| word & m != 0))
    }

    /// Marks `seq` (in `lane`) pending, extending the range. Returns whether it was new.
    pub(crate) fn set_live(&mut self, seq: Seq, lane: Priority) -> bool {
        if seq < self.first_seq {
            return false;
        }
        self.end_seq = self.end_seq.max(seq + 1);
        let Some((w, m)) = self.bit(seq) else {
            return false;
        };
        if self.live.len() <= w {
            self.live.resize(w + 1, 0);
        }
        if self.live[w] & m != 0 {
            return false;
        }
        self.live[w] |= m;
        let lane = lane as usize;
        if self.lane_live.len() <= lane {
            self.lane_live.resize(lane + 1, 0);
        }
        self.lane_live[lane] += 1;
        true
    }

    /// Clears `seq`. Returns whether it was pending.
    pub(crate) fn clear(&mut self, key: Key) -> bool {
        if !self.is_live(key.seq) {
            return false;
        }
        if let Some((w, m)) = self.bit(key.seq) {
            self.live[w] &= !m;
        }
        if let Some(n) = self.lane_live.get_mut(key.priority as usize) {
            *n = n.saturating_sub(1);
        } else if let Some(n) = self.lane_live.iter_mut().find(|n| **n > 0) {
            // The lane was not known (a damaged record reported under another lane).
            *n -= 1;
        }
        true
    }

    /// Pending records in `lane`.
    pub(crate) fn lane_live(&self, lane: Priority) -> u64 {
        self.lane_live.get(lane as usize).copied().unwrap_or(0)
    }

    /// Pending records per lane, as saved in a checkpoint.
    pub(crate) fn lane_counts(&self) -> &[u64] {
        &self.lane_live
    }

    /// The bitmap, as saved in a checkpoint.
    pub(crate) fn bitmap(&self) -> &[u64] {
        &self.live
    }

    /// Pending records, all lanes.
    pub(crate) fn live_total(&self) -> u64 {
        self.lane_live.iter().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg() -> Segment {
        let file = tempfile::tempfile().expect("tempfile");
        Segment::new(1, 100, 0, Arc::new(file))
    }

    #[test]
    fn live_bits_follow_set_and_clear_per_lane() {
        let mut s = seg();
        assert!(s.set_live(100, 0));
        assert!(s.set_live(230, 1));
        assert!(!s.set_live(230, 1), "setting twice is no change");
        assert!(s.is_live(100) && s.is_live(230) && !s.is_live(101));
        assert_eq!((s.lane_live(0), s.lane_live(1), s.end_seq), (1, 1, 231));
        assert!(s.clear(Key {
            priority: 1,
            seq: 230
        }));
        assert!(
            !s.clear(Key {
                priority: 1,
                seq: 230
            }),
            "clearing twice is no change"
        );
        assert!(!s.is_live(99) && !s.is_live(500));
        assert_eq!(s.live_total(), 1);
    }

    #[test]
    fn put_and_ack_bodies_round_trip() {
        let h = PutHeader {
            seq: 7,
            lane: 1,
            received_at_ms: 1_700_000_000_000,
            id_hash: 0xdead_beef,
            replaces: Some(Key {
                priority: 1,
                seq: 3,
            }),
        };
        let mut out = Vec::new();
        h.encode(&mut out, b"record bytes");
        let (items, _) = frame::scan(&out, true);
        let frame::Item::Frame { body, .. } = items[0] else {
            panic!("one frame")
        };
        assert_eq!(PutHeader::decode(body), Some((h, &b"record bytes"[..])));
        let keys = vec![
            Key {
                priority: 0,
                seq: 1,
            },
            Key {
                priority: 1,
                seq: u64::MAX,
            },
        ];
        let mut out = Vec::new();
        encode_ack(&mut out, &keys);
        let (items, _) = frame::scan(&out, true);
        let frame::Item::Frame { body, .. } = items[0] else {
            panic!("one frame")
        };
        assert_eq!(decode_ack(body), Some(keys));
        assert_eq!(decode_ack(&body[..body.len() - 1]), None);
    }
}
