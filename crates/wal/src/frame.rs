//! The frame every entry of the WAL's files is written in, and the reader that finds frames again
//! after damage.
//!
//! **On-disk format:** `magic "AB" | kind u8 | length u32 LE | crc32c u32 LE | body`. The crc32c
//! covers kind, length and body, so a damaged header that still parses is caught. The magic lets
//! a reader find the next intact frame after a damaged one ([`scan`]) instead of losing the rest
//! of a file. Changing any of this changes the store format ([`crate::STORE_FORMAT`]).
//!
//! Decoding never panics, whatever the bytes (invariant I4): a frame is either intact or reported
//! as [`Item::Garbage`] with its extent.

/// First two bytes of every frame.
pub(crate) const MAGIC: [u8; 2] = *b"AB";

/// `magic | kind | length | crc32c`.
pub(crate) const HEADER_LEN: usize = 2 + 1 + 4 + 4;

/// Largest body accepted when reading: a length field above it is damage, not a frame. Bigger
/// than any record the agent admits (it dead-letters oversize payloads long before).
pub(crate) const MAX_BODY: usize = 64 << 20;

/// What a frame holds. Part of the on-disk format: never renumber.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Segment log: a pending record ([`crate::wal`] `PutHeader` + framed record).
    Put = 1,
    /// Segment log: keys that left pending (delivered, dead-lettered, re-appended).
    Ack = 2,
    /// Dead-letter log: a dead letter (`id u64 LE` + framed dead letter).
    DeadAdd = 3,
    /// Dead-letter log: the id of a dead letter that was replayed or purged.
    DeadRemove = 4,
    /// Receipt log: a framed receipt.
    Receipt = 5,
    /// Checkpoint file: the checkpoint body.
    Checkpoint = 6,
    /// Dead-letter log: the next dead-letter id, written first by a compaction.
    DeadNextId = 7,
    /// Segment log: the first seq of the segment (its first frame), so seqs never go backwards
    /// even when every earlier segment was deleted.
    SegmentStart = 8,
    /// Segment log: an alert id entered the dedup window without a put (ingest dead-lettered
    /// it): `id hash u128 LE | at_ms u64 LE`, so replay rebuilds the window in its exact order.
    Seen = 9,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Put,
            2 => Kind::Ack,
            3 => Kind::DeadAdd,
            4 => Kind::DeadRemove,
            5 => Kind::Receipt,
            6 => Kind::Checkpoint,
            7 => Kind::DeadNextId,
            8 => Kind::SegmentStart,
            9 => Kind::Seen,
            _ => return None,
        })
    }
}

/// Appends one frame of `kind` around `body` to `out`.
pub(crate) fn encode(out: &mut Vec<u8>, kind: Kind, body: &[u8]) {
    let len = u32::try_from(body.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&MAGIC);
    out.push(kind as u8);
    out.extend_from_slice(&len.to_le_bytes());
    let crc = crc32c::crc32c_append(
        crc32c::crc32c_append(crc32c::crc32c(&[kind as u8]), &len.to_le_bytes()),
        body,
    );
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
}

/// Encoded length of a frame around `body_len` bytes.
pub(crate) fn encoded_len(body_len: usize) -> usize {
    HEADER_LEN + body_len
}

/// One thing found in a buffer of frames.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Item<'a> {
    /// An intact frame at `offset` (relative to the buffer) of `len` bytes in all.
    Frame {
        /// Offset of the frame's first byte.
        offset: usize,
        /// Whole frame length (header + body).
        len: usize,
        /// Its kind.
        kind: Kind,
        /// Its body.
        body: &'a [u8],
    },
    /// Bytes that are no intact frame, from `offset` up to the next intact frame or the end.
    Garbage {
        /// Offset of the first damaged byte.
        offset: usize,
        /// How many bytes up to the next intact frame (or the end of the buffer).
        len: usize,
    },
}

/// Result of checking one position.
enum At<'a> {
    Frame(Kind, &'a [u8], usize),
    /// The header is plausible but the frame runs past the end of the buffer.
    Incomplete,
    Bad,
}

fn frame_at(buf: &[u8], at: usize) -> At<'_> {
    let Some(rest) = buf.get(at..) else {
        return At::Incomplete;
    };
    if rest.len() < HEADER_LEN {
        return if rest.len() < 2 || rest[..2] == MAGIC {
            At::Incomplete
        } else {
            At::Bad
        };
    }
    if rest[..2] != MAGIC {
        return At::Bad;
    }
    let Some(kind) = Kind::from_u8(rest[2]) else {
        return At::Bad;
    };
    let len = u32::from_le_bytes([rest[3], rest[4], rest[5], rest[6]]) as usize;
    if len > MAX_BODY {
        return At::Bad;
    }
    let Some(body) = rest.get(HEADER_LEN..HEADER_LEN + len) else {
        return At::Incomplete;
    };
    let stored = u32::from_le_bytes([rest[7], rest[8], rest[9], rest[10]]);
    let crc = crc32c::crc32c_append(crc32c::crc32c(&rest[2..7]), body);
    if crc != stored {
        return At::Bad;
    }
    At::Frame(kind, body, HEADER_LEN + len)
}

