//! Loopback addresses and ports for simulated hosts.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, OnceLock};

/// Every (address, port) this process has handed out. The kernel may give the
/// same port to two consecutive `bind(ip:0)` calls once the first socket is
/// closed, and a fixture picks the gateway, agent and agent-check ports of one
/// host back to back before anything listens on them: without this, two of
/// them can collide and a gateway fails with "Address already in use".
fn handed_out() -> &'static Mutex<HashSet<(Ipv4Addr, u16)>> {
    static PORTS: OnceLock<Mutex<HashSet<(Ipv4Addr, u16)>>> = OnceLock::new();
    PORTS.get_or_init(Default::default)
}

/// A port free on `ip` right now (bound, read, released) and never handed out
/// before by this process.
pub fn free_port(ip: Ipv4Addr) -> Result<u16, String> {
    const ATTEMPTS: usize = 64;
    for _ in 0..ATTEMPTS {
        let port = TcpListener::bind((ip, 0))
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .map_err(|e| format!("no free port on {ip}: {e}"))?;
        let mut seen = handed_out().lock().unwrap_or_else(|p| p.into_inner());
        if seen.insert((ip, port)) {
            return Ok(port);
        }
    }
    Err(format!(
        "no free port on {ip}: the kernel offered only ports already handed out ({ATTEMPTS} tries)"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_is_never_handed_out_twice() {
        let ip = Ipv4Addr::new(127, 0, 0, 1);
        let ports: Vec<u16> = (0..200).map(|_| free_port(ip).unwrap()).collect();
        let unique: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(unique.len(), ports.len());
    }
}
