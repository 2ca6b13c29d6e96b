//! Declared types: coerced with a note, or rejected naming the field.

use super::*;

#[test]
fn declared_types_coerce_or_reject_naming_the_field() {
    let m = |kind: FieldType| {
        mapper_with(|c| {
            c.fields.insert(
                "v".into(),
                FieldSpec {
                    kind,
                    ..FieldSpec::from_source("x")
                },
            );
        })
    };
    use FieldType::{Any as A, Boolean as B, Integer as I, Number as N, String as S};
    let table: &[(FieldType, Value, Option<Value>, bool)] = &[
        (A, json!({"k": 1}), Some(json!({"k": 1})), false),
        (S, json!("x"), Some(json!("x")), false),
        (S, json!(12.5), Some(json!("12.5")), true),
        (S, json!(true), Some(json!("true")), true),
        (S, json!([1]), None, false),
        (N, json!(3), Some(json!(3)), false),
        (N, json!(" 42 "), Some(json!(42)), true),
        (N, json!("-1.5e2"), Some(json!(-150.0)), true),
        (N, json!("abc"), None, false),
        (N, json!("NaN"), None, false),
        (N, json!(false), None, false),
        (I, json!(7), Some(json!(7)), false),
        (I, json!(7.0), Some(json!(7)), true),
        (I, json!(7.5), None, false),
        (I, json!("12"), Some(json!(12)), true),
        (
            I,
            json!("18446744073709551615"),
            Some(json!(18446744073709551615u64)),
            true,
        ),
        (I, json!("1e3"), Some(json!(1000)), true),
        (I, json!(1e300), None, false),
        (B, json!(true), Some(json!(true)), false),
        (B, json!("TRUE"), Some(json!(true)), true),
        (B, json!("0"), Some(json!(false)), true),
        (B, json!(1), Some(json!(true)), true),
        (B, json!(2), None, false),
        (B, json!("yes"), None, false),
    ];
    for (kind, input, want, coerced) in table {
        let mapper = m(*kind);
        let payload = bytes(&json!({ "x": input }));
        match (mapper.map(TOPIC, &payload), want) {
            (Ok(out), Some(want)) => {
                assert_eq!(out.data.get("v"), Some(want), "{kind} {input}");
                assert_eq!(
                    out.notes.contains(&Note::Coerced {
                        field: "v".into(),
                        to: *kind
                    }),
                    *coerced,
                    "{kind} {input}"
                );
            }
            (Err(r), None) => {
                assert_eq!(r.kind, RejectionKind::WrongType, "{kind} {input}");
                assert_eq!(r.field.as_deref(), Some("v"));
                assert!(
                    r.reason.starts_with("field `v` (from `x`): expected "),
                    "{}",
                    r.reason
                );
            }
            (got, want) => panic!("{kind} {input}: got {got:?}, want {want:?}"),
        }
    }
}
