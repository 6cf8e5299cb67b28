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
    pub agent: Proc,
    pub host: Host,
    pub addr: SocketAddr,
}

pub async fn cp_on_330(sb: &Sandbox, db: &Db) -> Cp {
    let (host, addr) = gateway_host(sb, "cp-1", 1, Gw::Cp { db }, "");
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
    Cp { agent, host, addr }
}

/// A DP host with 3.3.0 and `more` staged, running 3.3.0.
pub async fn dp_on_330(
    sb: &Sandbox,
    cp: &Cp,
    more: &[&str],
    extra: &str,
) -> (Host, Proc, SocketAddr, AgentClient<Channel>) {
    let (host, addr) = gateway_host(
        sb,
        "dp-1",
        2,
        Gw::Dp {
            cp_url: format!("http://{}", cp.addr),
        },
        extra,
    );
    let agent = host.start_agent();
    let mut c = connect(sb, &host).await;
    for v in std::iter::once(&"3.3.0").chain(more) {
        success(
            &stage_file(&mut c, &format!("t/dp-1/stage-{v}"), &release(v))
                .await
                .unwrap(),
        );
    }
    success(
        &install(&mut c, "t/dp-1/install-3.3.0", "3.3.0")
            .await
            .unwrap(),
    );
    wait_serving(addr, "3.3.0");
    (host, agent, addr, c)
}
