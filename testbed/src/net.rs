//! Loopback addresses and ports for simulated hosts.

use std::net::{Ipv4Addr, TcpListener};

/// A port free on `ip` right now (bound, read, released).
pub fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    TcpListener::bind((ip, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port on {ip}: {e}"))
}
