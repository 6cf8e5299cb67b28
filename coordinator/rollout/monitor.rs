//! Health of every host during a rollout, from the agents' WatchHealth
//! streams. A host the rollout has already upgraded ("passed") that reports
//! unhealthy twice in a row, or any host whose agent has been silent longer
//! than `agent_silence`, raises an alarm that halts the rollout.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rollgate::lb::LbState;

use crate::fleet::{Health, HealthUpdate};

/// Consecutive unhealthy reports that make an alarm (one may be a blip).
const BAD_STREAK: u32 = 2;
/// How stale a clean scan may be before silences are looked for again. A
/// bad report forces a scan at once; only silence waits for this.
const SCAN_EVERY: Duration = Duration::from_millis(100);

/// Why a rollout must stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alarm {
    /// The agent stopped answering.
    Lost { host: String, why: String },
    /// An upgraded host turned unhealthy.
    Unhealthy { host: String, why: String },
}

impl Alarm {
    pub fn host(&self) -> &str {
        match self {
            Alarm::Lost { host, .. } | Alarm::Unhealthy { host, .. } => host,
        }
    }
}

impl std::fmt::Display for Alarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Alarm::Lost { host, why } => write!(f, "agent {host} stopped answering: {why}"),
            Alarm::Unhealthy { host, why } => write!(f, "{host} turned unhealthy: {why}"),
        }
    }
}

#[derive(Debug)]
struct Seen {
    last_report: Instant,
    /// When the last report came that showed the host healthy and in
    /// rotation, and the release it had installed then.
    serving: Option<(Instant, String)>,
    /// The operation the agent ran at its last report; empty when idle.
    active: String,
    /// The load balancer's state in the last report of an unbroken watch.
    /// The agent reports a change at once, so this is the host's state.
    lb: Option<LbState>,
    /// A report has come at all.
    reported: bool,
    bad_streak: u32,
    summary: String,
    broken: Option<String>,
    /// The host's upgrade (or rollback) passed: its health now counts.
    passed: bool,
    /// The host failed and is dealt with: no more alarms about it.
    ignored: bool,
    /// Since when the host is watched closely (`FleetApi::watch_closely`).
    close_since: Option<Instant>,
    /// The last report, whole (the closing report shows it).
    latest: Option<Health>,
}

/// The latest health of every host; pure bookkeeping, driven by updates.
#[derive(Debug)]
pub struct Monitor {
    /// Sorted by host, so alarms come in a stable order.
    seen: BTreeMap<String, Seen>,
    silence: Duration,
    /// When the last scan found nothing; a new scan is due after SCAN_EVERY.
    clean_since: Option<Instant>,
    /// A report or a broken stream since that scan may have raised an alarm.
    dirty: bool,
}

impl Monitor {
    pub fn new(hosts: &[String], silence: Duration) -> Self {
        let now = Instant::now();
        Monitor {
            seen: hosts
                .iter()
                .map(|h| {
                    (
                        h.clone(),
                        Seen {
                            last_report: now,
                            serving: None,
                            active: String::new(),
                            lb: None,
                            reported: false,
                            bad_streak: 0,
                            summary: "no report yet".into(),
                            broken: None,
                            passed: false,
                            ignored: false,
                            close_since: None,
                            latest: None,
                        },
                    )
                })
                .collect(),
            silence,
            clean_since: None,
            dirty: true,
        }
    }

