//! Rollouts: the persisted plan (`spec`), its journal (`log`) and what it
//! says of each host (`state`), the fleet lock, and the driver that carries
//! a rollout out — its owner loop (`driver`) and its phases: `staging`,
//! `backup` (with the write-freeze guard), `cp`, `dp`, and `undo` for
//! `rollgate rollback`.

mod backup;
mod cp;
mod dp;
pub mod driver;
pub mod journals;
pub mod lock;
pub mod log;
pub mod monitor;
mod pg_journal;
pub mod rehearse;
#[cfg(test)]
mod scripted;
pub mod sequence;
pub mod spec;
mod staging;
pub mod state;
pub mod steps;
pub mod undo;
