//! Building a fleet on one machine, for `rollgate demo` and the end-to-end
//! tests: throwaway PostgreSQL clusters, HAProxy, free loopback ports and
//! process helpers. Nothing here is used by a real rollout.

pub mod artifacts;
pub mod fleet;
pub mod haproxy;
pub mod http;
pub mod load;
pub mod pg;
