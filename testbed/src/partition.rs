//! Cutting a simulated host's link for real: netfilter rules that drop —
//! not refuse — every TCP packet to and from one address and port, in both
//! directions. A connection across the cut sees what a partition or a
//! black-holed route does to it: no FIN, no RST, no ICMP, only silence; a
//! new connection's SYN goes unanswered. Each host has its own loopback
//! address, so one host's link is cut while the others, and the host's own
//! traffic to its gateway, go on. The rules go when the `Cut` is dropped.
//! Needs root (CAP_NET_ADMIN) and `iptables`, as CI has.

use std::net::SocketAddr;
use std::process::Command;

pub struct Cut {
    rules: Vec<Vec<String>>,
    pub addr: SocketAddr,
}

fn iptables(args: &[String]) -> Result<(), String> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run iptables: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "iptables {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Cut {
    /// Drops every packet to and from `addr` (TCP).
    pub fn link(addr: SocketAddr) -> Result<Cut, String> {
        let (ip, port) = (addr.ip().to_string(), addr.port().to_string());
        let tag = format!("rollgate-testbed-{}", std::process::id());
        let rule = |dir: &str, port_dir: &str| -> Vec<String> {
            [
                "INPUT",
                dir,
                &ip,
                "-p",
                "tcp",
                port_dir,
                &port,
                "-m",
                "comment",
                "--comment",
                &tag,
                "-j",
                "DROP",
            ]
            .map(String::from)
            .to_vec()
        };
        let mut cut = Cut {
            rules: Vec::new(),
            addr,
        };
        for r in [rule("-d", "--dport"), rule("-s", "--sport")] {
            let mut insert = vec!["-I".to_string()];
            insert.extend(r.iter().cloned());
            // On error, dropping `cut` removes the rules already added.
            iptables(&insert)?;
            cut.rules.push(r);
        }
        tracing::info!(%addr, "link cut: packets dropped both ways");
        Ok(cut)
    }
}

impl Drop for Cut {
    fn drop(&mut self) {
        for r in self.rules.drain(..) {
            let mut delete = vec!["-D".to_string()];
            delete.extend(r);
            if let Err(e) = iptables(&delete) {
                tracing::error!(error = %e, "cannot remove a link cut");
            }
        }
        tracing::info!(addr = %self.addr, "link healed");
    }
}
