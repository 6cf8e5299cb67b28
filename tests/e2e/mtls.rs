//! Mutual TLS: who may talk to an agent, and which agent the coordinator
//! accepts. Each refusal has a positive control in the same test, so the
//! test fails if the refusal came from something else.

use std::path::Path;

use rollgate::pb;
use rollgate::pb::agent_client::AgentClient;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::support::{Host, Sandbox, json};

fn read(p: &Path) -> Vec<u8> {
    std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Calls Hello on `host` with the given client identity (None: no client
/// certificate) trusting `ca`.
async fn hello(
    host: &Host,
    ca: &Path,
    identity: Option<(&Path, &Path)>,
) -> Result<pb::HelloResponse, String> {
    rollgate::tls::install_crypto_provider();
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .domain_name(host.name.clone());
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(read(cert), read(key)));
    }
    let endpoint = Endpoint::from_shared(format!("https://{}", host.agent_addr))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?;
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    AgentClient::new(channel)
        .hello(pb::HelloRequest::default())
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_refuses_clients_without_a_fleet_certificate_on_its_allow_list() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    // A second client from the same CA, not on the agent's allow-list.
    let c = sb.certs_dir();
    let out = sb.rollgate(&[
        "certs",
        "init",
        "--dir",
        &c.display().to_string(),
        "--client",
        "intruder",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    // A whole other CA with its own coordinator certificate.
    let other = sb.path().join("other");
    let out = sb.rollgate(&["certs", "init", "--dir", &other.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    let dp = Host::create(&sb, "dp-1", "dp", 2, &["3.4.0"], Some("3.4.0"), "");
    let agent = dp.start_agent();
    let ca = c.join("ca.pem");

    // Positive control: the fleet's coordinator certificate is accepted.
    let ok = hello(
        &dp,
        &ca,
        Some((
            &c.join("rollgate-coordinator.pem"),
            &c.join("rollgate-coordinator.key"),
        )),
    )
    .await;
    assert_eq!(ok.expect("coordinator accepted").installed_version, "3.4.0");

    let none = hello(&dp, &ca, None).await;
    assert!(
        none.is_err(),
        "a client without a certificate got through: {none:?}"
    );

    let foreign = hello(
        &dp,
        &ca,
        Some((
            &other.join("rollgate-coordinator.pem"),
            &other.join("rollgate-coordinator.key"),
        )),
    )
    .await;
    assert!(
        foreign.is_err(),
        "a certificate from another CA got through: {foreign:?}"
    );

    let intruder = hello(
        &dp,
        &ca,
        Some((&c.join("intruder.pem"), &c.join("intruder.key"))),
    )
    .await;
    let e = intruder.expect_err("a client not on the allow-list got through");
    assert!(
        e.starts_with("PermissionDenied") && e.contains("intruder"),
        "{e}"
    );
    assert!(
        agent.log_text().contains("allow-list"),
        "the refusal is logged"
    );
}

#[test]
fn coordinator_refuses_an_agent_whose_certificate_names_another_host() {
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2), ("dp-2", 3)]);
    let dp1 = Host::create(&sb, "dp-1", "dp", 2, &["3.4.0"], Some("3.4.0"), "");
    let dp2 = Host::create(&sb, "dp-2", "dp", 3, &["3.4.0"], Some("3.4.0"), "");
    let _a1 = dp1.start_agent();
    let _a2 = dp2.start_agent();
    // The inventory says dp-1 lives where dp-2's agent answers.
    sb.inventory(
        &[
            ("dp-1", "dp", dp2.agent_addr),
            ("dp-2", "dp", dp1.agent_addr),
        ],
        "",
    );
    let out = sb.rollgate(&["status", "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    for h in json(&out)["hosts"].as_array().unwrap() {
        assert_eq!(h["reachable"], false, "{h}");
        let e = h["error"].as_str().unwrap();
        assert!(
            e.contains("certificate") && e.contains("not valid for name"),
            "{e}"
        );
    }

    // Positive control: the right addresses work.
    sb.inventory(&[dp1.entry(), dp2.entry()], "");
    let out = sb.rollgate(&["status", "-i", "fleet.toml", "--output", "json"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_serves_grpc_health_and_stops_cleanly_on_sigterm() {
    use tonic_health::pb::health_client::HealthClient;
    let sb = Sandbox::new();
    sb.certs(&[("dp-1", 2)]);
    let dp = Host::create(&sb, "dp-1", "dp", 2, &[], None, "");
    let mut agent = dp.start_agent();
    rollgate::tls::install_crypto_provider();
    let c = sb.certs_dir();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&c.join("ca.pem"))))
        .identity(Identity::from_pem(
            read(&c.join("rollgate-coordinator.pem")),
            read(&c.join("rollgate-coordinator.key")),
        ))
        .domain_name("dp-1");
    let channel = Endpoint::from_shared(format!("https://{}", dp.agent_addr))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let resp = HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: "rollgate.v1.Agent".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resp.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let st = agent
        .wait_exit(std::time::Duration::from_secs(10))
        .expect("agent stopped on SIGTERM");
    assert_eq!(st.code(), Some(0), "{}", agent.log_text());
    assert!(agent.log_text().contains("SIGTERM"));
}
