//! What the rollgate coordinator and the rollgate agent share: the wire
//! contract (`pb`) and its conversion to domain types, versions and the
//! CP/DP compatibility rule, mutual TLS, telemetry, shutdown and exit codes.
//!
//! What builds a fleet on one machine for the demo and the tests is not here
//! but in the separate `rollgate-testbed` crate.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod clock;
pub mod codec;
pub mod compat;
pub mod convert;
pub mod exit;
pub mod fencing;
pub mod fingerprint;
pub mod fsx;
pub mod ids;
pub mod journal_writer;
pub mod lb;
pub mod method;
pub mod outcome;
pub mod pb;
pub mod role;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod tomlerr;
pub mod version;

/// The version of this build, shared by the agent and the coordinator.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
