//! WAL tests by concern, like vector's `disk_v2/tests/`.

mod basic;
mod known_errors;
mod model;
mod poison;
mod recovery;
mod support;
