//! The drain's tests: `sim.rs` runs it against the in-process Genesys simulator (what needs
//! HTTP); `scripted.rs` drives it with a scripted [`super::job::Deliver`] under paused time.

mod scripted;
mod sim;
