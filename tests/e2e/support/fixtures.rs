//! Hosts in a known state, built through their agents: a CP on 3.3.0, a DP
//! on 3.3.0 with more releases staged.

use std::net::SocketAddr;

use rollgate::pb::agent_client::AgentClient;
use tonic::transport::Channel;

use super::client::{connect, install, stage_file, success};
use super::gateway::{Db, Gw, gateway_host, release, wait_serving};
use super::{Host, Proc, Sandbox};

/// A CP host whose agent has installed 3.3.0, serving.
pub struct Cp {
    /// Keeps the CP's agent running as long as the fixture lives.
    pub _agent: Proc,
    pub host: Host,
    pub addr: SocketAddr,
}

pub async fn cp_on_330(sb: &Sandbox, db: &Db) -> Cp {
    cp_on_330_with(sb, db, |_| {}).await
}

/// `cp_on_330`, with `prepare` run on the host's directory before its agent
/// first starts (to mount a small disk, say).
pub async fn cp_on_330_with(sb: &Sandbox, db: &Db, prepare: impl FnOnce(&Host)) -> Cp {
    let (host, addr) = gateway_host(sb, "cp-1", 1, Gw::Cp { db }, "");
    prepare(&host);
    let agent = host.start_agent();
    let mut c = connect(sb, &host).await;
    let r = stage_file(&mut c, "t/cp-1/stage-3.3.0", &release("3.3.0"))
        .await
        .unwrap();
    success(&r);
    let r = install(&mut c, "t/cp-1/install-3.3.0", "3.3.0")
        .await
        .unwrap();
    success(&r);
    wait_serving(addr, "3.3.0");
    Cp {
        _agent: agent,
        host,
        addr,
    }
}

/// A DP host (dp-1) with 3.3.0 and `more` staged, running 3.3.0.
pub async fn dp_on_330(
    sb: &Sandbox,
    cp: &Cp,
    more: &[&str],
    extra: &str,
) -> (Host, Proc, SocketAddr, AgentClient<Channel>) {
    dp_named(sb, cp, "dp-1", 2, more, extra).await
}

/// A DP host `name` on host number `n`, with 3.3.0 and `more` staged,
/// running 3.3.0.
pub async fn dp_named(
    sb: &Sandbox,
    cp: &Cp,
    name: &str,
    n: u8,
    more: &[&str],
    extra: &str,
) -> (Host, Proc, SocketAddr, AgentClient<Channel>) {
    let cp_url = format!("http://{}", cp.addr);
    let (host, addr) = gateway_host(sb, name, n, Gw::Dp { cp_url }, extra);
    let agent = host.start_agent();
    let mut c = connect(sb, &host).await;
    for v in std::iter::once(&"3.3.0").chain(more) {
        let op = format!("t/{name}/stage-{v}");
        success(&stage_file(&mut c, &op, &release(v)).await.unwrap());
    }
    let op = format!("t/{name}/install-3.3.0");
    success(&install(&mut c, &op, "3.3.0").await.unwrap());
    wait_serving(addr, "3.3.0");
    (host, agent, addr, c)
}

/// A fleet on 3.3.0: one CP and `dps` DPs (dp-1 … on host numbers 2 …),
/// with an inventory (fleet.toml) whose policy gets `policy` appended.
pub struct Fleet {
    pub cp: Cp,
    pub dps: Vec<(Host, Proc, SocketAddr)>,
}

pub async fn fleet_on_330(sb: &Sandbox, db: &Db, dps: usize, policy: &str) -> Fleet {
    let mut names: Vec<(String, u8)> = vec![("cp-1".into(), 1)];
    names.extend((1..=dps).map(|i| (format!("dp-{i}"), i as u8 + 1)));
    let refs: Vec<(&str, u8)> = names.iter().map(|(n, i)| (n.as_str(), *i)).collect();
    sb.certs(&refs);
    let cp = cp_on_330(sb, db).await;
    let mut out = Vec::new();
    for (name, n) in names.iter().skip(1) {
        let (h, p, a, _) = dp_named(sb, &cp, name, *n, &[], "").await;
        out.push((h, p, a));
    }
    let mut entries = vec![cp.host.entry()];
    entries.extend(out.iter().map(|(h, _, _)| h.entry()));
    // Test-speed defaults, overridden by any key `policy` sets.
    let mut keys: std::collections::BTreeMap<String, String> = [
        ("min_healthy", "\"1s\""),
        ("health_timeout", "\"20s\""),
        ("drain_timeout", "\"5s\""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    for line in policy.lines().filter(|l| l.contains('=')) {
        let (k, v) = line.split_once('=').unwrap();
        keys.insert(k.trim().to_string(), v.trim().to_string());
    }
    let body: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    sb.inventory(&entries, &format!("\n[policy]\n{body}"));
    Fleet { cp, dps: out }
}
