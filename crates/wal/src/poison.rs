//! Invariant I5: a failed flush or fsync poisons the WAL.
//!
//! After a failed fsync the kernel may already have dropped the dirty pages and marked them clean,
//! so a retried fsync can return `Ok` while the data never reached the disk (the "fsyncgate"
//! lesson; fjall's `Poisoned` does the same). A failed write other than a full filesystem
//! leaves the tail of a segment in an unknown state. Either way nothing written afterwards could
//! honestly be called durable: the WAL refuses every later write with
//! [`WalError::Poisoned`](crate::WalError::Poisoned), the agent stops acking, exits non-zero and
//! systemd restarts it; recovery at open then decides what is on disk (a torn tail is cut off).
//! Reads keep working so an operator can still inspect the store.

use std::sync::atomic::{AtomicBool, Ordering};

/// One-way flag: once set it stays set for the life of the process.
#[derive(Debug, Default)]
pub(crate) struct Poison {
    poisoned: AtomicBool,
}

impl Poison {
    /// Sets the flag; nothing clears it.
    pub(crate) fn poison(&self) {
        self.poisoned.store(true, Ordering::SeqCst);
    }

    /// Whether a flush or fsync has failed.
    pub(crate) fn is_poisoned(&self) -> bool {
        self.poisoned.load(Ordering::SeqCst)
    }
}
