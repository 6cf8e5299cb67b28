//! rollgate-agent: runs on every CP and DP host, under systemd, and carries
//! out the coordinator's steps with commands named only in its own config.
#![forbid(unsafe_code)]

// Leaves: they know nothing above them.
mod command;
mod config;
mod conninfo;
mod docker;
mod drain_state;
mod facts;
mod failpoint;
mod fence;
mod health;
mod http;
mod install;
mod journal;
mod kind;
mod lease;
mod netstat;
mod plugins;
mod procfs;
mod service;
// The operation layer, the agent's state, the steps.
mod op;
mod state;
mod steps;
// The edges: the gRPC service and crash recovery.
mod recover;
mod rpc;

use std::process::ExitCode;
use std::sync::Arc;

use rollgate::cli::AgentArgs;
use rollgate::exit;
use rollgate::pb::agent_server::AgentServer;
use rollgate::telemetry;
use rollgate::tls::AllowList;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tracing::Instrument;

fn main() -> ExitCode {
    let args: AgentArgs = match rollgate::cli::parse() {
        Ok(a) => a,
        Err(code) => return code,
    };
    telemetry::init(args.log_format, "info");
    rollgate::tls::install_crypto_provider();

    // Everything is checked before a port is bound or a file is written.
    let loaded = match config::load(&args.config) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("rollgate-agent: bad configuration: {e}");
            return ExitCode::from(exit::USAGE);
        }
    };
    if args.check {
        println!("{}: ok", loaded.path.display());
        return ExitCode::from(exit::OK);
    }
    // One thread is plenty for an agent that mostly waits, and keeps it small.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rollgate-agent: cannot start the runtime: {e}");
            return ExitCode::from(exit::FAILED);
        }
    };
    match rt.block_on(run(loaded)) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "agent stopped with an error");
            eprintln!("rollgate-agent: {e:#}");
            let corrupt = e
                .downcast_ref::<state::OpenError>()
                .is_some_and(state::OpenError::is_corrupt);
            ExitCode::from(if corrupt { exit::DATA } else { exit::FAILED })
        }
    }
}

async fn run(loaded: config::Loaded) -> anyhow::Result<()> {
    use anyhow::Context;

    let config::Loaded { config, tls, path } = loaded;
    let listen = config.agent.listen;
    let allow = AllowList::new(config.tls.allowed_clients.clone());
    let name = config.agent.name.clone();
    let role = config.agent.role;
    let method = config.install.method.name();
    std::fs::create_dir_all(&config.agent.state_dir).with_context(|| {
        format!(
            "cannot create state dir {}",
            config.agent.state_dir.display()
        )
    })?;
    let agent_check = config.drain.agent_check_listen;
    let state = Arc::new(state::AgentState::open(config)?);
    if let Some(addr) = agent_check {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for agent-check on {addr}"))?;
        state.drain.clone().serve(l, addr);
    }

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AgentServer<rpc::AgentService>>()
        .await;

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    let bound = listener.local_addr()?;
    let agent = AgentServer::new(rpc::AgentService::new(state.clone()));
    let check = allow.clone();
    let contact = state.contact.clone();
    let fence = state.fence.clone();
    let keepalive = (
        state.config.agent.keepalive,
        state.config.agent.keepalive_timeout,
    );
    let router = Server::builder()
        // A coordinator that vanishes without closing (a partition, not a
        // kill) is noticed, so a stream it fed does not hold a step, or the
        // drain lease, forever.
        .http2_keepalive_interval(Some(keepalive.0))
        .http2_keepalive_timeout(Some(keepalive.1))
        .tls_config(tls.server_config())
        .context("bad TLS material")?
        .add_service(InterceptedService::new(health_service, move |r| {
            allow.check(r)
        }))
        .add_service(InterceptedService::new(agent, move |r| {
            let r = check.check(r)?;
            // A superseded coordinator is refused before any handler runs.
            let token = rollgate::fencing::from_metadata(r.metadata())
                .map_err(tonic::Status::invalid_argument)?;
            fence.admit(token)?;
            contact.touch();
            Ok(r)
        }));

    tracing::info!(host = %name, %role, addr = %bound, install = method, config = %path.display(), version = rollgate::VERSION, fencing_token = state.fence.highest(), "agent serving");
    // Finish or undo what a crash cut off, then make sure the gateway runs;
    // in the background, so a coordinator can follow the recovery.
    tokio::spawn(recover::run(state.clone()).instrument(tracing::info_span!("recover")));
    tokio::spawn(lease::run(state.clone()).instrument(tracing::info_span!("drain_lease")));
    // systemd (Type=notify) starts dependants only once we really serve.
    if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
        tracing::debug!(error = %e, "sd_notify READY not sent (not under systemd?)");
    }
    router
        .serve_with_incoming_shutdown(
            // TCP_NODELAY on every accepted connection. tonic sets it only on
            // listeners it binds itself, not on an incoming stream handed to it;
            // without it Nagle holds a step's last frames (result, trailers)
            // until the coordinator's delayed ACK, ~40 ms per quick step.
            TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let sig = rollgate::shutdown::signalled().await;
                tracing::info!(signal = sig, "stopping");
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
                state.stop().await;
            },
        )
        .await
        .context("gRPC server failed")?;
    tracing::info!("agent stopped");
    Ok(())
}
