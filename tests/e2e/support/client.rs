//! Talking to an agent directly over mTLS, as the coordinator does.

use rollgate::pb;
use rollgate::pb::agent_client::AgentClient;
use rollgate::pb::operation_event::Event;
use rollgate::pb::operation_result::Outcome;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{Host, Sandbox};

pub async fn connect(sb: &Sandbox, host: &Host) -> AgentClient<Channel> {
    connect_at(&sb.certs_dir(), &host.name, host.agent_addr).await
}

/// Connects as the coordinator (certificates in `certs`) to agent `name`.
pub async fn connect_at(
    certs: &std::path::Path,
    name: &str,
    addr: std::net::SocketAddr,
) -> AgentClient<Channel> {
    rollgate::tls::install_crypto_provider();
    let c = certs;
    let read = |p: &str| std::fs::read(c.join(p)).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read("ca.pem")))
        .identity(Identity::from_pem(
            read("rollgate-coordinator.pem"),
            read("rollgate-coordinator.key"),
        ))
        .domain_name(name.to_string());
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .expect("connect to the agent");
    AgentClient::new(channel)
}

/// Reads a step's stream to its end: progress messages and the result (None
/// when the stream broke first, e.g. the agent died).
pub async fn drive(
    resp: Result<tonic::Response<tonic::Streaming<pb::OperationEvent>>, tonic::Status>,
) -> (Vec<pb::Progress>, Option<pb::OperationResult>) {
    let mut progress = Vec::new();
    let Ok(resp) = resp else {
        return (progress, None);
    };
    let mut s = resp.into_inner();
    while let Ok(Some(ev)) = s.message().await {
        match ev.event {
            Some(Event::Progress(p)) => progress.push(p),
            Some(Event::Result(r)) => return (progress, Some(r)),
            None => {}
        }
    }
    (progress, None)
}

pub fn success(r: &pb::OperationResult) -> &pb::success::Detail {
    match &r.outcome {
        Some(Outcome::Success(s)) => s.detail.as_ref().expect("success detail"),
        other => panic!("expected success, got {other:?}"),
    }
}

pub fn failure(r: &pb::OperationResult) -> &pb::Failure {
    match &r.outcome {
        Some(Outcome::Failure(f)) => f,
        other => panic!("expected a failure, got {other:?}"),
    }
}

pub async fn install(
    c: &mut AgentClient<Channel>,
    op: &str,
    version: &str,
) -> Option<pb::OperationResult> {
    drive(
        c.install(pb::InstallRequest {
            operation_id: op.into(),
            version: version.into(),
            ..Default::default()
        })
        .await,
    )
    .await
    .1
}

/// Stages a release from its artifact file on the host.
pub async fn stage_file(
    c: &mut AgentClient<Channel>,
    op: &str,
    r: &rollgate::catalog::Release,
) -> Option<pb::OperationResult> {
    let path = super::gateway::artifact_path(r);
    stage_location(c, op, &r.version.to_string(), &path, &r.sha256, "").await
}

/// Stages the artifact at `path` on the host (its size read here), with the
/// catalog's `sha256` and, for images, `image_id`.
pub async fn stage_location(
    c: &mut AgentClient<Channel>,
    op: &str,
    version: &str,
    path: &std::path::Path,
    sha256: &str,
    image_id: &str,
) -> Option<pb::OperationResult> {
    let header = pb::StageHeader {
        operation_id: op.into(),
        version: version.into(),
        sha256: sha256.into(),
        size: std::fs::metadata(path).unwrap().len(),
        source: Some(pb::stage_header::Source::Location(
            path.display().to_string(),
        )),
        unpacked_size: 0,
        image_id: image_id.into(),
    };
    let req = pb::StageRequest {
        msg: Some(pb::stage_request::Msg::Header(header)),
    };
    drive(c.stage(futures::stream::iter([req])).await).await.1
}

/// A client to a demo fleet's host, as its coordinator.
pub async fn to_fleet_host(
    fleet: &rollgate_testbed::fleet::DemoFleet,
    host: &str,
) -> AgentClient<Channel> {
    let h = fleet.host(host).expect("a host of the fleet");
    connect_at(&fleet.dir.join("certs"), host, h.agent).await
}

/// Stages bytes streamed from here, as the coordinator does.
pub async fn stage_stream(
    c: &mut AgentClient<Channel>,
    op: &str,
    version: &str,
    sha256: &str,
    bytes: Vec<u8>,
) -> Option<pb::OperationResult> {
    let mut msgs = vec![pb::StageRequest {
        msg: Some(pb::stage_request::Msg::Header(pb::StageHeader {
            operation_id: op.into(),
            version: version.into(),
            sha256: sha256.into(),
            size: bytes.len() as u64,
            source: Some(pb::stage_header::Source::Coordinator(
                pb::CoordinatorSource {},
            )),
            unpacked_size: 0,
            image_id: String::new(),
        })),
    }];
    for chunk in bytes.chunks(64 * 1024) {
        msgs.push(pb::StageRequest {
            msg: Some(pb::stage_request::Msg::Chunk(
                bytes::Bytes::copy_from_slice(chunk),
            )),
        });
    }
    stage_messages(c, msgs).await
}

/// Sends `msgs` as one Stage call; the operation's result, if it sent one.
pub async fn stage_messages(
    c: &mut AgentClient<Channel>,
    msgs: Vec<pb::StageRequest>,
) -> Option<pb::OperationResult> {
    drive(c.stage(futures::stream::iter(msgs)).await).await.1
}

pub fn install_result(r: &pb::OperationResult) -> &pb::InstallResult {
    match success(r) {
        pb::success::Detail::Install(i) | pb::success::Detail::Rollback(i) => i,
        other => panic!("expected an install result, got {other:?}"),
    }
}

/// Calls `f` until it yields a result, as the coordinator does after an
/// agent restart (the agent answers UNAVAILABLE until its recovery has taken
/// up a cut-off step).
pub async fn until_result<F, Fut>(mut f: F) -> pb::OperationResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<pb::OperationResult>>,
{
    let end = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Some(r) = f().await {
            return r;
        }
        assert!(std::time::Instant::now() < end, "no result within 60 s");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
