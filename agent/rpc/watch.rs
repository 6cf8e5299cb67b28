//! The read-only face: Hello (host facts) and WatchHealth (a report each
//! interval, unchanged ones paced by a heartbeat).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rollgate::clock::now_ms;
use rollgate::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use super::wire;
use crate::config::ManagerKind;
use crate::health::Observation;
use crate::state::AgentState;

/// Shortest health interval a client may ask for.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The host's facts.
pub fn hello(s: &AgentState) -> pb::HelloResponse {
    let facts = s.facts.read();
    let cfg = &s.config;
    let current = s.installer.current();
    let plugin_root = current.as_ref().and_then(|v| s.installer.release_dir(v));
    pb::HelloResponse {
        agent_version: rollgate::VERSION.to_string(),
        host_name: cfg.agent.name.clone(),
        role: pb::Role::from(cfg.agent.role) as i32,
        installed_version: current
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        releases: s.installer.kept().iter().map(ToString::to_string).collect(),
        disk_free_bytes: s.installer.free_bytes().unwrap_or(0),
        memory_total_bytes: facts.memory_total_bytes,
        memory_available_bytes: facts.memory_available_bytes,
        cpu_count: facts.cpu_count,
        cpu_brand: facts.cpu_brand,
        load_average_1m: facts.load_average_1m,
        service_manager: match cfg.service.kind() {
            ManagerKind::Exec => pb::ServiceManager::Exec,
            ManagerKind::Systemd => pb::ServiceManager::Systemd,
            ManagerKind::Compose => pb::ServiceManager::Compose,
        } as i32,
        features: Some(pb::Features {
            agent_check_port: cfg
                .drain
                .agent_check_listen
                .map(|a| u32::from(a.port()))
                .unwrap_or(0),
            drain_hooks: cfg.drain.drain_command.is_some() || cfg.drain.undrain_command.is_some(),
            database_backup: cfg.backup.is_some(),
            declarative_export: cfg.backup.as_ref().is_some_and(|b| b.export.is_some()),
            rehearsal: cfg.rehearsal.is_some(),
        }),
        custom_plugin_dirs: s
            .installer
            .current_dir()
            .map(|dir| {
                cfg.gateway
                    .custom_plugin_dirs
                    .iter()
                    .map(|d| dir.join(d).display().to_string())
                    .collect()
            })
            .unwrap_or_default(),
        custom_plugin_files: plugin_root
            .map(|dir| crate::plugins::list(&dir, &cfg.gateway.custom_plugin_dirs))
            .unwrap_or_default()
            .into_iter()
            .map(|f| pb::PluginFile {
                path: f.path,
                sha256: f.sha256,
            })
            .collect(),
        install_method: cfg.install.method.name().to_string(),
        // Filled by the Hello call when asked `with_health`.
        health: None,
    }
}

