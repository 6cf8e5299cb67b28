//! Not the product. A fleet on one machine for `rollgate demo`, the
//! end-to-end tests and the benchmarks: throwaway PostgreSQL clusters
//! (`pg`), HAProxy (`haproxy`), the reference gateway's packaged releases
//! (`artifacts`, `catalog`), a whole demo fleet (`fleet`), steady HTTP load
//! (`load`), and the helpers every harness shares: one `Sandbox` (a temp
//! dir and a /16 of loopback addresses), one deadline-bounded wait
//! (`wait`), one free-port helper (`net`), one blocking HTTP helper
//! (`http`), child processes that are always reaped (`proc`).
//!
//! It does not depend on `rollgate`: the coordinator's `demo` feature uses it.
#![forbid(unsafe_code)]

pub mod artifacts;
pub mod catalog;
pub mod fleet;
pub mod haproxy;
pub mod http;
pub mod install;
pub mod load;
pub mod net;
pub mod partition;
pub mod pg;
pub mod proc;
pub mod sandbox;
pub mod sysroot;
pub mod wait;

pub use sandbox::Sandbox;

/// rustls needs one process-wide crypto provider; the load generator's
/// client is built on it. Installing twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
