//! Delivery receipts: a bounded, rotating pair of files `receipts.log` (current) and
//! `receipts.old` (the previous generation).
//!
//! When the current file holds `keep` receipts it becomes the old one (replacing it) and a new
//! current file starts, so between `keep` and `2 × keep` receipts are on disk and memory holds
//! none. Receipts are forensic (which alert went when, with which execution id): they are written
//! with the segment log's writes but not fsynced on their own, so a power cut may lose the newest
//! few; a lost receipt never loses or repeats an alert.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use crate::frame::{self, Item, Kind};

const CURRENT: &str = "receipts.log";
const OLD: &str = "receipts.old";

/// The receipt files.
#[derive(Debug)]
pub(crate) struct Receipts {
    dir: PathBuf,
    keep: u64,
    file: Option<File>,
    current: u64,
    old: u64,
    len: u64,
}

fn frames_in(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let mut buf = Vec::new();
    match File::open(path) {
        Ok(mut f) => {
            f.read_to_end(&mut buf)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    }
    let (items, _) = frame::scan(&buf, true);
    Ok(items
        .into_iter()
        .filter_map(|i| match i {
            Item::Frame {
                kind: Kind::Receipt,
                body,
                ..
            } => Some(body.to_vec()),
            _ => None,
        })
        .collect())
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

impl Receipts {
    /// Opens the files in `dir`, keeping `keep` receipts (0: none, the files are removed).
    pub(crate) fn open(dir: &Path, keep: u64) -> io::Result<Receipts> {
        let mut r = Receipts {
            dir: dir.to_path_buf(),
            keep,
            file: None,
            current: frames_in(&dir.join(CURRENT))?.len() as u64,
            old: frames_in(&dir.join(OLD))?.len() as u64,
            len: 0,
        };
        if keep == 0 {
            for name in [CURRENT, OLD] {
                match fs::remove_file(dir.join(name)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            r.current = 0;
            r.old = 0;
        }
        r.len = file_len(&dir.join(CURRENT)) + file_len(&dir.join(OLD));
        Ok(r)
    }

    /// Appends one framed receipt, rotating when the current file is full. Not fsynced.
    pub(crate) fn push(&mut self, framed: &[u8]) -> io::Result<()> {
        if self.keep == 0 {
            return Ok(());
        }
        if self.current >= self.keep {
            self.file = None;
            fs::rename(self.dir.join(CURRENT), self.dir.join(OLD))?;
            self.old = self.current;
            self.current = 0;
        }
        if self.file.is_none() {
            self.file = Some(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(self.dir.join(CURRENT))?,
            );
        }
        let mut out = Vec::with_capacity(frame::encoded_len(framed.len()));
        frame::encode(&mut out, Kind::Receipt, framed);
        if let Some(f) = self.file.as_mut() {
            f.write_all(&out)?;
        }
        self.current += 1;
        self.len = file_len(&self.dir.join(CURRENT)) + file_len(&self.dir.join(OLD));
        Ok(())
    }

    /// Receipts kept (at most `keep`, the newest).
    pub(crate) fn count(&self) -> u64 {
        (self.current + self.old).min(self.keep)
    }

    /// Bytes of both files.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// The newest `keep` framed receipts, oldest first.
    pub(crate) fn read_all(&self) -> io::Result<Vec<Vec<u8>>> {
        let mut all = frames_in(&self.dir.join(OLD))?;
        all.extend(frames_in(&self.dir.join(CURRENT))?);
        let skip = all.len().saturating_sub(self.keep as usize);
        all.drain(..skip);
        Ok(all)
    }
}
