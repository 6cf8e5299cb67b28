//! `demo-gateway`: a small reference API gateway — a control plane (CP) backed by
//! PostgreSQL and data planes (DP) that proxy HTTP — packaged as several versioned
//! releases, some deliberately faulty. rollgate's demo and end-to-end tests upgrade
//! it for real. It is not part of the product and is never installed by users.
//!
//! One binary plays every role; what version it claims and which faults it injects
//! come only from the release's `manifest.toml`, so one build yields all releases.
#![forbid(unsafe_code)]

pub mod config;
pub mod cp;
pub mod dp;
pub mod exit;
pub mod http;
pub mod manifest;
pub mod model;
pub mod package;
pub mod plugins;
pub mod signals;
pub mod telemetry;
pub mod upstream;
pub mod version;