    /// The hosts it follows, in order.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.seen.keys().map(String::as_str)
    }

    /// `host` is watched closely from now on; false if it already was.
    pub fn watch_closely(&mut self, host: &str) -> bool {
        match self.seen.get_mut(host) {
            Some(s) if s.close_since.is_none() => {
                s.close_since = Some(Instant::now());
                true
            }
            _ => false,
        }
    }

    /// Whether a report came after `host` began to be watched closely: its
    /// health is then at most one close interval old, not a heartbeat.
    pub fn reported_closely(&self, host: &str) -> bool {
        self.seen.get(host).is_none_or(|s| {
            s.close_since
                .is_some_and(|t| s.reported && s.last_report >= t)
        })
    }

    /// The host's upgrade passed: from now on its health counts.
    pub fn pass(&mut self, host: String) {
        if let Some(s) = self.seen.get_mut(&host) {
            s.passed = true;
        }
        self.dirty = true;
    }

    /// The host is about to be restarted on purpose (its next hop): its
    /// health does not count again until that step has passed.
    pub fn unpass(&mut self, host: &str) {
        if let Some(s) = self.seen.get_mut(host) {
            s.passed = false;
            s.bad_streak = 0;
        }
    }

    /// The host failed and is dealt with: no more alarms about it.
    pub fn ignore(&mut self, host: String) {
        if let Some(s) = self.seen.get_mut(&host) {
            s.ignored = true;
        }
        self.dirty = true;
    }

    pub fn update(&mut self, u: HealthUpdate) {
        match u {
            HealthUpdate::Report { host, health } => {
                if let Some(s) = self.seen.get_mut(&host) {
                    s.last_report = Instant::now();
                    s.reported = true;
                    s.lb = Some(health.lb);
                    s.active.clone_from(&health.active_operation);
                    if health.healthy && health.lb == LbState::InRotation {
                        s.serving = Some((s.last_report, health.installed_version.clone()));
                    }
                    s.broken = None;
                    self.dirty |= !health.healthy;
                    s.bad_streak = match (health.healthy, health.streak) {
                        (true, _) => 0,
                        // The agent counts its looks; reports in between may
                        // have been left out as unchanged.
                        (false, n) if n > 0 => n,
                        (false, _) => s.bad_streak + 1,
                    };
                    s.summary.clone_from(&health.summary);
                    s.latest = Some(health);
                }
            }
            HealthUpdate::Broken { host, why } => {
                if let Some(s) = self.seen.get_mut(&host) {
                    s.broken = Some(why);
                    s.lb = None;
                    self.dirty = true;
                }
            }
        }
    }

    /// The host's last report, when it can stand for a look taken now: its
    /// watch is live (the report received at most `fresh` ago and the
    /// stream not broken since), the agent ran no operation when it
    /// reported, and it looked after `last_op` ended (the last step the
    /// rollout ran there, whose changes a report from before would not
    /// show), which the agent says by naming it as its last ended one.
    pub fn settled_report(
        &self,
        host: &str,
        last_op: Option<&str>,
        fresh: Duration,
    ) -> Option<&Health> {
        let s = self.seen.get(host)?;
        let h = s.latest.as_ref()?;
        let live = s.broken.is_none() && h.received.elapsed() <= fresh;
        let after_step = last_op.is_none_or(|op| h.last_operation == op);
        (live && after_step && h.active_operation.is_empty()).then_some(h)
    }

    /// True when the host's last report was healthy.
    pub fn healthy(&self, host: &str) -> bool {
        self.seen
            .get(host)
            .is_some_and(|s| s.bad_streak == 0 && s.summary != "no report yet")
    }

    /// True once the host has reported at all.
    pub fn reported(&self, host: &str) -> bool {
        self.seen.get(host).is_some_and(|s| s.reported)
    }

    /// True when a report that came after `t` showed the host healthy, in
    /// rotation and on `version`, and none bad came since.
    pub fn serving_since(&self, host: &str, version: &str, t: Instant) -> bool {
        self.seen.get(host).is_some_and(|s| {
            s.bad_streak == 0
                && s.serving
                    .as_ref()
                    .is_some_and(|(at, v)| *at > t && v == version)
        })
    }

    /// The operation the host's agent runs that is not one of `rollout`'s
    /// own (those the step runner follows by id), if any.
    pub fn busy_elsewhere(&self, host: &str, rollout: &str) -> Option<String> {
        let s = self.seen.get(host)?;
        let own = s
            .active
            .strip_prefix(rollout)
            .is_some_and(|rest| rest.starts_with('/'));
        (!s.active.is_empty() && !own).then(|| s.active.clone())
    }

    /// The host's load-balancer state as its live watch last reported it;
    /// None before a report or while the watch is broken.
    pub fn lb(&self, host: &str) -> Option<LbState> {
        self.seen.get(host).and_then(|s| s.lb)
    }

    pub fn summary(&self, host: &str) -> String {
        self.seen
            .get(host)
            .map(|s| s.summary.clone())
            .unwrap_or_default()
    }

    /// The first alarm, if any. Called after every health report, so it
    /// looks at the hosts only when something may have changed: a bad report
    /// or a broken stream since the last scan, or the last clean scan is
    /// older than SCAN_EVERY (silences grow with time alone).
    pub fn alarm(&mut self) -> Option<Alarm> {
        let now = Instant::now();
        if !self.dirty
            && self
                .clean_since
                .is_some_and(|t| now.duration_since(t) < SCAN_EVERY)
        {
            return None;
        }
        self.dirty = false;
        let found = self.scan(now);
        self.clean_since = if found.is_none() { Some(now) } else { None };
        found
    }

    fn scan(&self, now: Instant) -> Option<Alarm> {
        for (h, s) in &self.seen {
            if s.ignored {
                continue;
            }
            let quiet = now.saturating_duration_since(s.last_report);
            if quiet > self.silence {
                let why = match &s.broken {
                    Some(b) => format!("no health report for {:.1}s ({b})", quiet.as_secs_f64()),
                    None => format!("no health report for {:.1}s", quiet.as_secs_f64()),
                };
                return Some(Alarm::Lost {
                    host: h.clone(),
                    why,
                });
            }
            if s.passed && s.bad_streak >= BAD_STREAK {
                return Some(Alarm::Unhealthy {
                    host: h.clone(),
                    why: s.summary.clone(),
                });
            }
        }
        None
    }

    /// Whether `host` has sent no report for longer than the silence
    /// deadline.
    pub fn silent(&self, host: &str) -> bool {
        self.seen
            .get(host)
            .is_some_and(|s| Instant::now().saturating_duration_since(s.last_report) > self.silence)
    }

    /// Forgets old unhealthy reports of `host` (e.g. before a hold starts).
    pub fn reset_streak(&mut self, host: &str) {
        if let Some(s) = self.seen.get_mut(host) {
            s.bad_streak = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(host: &str, healthy: bool) -> HealthUpdate {
        HealthUpdate::Report {
            host: host.into(),
            health: Health {
                healthy,
                streak: 0,
                summary: if healthy {
                    "ok".into()
                } else {
                    "ready answered 503".into()
                },
                lb: LbState::InRotation,
                installed_version: "3.4.0".into(),
                running_version: "3.4.0".into(),
                last_operation: String::new(),
                received: Instant::now(),
                active_operation: String::new(),
            },
        }
    }

    #[test]
    fn only_a_report_after_the_close_watch_began_counts_as_close() {
        let mut m = Monitor::new(&["dp-1".into()], Duration::from_secs(5));
        m.update(report("dp-1", true));
        assert!(!m.reported_closely("dp-1"), "not watched closely yet");
        assert!(m.watch_closely("dp-1"));
        assert!(!m.watch_closely("dp-1"), "once");
        assert!(
            !m.reported_closely("dp-1"),
            "the last report is from the heartbeat-paced watch"
        );
        m.update(report("dp-1", true));
        assert!(m.reported_closely("dp-1"));
        assert!(m.reported_closely("not-in-the-rollout"));
    }

    #[test]
    fn an_upgraded_host_unhealthy_twice_raises_an_alarm() {
        let mut m = Monitor::new(&["dp-1".into(), "dp-2".into()], Duration::from_secs(5));
        m.update(report("dp-1", false));
        m.update(report("dp-1", false));
        assert_eq!(m.alarm(), None, "dp-1 was not upgraded by us yet");
        m.pass("dp-1".into());
        assert!(matches!(m.alarm(), Some(Alarm::Unhealthy { host, .. }) if host == "dp-1"));
        m.update(report("dp-1", true));
        assert_eq!(m.alarm(), None);
        m.update(report("dp-1", false));
        assert_eq!(m.alarm(), None, "one bad report is a blip");
    }

    #[test]
    fn the_agents_own_streak_counts_when_it_sends_only_changes() {
        let mut m = Monitor::new(&["dp-1".into()], Duration::from_secs(5));
        m.pass("dp-1".into());
        let counted = |streak| HealthUpdate::Report {
            host: "dp-1".into(),
            health: Health {
                healthy: false,
                streak,
                summary: "process Stopped".into(),
                lb: LbState::InRotation,
                installed_version: "3.4.0".into(),
                running_version: "3.4.0".into(),
                last_operation: String::new(),
                received: Instant::now(),
                active_operation: String::new(),
            },
        };
        m.update(counted(1));
        assert_eq!(m.alarm(), None);
        // The agent looked twice; one report in between was left out.
        m.update(counted(2));
        assert!(matches!(m.alarm(), Some(Alarm::Unhealthy { .. })));
    }

    #[test]
    fn a_silent_agent_is_lost() {
        let mut m = Monitor::new(&["dp-1".into()], Duration::from_millis(0));
        std::thread::sleep(Duration::from_millis(5));
        m.update(HealthUpdate::Broken {
            host: "dp-1".into(),
            why: "connection refused".into(),
        });
        let a = m.alarm().unwrap();
        assert!(a.to_string().contains("connection refused"), "{a}");
        m.ignore("dp-1".into());
        assert_eq!(m.alarm(), None);
    }

    #[test]
    fn serving_needs_a_healthy_report_in_rotation_on_the_version_after_the_instant() {
        let look = |healthy, lb, v: &str| HealthUpdate::Report {
            host: "dp-1".into(),
            health: Health {
                healthy,
                streak: 0,
                summary: String::new(),
                lb,
                installed_version: v.into(),
                running_version: v.into(),
                last_operation: String::new(),
                received: Instant::now(),
                active_operation: String::new(),
            },
        };
        let mut m = Monitor::new(&["dp-1".into()], Duration::from_secs(5));
        m.update(look(true, LbState::InRotation, "3.4.0"));
        let t = Instant::now();
        assert!(
            !m.serving_since("dp-1", "3.4.0", t),
            "that report came before t"
        );
        m.update(look(true, LbState::InRotation, "3.3.0"));
        assert!(
            !m.serving_since("dp-1", "3.4.0", t),
            "still on the old release"
        );
        m.update(look(true, LbState::Drained, "3.4.0"));
        assert!(
            !m.serving_since("dp-1", "3.4.0", t),
            "not back in rotation yet"
        );
        m.update(look(true, LbState::InRotation, "3.4.0"));
        assert!(m.serving_since("dp-1", "3.4.0", t));
        m.update(look(false, LbState::InRotation, "3.4.0"));
        assert!(!m.serving_since("dp-1", "3.4.0", t), "a bad look since");
    }

    #[test]
    fn an_operation_of_another_rollout_keeps_a_host_busy() {
        let look = |active: &str| HealthUpdate::Report {
            host: "cp-1".into(),
            health: Health {
                healthy: true,
                streak: 0,
                summary: String::new(),
                lb: LbState::InRotation,
                installed_version: "3.4.0".into(),
                running_version: "3.4.0".into(),
                last_operation: String::new(),
                received: Instant::now(),
                active_operation: active.into(),
            },
        };
        let mut m = Monitor::new(&["cp-1".into()], Duration::from_secs(5));
        m.update(look("r-1/cp-1/install-3.4.0"));
        assert_eq!(
            m.busy_elsewhere("cp-1", "r-2"),
            Some("r-1/cp-1/install-3.4.0".into())
        );
        assert_eq!(
            m.busy_elsewhere("cp-1", "r-1"),
            None,
            "its own step is followed"
        );
        assert_eq!(
            m.busy_elsewhere("cp-1", "r-"),
            Some("r-1/cp-1/install-3.4.0".into()),
            "a prefix of the id is not the rollout"
        );
        m.update(look(""));
        assert_eq!(m.busy_elsewhere("cp-1", "r-2"), None);
    }

    #[test]
    fn a_report_stands_for_a_look_now_only_when_live_idle_and_after_the_last_step() {
        let fresh = Duration::from_secs(1);
        let op = "r-1/dp-1/undrain";
        let mut m = Monitor::new(&["dp-1".into()], Duration::from_secs(5));
        assert!(
            m.settled_report("dp-1", None, fresh).is_none(),
            "no report yet"
        );
        let with = |f: &dyn Fn(&mut Health)| {
            let mut u = report("dp-1", true);
            if let HealthUpdate::Report { health, .. } = &mut u {
                f(health);
            }
            u
        };
        m.update(report("dp-1", true));
        let r = m
            .settled_report("dp-1", None, fresh)
            .expect("a live, idle report");
        assert_eq!(r.running_version, "3.4.0");

        // The rollout's last step there: only a look after it ended counts.
        assert!(m.settled_report("dp-1", Some(op), fresh).is_none());
        m.update(with(&|h| {
            h.last_operation = "r-1/dp-1/install-3.4.0".into()
        }));
        assert!(m.settled_report("dp-1", Some(op), fresh).is_none());
        m.update(with(&|h| h.last_operation = op.into()));
        assert!(m.settled_report("dp-1", Some(op), fresh).is_some());

        // Received longer ago than `fresh`: the watch may be dead.
        m.update(with(&|h| {
            h.last_operation = op.into();
            h.received = Instant::now() - Duration::from_secs(2);
        }));
        assert!(m.settled_report("dp-1", Some(op), fresh).is_none());

        // The agent was running an operation when it reported.
        m.update(with(&|h| {
            h.last_operation = op.into();
            h.active_operation = "r-1/dp-1/drain".into();
        }));
        assert!(m.settled_report("dp-1", Some(op), fresh).is_none());

        // The stream broke after the last report.
        m.update(with(&|h| h.last_operation = op.into()));
        assert!(m.settled_report("dp-1", Some(op), fresh).is_some());
        m.update(HealthUpdate::Broken {
            host: "dp-1".into(),
            why: "reset".into(),
        });
        assert!(m.settled_report("dp-1", Some(op), fresh).is_none());
    }
}
