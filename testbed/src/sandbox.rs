//! One harness's world: a temp dir and a /16 of loopback addresses
//! (127.A.B.x) nobody else in this run uses.

use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

/// A temp dir and a loopback /16.
pub struct Sandbox {
    pub dir: tempfile::TempDir,
    net: (u8, u8),
}

impl Sandbox {
    /// A new sandbox; `prefix` names its directory.
    pub fn new(prefix: &str) -> Sandbox {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        // Tests run as separate processes (nextest) or threads (cargo test):
        // mix the pid and a counter so concurrent sandboxes get distinct
        // networks.
        let n = std::process::id()
            .wrapping_mul(31)
            .wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let a = (n % 250) as u8 + 2;
        let b = ((n / 250) % 250) as u8 + 2;
        Sandbox {
            dir: tempfile::Builder::new()
                .prefix(prefix)
                .tempdir()
                .expect("a temp dir"),
            net: (a, b),
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The /16 as (A, B).
    pub fn net(&self) -> (u8, u8) {
        self.net
    }

    /// The loopback address of simulated host `n` (1..=254).
    pub fn ip(&self, n: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net.0, self.net.1, n)
    }

    /// A port free on `ip` right now.
    pub fn free_port(&self, ip: Ipv4Addr) -> u16 {
        crate::net::free_port(ip).expect("a free port")
    }
}
