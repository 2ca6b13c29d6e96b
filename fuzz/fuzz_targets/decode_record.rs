//! Invariant I4: decoding a stored value never panics, whatever the bytes.
//!
//! Feeds arbitrary bytes to the public decoders of the three framed value types. When a record
//! does decode, encoding it again must decode to the same record.
#![no_main]

use alertbridge_wal::{decode_dead_letter, decode_receipt, decode_record, encode_record};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(record) = decode_record(data) {
        let again = encode_record(&record).expect("a decoded record encodes");
        assert_eq!(decode_record(&again).expect("re-encoded record decodes"), record);
    }
    let _ = decode_dead_letter(data);
    let _ = decode_receipt(data);
});
