//! Invariant I4 past the checksum: arbitrary bytes are framed with a *valid* header and crc32c,
//! so postcard's decoding of `Record`, `DeadLetter` and `Receipt` bodies is fuzzed too (random
//! input almost never passes the crc in `decode_record`).
#![no_main]

use alertbridge_wal::{
    decode_dead_letter, decode_receipt, decode_record, DEAD_LETTER_VERSION, RECEIPT_VERSION,
    RECORD_VERSION,
};
use libfuzzer_sys::fuzz_target;

/// The documented frame: `version u8 | length u32 LE | crc32c u32 LE (header + body) | body`.
fn frame(version: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![version];
    out.extend_from_slice(&u32::try_from(body.len()).unwrap_or(u32::MAX).to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&out), body);
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(body);
    out
}

fuzz_target!(|body: &[u8]| {
    let _ = decode_record(&frame(RECORD_VERSION, body));
    let _ = decode_dead_letter(&frame(DEAD_LETTER_VERSION, body));
    let _ = decode_receipt(&frame(RECEIPT_VERSION, body));
});
