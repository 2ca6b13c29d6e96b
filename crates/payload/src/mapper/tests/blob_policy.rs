//! Binary-looking values: stripped with a marker or dead-lettered.

use super::*;

#[test]
fn binary_blobs_are_stripped_with_a_marker_or_dead_lettered() {
    let snapshot = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJ".repeat(100);
    let payload =
        bytes(&json!({"device_id": "p7", "camera": {"snapshot": snapshot, "id": "cam1"}}));

    let strip = mapper_with(|_| {});
    let out = ok(&strip, &payload);
    assert_eq!(
        out.data.get("camera"),
        Some(&json!({"snapshot": "[binary value stripped: 4400 bytes]", "id": "cam1"}))
    );
    assert_eq!(
        out.notes,
        vec![Note::StrippedBlob {
            field: "camera.snapshot".into(),
            len: 4400
        }]
    );

    // In the catch-all the payload path is reported.
    let explicit = mapper_with(|c| {
        c.fields
            .insert("deviceId".into(), FieldSpec::from_source("device_id"));
    });
    let out = ok(&explicit, &payload);
    assert_eq!(
        out.data.get("extra"),
        Some(&json!(
            r#"{"camera":{"snapshot":"[binary value stripped: 4400 bytes]","id":"cam1"}}"#
        ))
    );

    let dead = mapper_with(|c| c.blob_policy = BlobPolicy::DeadLetter);
    let r = err(&dead, &payload);
    assert_eq!(r.kind, RejectionKind::BinaryBlob);
    assert_eq!(
        r.reason,
        "field `camera.snapshot` holds a binary-looking value (4400 bytes) and mapping.blob_policy = \"dead_letter\""
    );
}

/// Many values under one long key: each note's path is clipped, so the notes stay linear in the
/// payload size (a 32 KiB key above 5 000 blobs used to be copied into every note).
#[test]
fn note_paths_are_clipped_so_notes_stay_linear_in_the_payload() {
    let m = mapper_with(|c| c.max_payload_bytes = 1 << 20);
    let key = "k".repeat(32 * 1024);
    let blob = "QUJD".repeat(64);
    let payload = format!(
        r#"{{"{key}":[{}],"n":{{"{key}":[{}]}}}}"#,
        vec![format!("\"{blob}\""); 100].join(","),
        vec!["1e400"; 100].join(","),
    );
    let out = ok(&m, payload.as_bytes());
    let mut blobs = 0;
    let mut huge = 0;
    for n in &out.notes {
        match n {
            Note::StrippedBlob { field, len } => {
                blobs += 1;
                assert_eq!(*len, blob.len());
                assert!(
                    field.len() <= 256 + '…'.len_utf8() && field.ends_with('…'),
                    "{}",
                    field.len()
                );
            }
            Note::HugeNumber { field } => {
                huge += 1;
                assert!(
                    field.len() <= 256 + '…'.len_utf8() && field.ends_with('…'),
                    "{}",
                    field.len()
                );
                assert!(field.starts_with("n.kkk"), "{field}");
            }
            _ => {}
        }
    }
    assert_eq!((blobs, huge), (100, 100));
}
