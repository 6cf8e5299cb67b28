//! What the rollgate coordinator and the rollgate agent share: the wire
//! contract (`pb`) and its conversion to domain types, versions and the
//! CP/DP compatibility rule, mutual TLS, telemetry, shutdown and exit codes.
//!
//! `testbed` is different: it holds the throwaway PostgreSQL clusters, HAProxy
//! instances and process helpers that `rollgate demo` and the end-to-end tests
//! use to build a fleet on one machine. Neither the agent nor a real rollout
//! touches it.
#![forbid(unsafe_code)]

pub mod catalog;
pub mod cli;
pub mod clock;
pub mod compat;
pub mod convert;
pub mod exit;
pub mod fingerprint;
pub mod fsx;
pub mod ids;
pub mod journal_writer;
pub mod lb;
pub mod outcome;
pub mod pb;
pub mod role;
pub mod shutdown;
pub mod telemetry;
pub mod testbed;
pub mod tls;
pub mod tomlerr;
pub mod version;

/// The version of this build, shared by the agent and the coordinator.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