/// Splits `buf` into intact frames and garbage.
///
/// `complete` says whether `buf` runs to the end of the file: if not, a frame cut by the end of
/// the buffer is left for the next read (the returned `usize` is how many bytes were consumed);
/// if so, it is garbage (a torn tail). Never panics.
pub(crate) fn scan(buf: &[u8], complete: bool) -> (Vec<Item<'_>>, usize) {
    let mut items = Vec::new();
    let mut at = 0;
    while at < buf.len() {
        match frame_at(buf, at) {
            At::Frame(kind, body, len) => {
                items.push(Item::Frame {
                    offset: at,
                    len,
                    kind,
                    body,
                });
                at += len;
            }
            At::Incomplete if !complete => break,
            At::Incomplete | At::Bad => {
                // Resync: the next offset where an intact frame starts.
                let start = at;
                let mut next = at + 1;
                let found = loop {
                    match buf
                        .get(next..)
                        .and_then(|r| r.windows(2).position(|w| w == MAGIC))
                    {
                        None => break None,
                        Some(p) => {
                            let candidate = next + p;
                            match frame_at(buf, candidate) {
                                At::Frame(..) => break Some(candidate),
                                // Only a frame cut by the end of a partial buffer may be good.
                                At::Incomplete if !complete => break Some(candidate),
                                _ => next = candidate + 1,
                            }
                        }
                    }
                };
                match found {
                    Some(candidate) => {
                        items.push(Item::Garbage {
                            offset: start,
                            len: candidate - start,
                        });
                        at = candidate;
                    }
                    None if complete => {
                        items.push(Item::Garbage {
                            offset: start,
                            len: buf.len() - start,
                        });
                        at = buf.len();
                    }
                    // The damage may end in bytes not read yet: report what is certain.
                    None => {
                        let keep = buf.len().saturating_sub(HEADER_LEN + 1).max(start + 1);
                        items.push(Item::Garbage {
                            offset: start,
                            len: keep - start,
                        });
                        at = keep;
                        break;
                    }
                }
            }
        }
    }
    (items, at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two_frames() -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, Kind::Put, b"first body");
        encode(&mut buf, Kind::Ack, b"second");
        buf
    }

    #[test]
    fn intact_frames_are_found_in_order() {
        let buf = two_frames();
        let (items, used) = scan(&buf, true);
        assert_eq!(used, buf.len());
        assert_eq!(items.len(), 2);
        assert!(matches!(
            items[0],
            Item::Frame {
                kind: Kind::Put,
                body: b"first body",
                ..
            }
        ));
        assert!(
            matches!(items[1], Item::Frame { kind: Kind::Ack, body: b"second", offset, .. } if offset == encoded_len(10))
        );
    }

    #[test]
    fn a_cut_frame_is_left_for_the_next_read_unless_the_file_ends_there() {
        let buf = two_frames();
        let cut = &buf[..buf.len() - 2];
        let (items, used) = scan(cut, false);
        assert_eq!(items.len(), 1);
        assert_eq!(used, encoded_len(10));
        let (items, _) = scan(cut, true);
        assert!(matches!(items[1], Item::Garbage { offset, .. } if offset == encoded_len(10)));
    }

    #[test]
    fn a_flipped_byte_is_garbage_and_the_next_frame_is_found_again() {
        let mut buf = two_frames();
        buf[HEADER_LEN + 2] ^= 0x40;
        let (items, _) = scan(&buf, true);
        assert_eq!(
            items[0],
            Item::Garbage {
                offset: 0,
                len: encoded_len(10)
            }
        );
        assert!(matches!(
            items[1],
            Item::Frame {
                kind: Kind::Ack,
                ..
            }
        ));
    }

    #[test]
    fn scanning_arbitrary_bytes_never_panics_and_covers_the_buffer() {
        let mut seed = 7u64;
        for n in 0..400 {
            let mut buf = two_frames();
            for _ in 0..(n % 7) {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let i = (seed >> 33) as usize % buf.len();
                buf[i] = (seed >> 17) as u8;
            }
            buf.truncate(buf.len() - (n % 5));
            let (items, used) = scan(&buf, true);
            assert_eq!(used, buf.len());
            let covered: usize = items
                .iter()
                .map(|i| match i {
                    Item::Frame { len, .. } | Item::Garbage { len, .. } => *len,
                })
                .sum();
            assert_eq!(covered, buf.len(), "items cover every byte once");
        }
    }
}
