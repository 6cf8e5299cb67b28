//! The agent contract generated from `proto/rollgate/v1` by build.rs.
//!
//! Protobuf types stay at the edge: agent and coordinator convert them to the
//! domain types in `crate::convert` as soon as they arrive.
#![allow(missing_docs, clippy::all, clippy::pedantic)]

tonic::include_proto!("rollgate.v1");