/// Streams health reports to the caller until it goes away.
pub fn watch(
    state: Arc<AgentState>,
    peer: Option<SocketAddr>,
    r: pb::WatchHealthRequest,
) -> ReceiverStream<Result<pb::HealthReport, Status>> {
    let interval = match r.interval_ms {
        0 => Duration::from_secs(1),
        ms => Duration::from_millis(u64::from(ms)).max(MIN_INTERVAL),
    };
    let heartbeat = Duration::from_millis(u64::from(r.heartbeat_ms));
    let (tx, rx) = mpsc::channel(4);
    let span = tracing::info_span!("watch_health", peer = ?peer, interval_ms = interval.as_millis() as u64);
    tokio::spawn(
        async move {
            // One line per stream (a coordinator opens one or two per
            // rollout): the pace it asked for is in the span.
            tracing::info!("health watch started");
            let _watching = state.contact.watching();
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut seq, mut streak) = (0, 0u32);
            let mut last: Option<(ReportKey, std::time::Instant)> = None;
            let mut ended = state.ops.ended();
            let mut stopping = state.stopping.subscribe();
            loop {
                if *stopping.borrow_and_update() {
                    tracing::debug!("health watch ended: the agent is stopping");
                    return;
                }
                tokio::select! {
                    _ = stopping.changed() => continue,
                    _ = tick.tick() => {}
                    // An operation ended: report now (a fresh probe), and
                    // start the interval again from here.
                    Ok(()) = ended.changed() => tick.reset(),
                    _ = tx.closed() => break,
                }
                let mut report = look(&state, seq + 1).await;
                streak = if report.healthy {
                    0
                } else {
                    streak.saturating_add(1)
                };
                report.unhealthy_streak = streak;
                let key = ReportKey::of(&report);
                let quiet = !heartbeat.is_zero()
                    && last
                        .as_ref()
                        .is_some_and(|(k, at)| *k == key && at.elapsed() < heartbeat);
                if quiet {
                    continue;
                }
                seq += 1;
                last = Some((key, std::time::Instant::now()));
                // Load and memory only for a report that goes out: a look
                // left out as unchanged does not read them.
                with_facts(&state, &mut report);
                // A client that stops reading must not hold the agent's stop.
                tokio::select! {
                    sent = tx.send(Ok(report)) => if sent.is_err() { break },
                    _ = stopping.changed() => continue,
                }
                if seq == 1 {
                    // The first report goes at once; later looks start at a
                    // random phase of the interval, so agents whose watches
                    // opened together do not all probe at the same instant.
                    tick.reset_after(random_below(interval));
                }
            }
            tracing::debug!("health watch ended: the client went away");
        }
        .instrument(span),
    );
    ReceiverStream::new(rx)
}

/// A random duration in [0, d): std's per-process random hash keys are
/// random enough to spread probes.
fn random_below(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::Instant::now());
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1);
    Duration::from_millis(r % ms)
}

/// A look at the gateway now, as a watch's first report says it.
pub async fn first_report(s: &AgentState) -> pb::HealthReport {
    let mut r = look(s, 1).await;
    with_facts(s, &mut r);
    r.unhealthy_streak = u32::from(!r.healthy);
    r
}

/// A report of a look at the gateway, without the host's load and memory.
async fn look(s: &AgentState, sequence: u64) -> pb::HealthReport {
    // Read before the look: the look began after this operation ended.
    let last_ended = s.ops.last_ended().unwrap_or_default();
    let obs = s.prober.observe(&s.service, &s.installer).await;
    let mut r = health_report(sequence, &obs, s);
    r.last_operation_id = last_ended;
    r
}

/// Adds the host's load and memory (`/proc/loadavg`, `/proc/meminfo`).
fn with_facts(s: &AgentState, r: &mut pb::HealthReport) {
    let facts = s.facts.read();
    r.load_average_1m = facts.load_average_1m;
    r.memory_available_bytes = facts.memory_available_bytes;
}

fn health_report(sequence: u64, obs: &Observation, s: &AgentState) -> pb::HealthReport {
    let mut r = pb::HealthReport {
        sequence,
        observed_at_unix_ms: now_ms(),
        installed_version: s
            .installer
            .current()
            .map(|v| v.to_string())
            .unwrap_or_default(),
        drain_state: wire::drain(s.drain.get()) as i32,
        active_operation_id: s.ops.active().unwrap_or_default(),
        // Set by the watch that sends it.
        unhealthy_streak: 0,
        ..Default::default()
    };
    wire::observation(obs, &mut r);
    r
}

/// What makes two reports "the same" for a heartbeat-paced watch.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ReportKey {
    process: i32,
    healthy: bool,
    streak: u32,
    version: String,
    drain: i32,
    active: String,
    installed: String,
    last_ended: String,
}

impl ReportKey {
    fn of(r: &pb::HealthReport) -> Self {
        ReportKey {
            process: r.process,
            healthy: r.healthy,
            // 2 bad looks make an alarm; more of them change nothing.
            streak: r.unhealthy_streak.min(2),
            version: r.running_version.clone(),
            drain: r.drain_state,
            active: r.active_operation_id.clone(),
            installed: r.installed_version.clone(),
            last_ended: r.last_operation_id.clone(),
        }
    }
}
