//! alertbridge's payload contract: how a device's MQTT payload becomes the object sent to Genesys
//! Cloud as the workflow's `inputData` (or the events target's `data`), declaratively, validated and
//! within a size budget. Pure: no I/O, no clock, no randomness, no global state; the agent owns
//! persistence, delivery and the audit record. `docs/payload.md` is the user-facing description
//! with before/after examples.
//!
//! # What it owns
//! - [`MappingConfig`] (`[mapping]` of `alertbridge.toml`) and its compilation, [`Mapper::new`],
//!   which reports every config problem by its key (`mapping.fields.readingValue: ...`).
//! - [`Mapper::map`]: topic + payload bytes → [`Mapped`] or [`Rejection`] (a dead letter).
//! - [`Mapper::identify`]: alert id (the dedup key) and priority lane, for ingest; [`digest_id`],
//!   the id of an alert without a usable id field (the one definition: ingest uses it too).
//! - [`Coalescer`]: the storm-coalescing state machine, and [`Mapper::map_summary`].
//!
//! It does not own delivery, retries, the dead-letter store or the audit record: a [`Rejection`]
//! or a lossy [`Note`] tells the agent to keep the original payload there.
//!
//! # Rules, in the order `map` applies them
//! 1. Size: a payload over `max_payload_bytes` (64 KiB) is `TooLarge`.
//! 2. Parsing (own strict reader, `json` module): invalid UTF-8 → `NotUtf8`; not JSON → `NotJson`
//!    (with byte offset); nested deeper than `max_depth` (32) → `TooDeep`; more than `max_keys`
//!    (1 024) object keys at all depths → `TooManyKeys` (the parse stops at key `max_keys + 1` and
//!    only counts the rest, for the reason); a key twice in one object
//!    → `DuplicateKey` (no last-wins guessing); not an object (array, scalar) → `NotObject`; a
//!    number beyond `i64`/`u64`/`f64` is kept as a string of its exact digits (`Note::HugeNumber`);
//!    a leading UTF-8 byte order mark is skipped.
//! 3. Identity: `alert_id_field` (a string or number of 1..=128 chars) or else
//!    `sha256(topic \0 payload)[..16]` in hex; level = first non-null, non-empty
//!    `priority_fields` value; `Critical` when it is one of `critical_levels` (case-insensitive).
//! 4. Required: every `required` path present, non-null, non-empty and scalar, else
//!    `MissingField` / `WrongType` naming it.
//! 5. Fields: pass-through (no `fields`): every top-level field under its normalised key; or
//!    explicit: each declared key from a payload path, topic placeholder or constant, with
//!    optional `default`, `required` and `type` coercion (`WrongType` when impossible); the alert
//!    id goes first under `alert_id_key`.
//! 6. Keys: every key at every depth is normalised by `key_case` and must be legal
//!    ([`is_legal_key`]); two keys meeting → `KeyCollision` (config keys: a config error).
//! 7. Schema drift: payload fields an explicit mapping does not name (and, in pass-through, fields
//!    whose keys cannot be made legal) go into the catch-all key (`extra`) as one JSON string.
//! 8. Binary: binary-looking values (base64, data URIs, control characters, byte arrays, at least
//!    `blob_min_len` long) are replaced by a marker, or reject the alert (`BinaryBlob`).
//! 9. Budget: the serialized `data` must fit `max_data_bytes` (8 KiB). Pass-through moves fields
//!    into the catch-all until the rest fits: ordinary fields largest first, then the identifying
//!    ones (top-level fields of `required`, `priority_fields`, `coalesce.device`/`site` paths);
//!    explicitly mapped fields over it → `OverBudget`; the catch-all is cut to fit, ending in
//!    `...[truncated: N bytes in total]`.
//!
//! # Invariants
//! 1. `map` and `identify` are total and never panic: any bytes yield `Ok(Mapped)` or
//!    `Err(Rejection)` with a readable reason naming the field when there is one (property tests,
//!    fuzz target `map_payload`).
//! 2. An accepted alert's `data` has only legal keys at every depth, `serialized_len` equals its
//!    real compact serialized size and is at most `max_data_bytes`.
//! 3. `identify(t, p).alert_id == map(t, p)?.alert_id` and the priorities agree, so ingest's dedup
//!    key is the id the workflow sees.
//! 4. Never a silent overwrite: key collisions are a config error or a rejection.
//! 5. Never a silent loss: every payload field ends up in `data` (named or in the catch-all), or
//!    the change is a [`Note`], or the alert is rejected.
//! 6. No binary blob is ever sent.
//! 7. Parsing recursion is bounded by `max_depth` (at most 128), so hostile nesting cannot
//!    overflow the stack.
//! 8. `map` and `identify` cost O(n log n) or less in the payload size n, at every step, and the
//!    notes they return are O(n) in size (field paths in notes and reasons are cut to 256 bytes):
//!    a hostile payload costs milliseconds, not minutes, in ingest and in the drain (issue 9).
//!    Guarded by `mapper::tests::budget::a_payload_of_100_000_keys_maps_under_a_raised_max_keys_with_identifying_fields_kept`
//!    and `mapper::tests::blob_policy::note_paths_are_clipped_so_notes_stay_linear_in_the_payload`; the worst cases are rows
//!    of the `mapping` bench.

mod blob;
mod coalesce;
mod config;
mod json;
mod key;
mod mapper;
mod path;
mod size;

pub use coalesce::{CoalesceDecision, Coalescer, Summary};
pub use config::{
    BlobPolicy, CoalesceConfig, FieldSpec, FieldType, KeyCase, MappingConfig, MappingConfigError,
};
pub use key::{is_legal_key, normalize_key, MAX_KEY_LEN};
pub use mapper::{digest_id, Identity, Mapped, Mapper, Note, Priority, Rejection, RejectionKind};
