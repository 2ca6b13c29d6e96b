//! WAL tests by concern, like vector's `disk_v2/tests/`.

mod basic;
mod crash;
mod cursor;
mod known_errors;
mod migrate;
mod model;
mod outbox;
mod poison;
mod recovery;
mod support;
