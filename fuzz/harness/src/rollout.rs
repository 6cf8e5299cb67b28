//! The coordinator's rollout journal and what it depends on, at the module
//! paths its source expects (`crate::rollout::...`).

#[path = "../../../coordinator/rollout/log.rs"]
pub mod log;
#[path = "../../../coordinator/rollout/spec.rs"]
pub mod spec;
#[path = "../../../coordinator/rollout/state.rs"]
pub mod state;
