//! Rollouts: the persisted plan (`spec`), its journal (`log`), the fleet
//! lock, and the driver that carries it out.

pub mod driver;
pub mod lock;
pub mod log;
pub mod monitor;
#[cfg(test)]
mod scripted;
pub mod sequence;
pub mod spec;
pub mod steps;
pub mod undo;
pub mod writer;
