//! The store's record that a session of ours held a subscription on the broker (S2 in
//! `session.rs`): `<store.dir>/mqtt-session.json`, naming the client id and the broker. Read once
//! at start; written after the first SUBACK of a process that granted a filter, when the file
//! did not exist or named another client id or broker (so in practice once per store and
//! broker, not per start). It lets a restart after a long outage report that the broker discarded
//! the session meanwhile; a first-ever start finds no record and reports nothing.
//!
//! It is not part of the log: the WAL knows nothing of MQTT and never reads it, and nothing an
//! alert depends on is in it. Losing it (a replaced disk, a fresh store) costs only that report,
//! once; a torn, foreign or unreadable file reads as "no record".

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The file's name inside `store.dir`.
pub(crate) const FILE: &str = "mqtt-session.json";

/// Version of the file's layout (`v`); a different one reads as "no record".
const VERSION: u32 = 1;

/// The file's contents. Changing a field changes the file's format: bump [`VERSION`].
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Recorded {
    /// [`VERSION`].
    v: u32,
    /// `mqtt.client_id`: the broker keeps the session under it.
    client_id: String,
    /// `host:port` of `mqtt.url`.
    broker: String,
    /// When it was written (unix ms), for a person reading the file.
    recorded_at_ms: u64,
}

/// The record of one client id on one broker, in one store.
#[derive(Debug, Clone)]
pub(crate) struct SessionMarker {
    dir: PathBuf,
    client_id: String,
    broker: String,
}

impl SessionMarker {
    /// The marker of `client_id` on `broker` (`host:port`) in the store at `dir`.
    pub(crate) fn new(dir: &Path, client_id: &str, broker: &str) -> Self {
        SessionMarker {
            dir: dir.to_path_buf(),
            client_id: client_id.to_string(),
            broker: broker.to_string(),
        }
    }

    /// The file's path.
    pub(crate) fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Whether the store records a session of this client id on this broker. A missing file
    /// or one naming another client id or broker is `false`; so is an unreadable or damaged
    /// one, with a warning (what is at stake is one report of a lost session, not an alert).
    pub(crate) fn recorded(&self) -> bool {
        let path = self.path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return false,
            Err(e) => {
                tracing::warn!(
                    path = %path.display(),
                    error = %e,
                    "cannot read the record of the broker session; a session the broker discarded while alertbridge was stopped will not be reported at this start"
                );
                return false;
            }
        };
        match serde_json::from_slice::<Recorded>(&bytes) {
            Ok(r) if r.v == VERSION => r.client_id == self.client_id && r.broker == self.broker,
            Ok(r) => {
                tracing::warn!(path = %path.display(), v = r.v, "record of the broker session has an unknown version; ignored");
                false
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "record of the broker session is damaged; ignored (it is written again after the next subscription)");
                false
            }
        }
    }

    /// Write the record for this client id and broker: a temporary file, fsynced, renamed over
    /// the old one, then the directory fsynced, so a crash leaves the old record or the new one.
    /// Blocking: run it on the blocking pool.
    pub(crate) fn record(&self) -> io::Result<()> {
        let body = serde_json::to_vec(&Recorded {
            v: VERSION,
            client_id: self.client_id.clone(),
            broker: self.broker.clone(),
            recorded_at_ms: crate::clock::now_ms(),
        })
        .map_err(io::Error::other)?;
        let tmp = self.dir.join(format!("{FILE}.tmp"));
        {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.write_all(b"\n")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.path())?;
        std::fs::File::open(&self.dir)?.sync_all()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_one_client_id_on_one_broker_and_anything_else_reads_as_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        let m = SessionMarker::new(dir.path(), "gw1", "broker:1883");
        assert!(!m.recorded(), "no file: a first start");
        m.record().expect("record");
        assert!(m.recorded());
        assert!(
            !dir.path().join(format!("{FILE}.tmp")).exists(),
            "the temporary file is renamed"
        );
        assert!(!SessionMarker::new(dir.path(), "gw2", "broker:1883").recorded());
        assert!(!SessionMarker::new(dir.path(), "gw1", "other:1883").recorded());
        // recording another identity replaces it
        SessionMarker::new(dir.path(), "gw2", "broker:1883")
            .record()
            .expect("record");
        assert!(!m.recorded());
        // damaged or from a future version: no record, no panic
        for text in [
            "{\"v\":1,\"client_id\":\"gw1\"",
            "\u{0}\u{ff}",
            "{\"v\":2,\"client_id\":\"gw1\",\"broker\":\"broker:1883\",\"recorded_at_ms\":1}",
        ] {
            std::fs::write(m.path(), text).expect("write");
            assert!(!m.recorded(), "{text:?}");
        }
    }

    #[test]
    fn recording_into_a_vanished_store_fails_without_creating_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let gone = dir.path().join("wal");
        let m = SessionMarker::new(&gone, "gw1", "broker:1883");
        assert!(m.record().is_err());
        assert!(!gone.exists(), "the store directory is never created here");
        assert!(!m.recorded());
    }
}
