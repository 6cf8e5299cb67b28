//! End-to-end tests of demo-gateway: real processes started from the packaged
//! release artifacts, real PostgreSQL clusters, loopback addresses only.
//!
//! The releases are packaged once per build of the binary and shared by every
//! test process (see `support::releases`).
#![forbid(unsafe_code)]

mod cp_schema;
mod dp_drain;
mod export_import;
mod faulty_releases;
mod packaging;
mod support;
