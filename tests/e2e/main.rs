//! End-to-end tests: the real `alertbridge` binary against a real mosquitto (spawned per test on
//! a free port) and the Genesys simulator over real HTTP. Each module is one scenario family.
//! The guarantee they assert: lost = (acked by the broker) − (delivered ∪ dead-lettered) = 0.

mod support;

mod broker_restart;
mod budget;
mod coalesce;
mod config;
mod crash;
mod dead_budget;
mod enospc;
mod hostile;
mod identity;
mod metrics;
mod mqtt5;
mod operator;
mod pressure;
mod readiness;
mod receipts;
mod share;
mod slow_api;
mod spine;
mod storm;
mod systemd;
mod tokens;
mod wide_payload;
mod wrong_config;
