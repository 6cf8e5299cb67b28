//! HAProxy in front of the DPs, as a real deployment has it: HTTP health
//! checks on `/status/ready`, and agent-check pointed at each host's agent so
//! a drain takes the host out of rotation for real.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// One backend server.
#[derive(Debug, Clone)]
pub struct Server {
    pub name: String,
    pub addr: SocketAddr,
    pub agent_check: SocketAddr,
}

/// The configuration: the DP-facing frontend and one backend of DPs.
///
/// * `option http-server-close`: a server connection lives for one request,
///   so a drained DP's established connections are exactly its in-flight
///   requests, which the agent's drain waits for.
/// * `retry-on` + `redispatch`: a GET that hits a DP at the very moment it
///   closes is retried on another DP instead of failing the client.
/// * agent-check every 500 ms: `drain` from the agent stops new requests.
pub fn config(listen: SocketAddr, servers: &[Server]) -> String {
    let mut c = format!(
        "global\n    maxconn 4096\n\n\
         defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n    \
         option http-server-close\n    retries 3\n    option redispatch 1\n    \
         retry-on conn-failure empty-response response-timeout 502 503 504\n\n\
         frontend gateway\n    bind {listen}\n    default_backend dps\n\n\
         backend dps\n    balance roundrobin\n    option httpchk GET /status/ready\n    http-check expect status 200\n    \
         default-server inter 500ms fall 2 rise 1 agent-inter 500ms\n"
    );
    for s in servers {
        c.push_str(&format!(
            "    server {} {} check agent-check agent-addr {} agent-port {}\n",
            s.name,
            s.addr,
            s.agent_check.ip(),
            s.agent_check.port()
        ));
    }
    c
}

/// The haproxy binary, when installed.
pub fn binary() -> Option<PathBuf> {
    [
        "/usr/sbin/haproxy",
        "/usr/local/sbin/haproxy",
        "/usr/bin/haproxy",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.is_file())
}

/// A running HAProxy; stopped on drop unless detached.
#[derive(Debug)]
pub struct Haproxy {
    child: Option<Child>,
    pub listen: SocketAddr,
    pub config_path: PathBuf,
}

impl Haproxy {
    /// Writes the config into `dir`, checks it with `haproxy -c`, starts
    /// haproxy in the foreground (`-db`), its output in `dir/haproxy.log`.
    pub fn start(dir: &Path, listen: SocketAddr, servers: &[Server]) -> Result<Haproxy, String> {
        let bin = binary().ok_or("haproxy is not installed (Debian: apt-get install haproxy)")?;
        let config_path = dir.join("haproxy.cfg");
        std::fs::write(&config_path, config(listen, servers))
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        let check = Command::new(&bin)
            .arg("-c")
            .arg("-f")
            .arg(&config_path)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        if !check.status.success() {
            return Err(format!(
                "haproxy rejects {}: {}",
                config_path.display(),
                String::from_utf8_lossy(&check.stderr)
            ));
        }
        let log = std::fs::File::create(dir.join("haproxy.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&bin)
            .arg("-db")
            .arg("-f")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot start haproxy: {e}"))?;
        Ok(Haproxy {
            child: Some(child),
            listen,
            config_path,
        })
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Leaves haproxy running after this handle is gone.
    pub fn detach(mut self) -> u32 {
        self.child.take().map(|c| c.id()).unwrap_or(0)
    }
}

use std::os::unix::process::CommandExt;

impl Drop for Haproxy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_points_agent_check_at_each_agent() {
        let c = config(
            "127.0.0.1:8080".parse().unwrap(),
            &[Server {
                name: "dp-1".into(),
                addr: "127.0.0.2:9080".parse().unwrap(),
                agent_check: "127.0.0.2:9999".parse().unwrap(),
            }],
        );
        assert!(
            c.contains(
                "server dp-1 127.0.0.2:9080 check agent-check agent-addr 127.0.0.2 agent-port 9999"
            ),
            "{c}"
        );
        assert!(c.contains("option httpchk GET /status/ready"));
    }

    #[test]
    fn haproxy_accepts_the_config_when_installed() {
        let Some(bin) = binary() else {
            return; // covered by the end-to-end tests, which install it
        };
        let dir = std::env::temp_dir().join(format!("rollgate-haproxy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("h.cfg");
        std::fs::write(
            &p,
            config(
                "127.0.0.1:1".parse().unwrap(),
                &[Server {
                    name: "a".into(),
                    addr: "127.0.0.1:2".parse().unwrap(),
                    agent_check: "127.0.0.1:3".parse().unwrap(),
                }],
            ),
        )
        .unwrap();
        let out = Command::new(bin)
            .arg("-c")
            .arg("-f")
            .arg(&p)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
